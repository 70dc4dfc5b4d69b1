"""Integrations with other libraries, each behind its own optional extra.

``tiered_cache.contrib.prometheus`` (extra ``prometheus``), ``tiered_cache.contrib.otel``
(extra ``otel``), ``tiered_cache.contrib.django`` (extra ``django``) and
``tiered_cache.contrib.fastapi`` (extra ``fastapi``) import their library; nothing else in
``tiered_cache`` imports them.
"""
