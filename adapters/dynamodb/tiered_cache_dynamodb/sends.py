"""Whether a boto3 client may hold open connections: what a forked child's sync source must
know of a client it cannot make anew (a given one), before it uses it
(:meth:`~tiered_cache_dynamodb.DynamoDBSource.after_fork_in_child`)."""

from __future__ import annotations

import itertools
import weakref
from typing import Any

from .pools import LayoutChanged, holds_pools

#: Names the hooks the watches register: an ``id()`` may be reused once its object is gone,
#: and botocore ignores a second registration under a unique id it already holds.
_numbers = itertools.count()


def opened_a_connection(client: Any) -> bool:
    """Whether ``client`` has opened a connection already: a request sent before anything
    watched it (a table check at start-up, a warm-up read) leaves it kept alive in the pool.
    botocore does not show it (:func:`.pools.holds_pools` reads its private parts); taken as
    yes where they are laid out otherwise (another botocore): a child then refuses, and never
    shares a socket."""
    try:
        return holds_pools(client)
    except LayoutChanged:
        return True


class SendWatch:
    """Whether a client has sent a request: at the start, by its pool
    (:func:`opened_a_connection`); then, by botocore's ``before-send`` event. Its handler holds
    the watch weakly, and :meth:`stop` removes it: a client's hooks hold what they call, and a
    client shared by sources made and closed in turn (a chain per tenant, per test) kept every
    source alive."""

    def __init__(self, client: Any) -> None:
        self.sent = opened_a_connection(client)
        self._events = client.meta.events
        self._unique_id = f"tiered-cache-send-watch-{next(_numbers)}"
        watch = weakref.ref(self)

        def note_a_send(**_: Any) -> None:
            watching = watch()
            if watching is not None:
                watching.sent = True

        self._events.register("before-send.dynamodb", note_a_send, unique_id=self._unique_id)

    def stop(self) -> None:
        """Stop watching (the source is closed). Idempotent."""
        self._events.unregister("before-send.dynamodb", unique_id=self._unique_id)
