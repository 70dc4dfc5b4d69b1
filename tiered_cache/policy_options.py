"""The hot-key policy's options built in code, checked by the rules of a config file's memory
tier (:class:`~tiered_cache.settings.MemoryTierSettings`): the one home of those rules.

:class:`~tiered_cache.policy.TinyLfuPolicy` is compiled with the core, which is imported
before anything else of the package and without pydantic; so it calls :func:`check_options`
as it is built (never on a read), and the settings are imported then. Built in code, it took
a ``hot_ttl`` of 0 or below (a hot key kept for no time at all) and a ``sketch_width`` of 8,
which a config file's memory tier refuses.
"""

from __future__ import annotations

from .errors import ConfigError

#: The policy's arguments that a memory tier's settings field gives, by that field's name
#: (the policy says ``max_weight`` for the tier's ``max_bytes``, ``adaptive`` for its
#: ``adaptive_window``).
FIELDS = {
    "max_entries": "max_entries",
    "max_weight": "max_bytes",
    "window_fraction": "window_fraction",
    "adaptive": "adaptive_window",
    "sample_factor": "sample_factor",
    "sketch_width": "sketch_width",
    "doorkeeper": "doorkeeper",
    "top_k": "top_k",
    "hot_half_life": "hot_half_life",
    "hot_ttl": "hot_ttl",
}


def check_options(**options: object) -> None:
    """Raise :class:`~tiered_cache.ConfigError` naming the first argument (``hot_ttl: a ttl
    must be more than 0 ...``) whose value the settings field of the memory tier refuses,
    never echoing it. A value is checked, not converted: the policy takes numbers, so text
    or a timedelta that the field would read as seconds is refused too."""
    # Here, not at the top: the policy imports this module with the compiled core, before
    # the package's first import of pydantic.
    from .settings import MemoryTierSettings, checked

    for argument, value in options.items():
        if checked(MemoryTierSettings, FIELDS[argument], value, argument) != value:
            raise ConfigError(f"{argument}: expected a number, as the policy takes it")
