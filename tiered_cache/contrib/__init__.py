"""Integrations with other libraries, each behind its own optional extra.

``tiered_cache.contrib.prometheus`` (extra ``prometheus``), ``tiered_cache.contrib.otel``
(extra ``otel``) and ``tiered_cache.contrib.django`` (extra ``django``) import their library;
nothing else in ``tiered_cache`` imports them.
"""
