"""A bus listener stuck for good, given up on by the close: what is left, and what is not.

Python cannot stop a thread from outside. A listener stuck where the close's wake does not
reach (a listener's callback that never returns) keeps its thread after the close gave up on
it; the thread is a daemon, so the interpreter's exit does not wait for it, nor does the end of
``asyncio.run`` (the asyncio bus listens from the same kind of thread, and ``aclose`` runs the
threaded close off the loop). Guards, in a child interpreter each: the process ends, its close
having returned, the stuck thread still alive at its exit.
"""

from __future__ import annotations

import textwrap

import pytest

from tiered_cache.testing.interpreters import run_python
from tiered_cache.testing.servers import RedisServer

#: The child's own guard: it must end well before this (a hang, never a measure).
GUARD = 60.0

CHILD = """
import asyncio, threading
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from tiered_cache.bus import Invalidation
from tiered_cache_redis import AsyncRedisBus
from tiered_cache_redis.bus import RedisBus
from tiered_cache_redis.listening import Health

URL = {url!r}
inside = threading.Event()


class Stuck:
    # A callback that never returns: the listener's thread is held here for good.
    def on_message(self, message):
        inside.set()
        threading.Event().wait()

    def on_disconnect(self):
        print("told down", flush=True)

    def on_reconnect(self):
        pass

    def on_error(self, error):
        pass

    def on_close_abandoned(self):
        print("told given up", flush=True)


def client():
    return redis.Redis.from_url(URL, retry=Retry(NoBackoff(), 0))


def stuck_on(bus, wait_subscribed):
    # Subscribed, then held in the callback by a message.
    bus.subscribe(Stuck())
    assert wait_subscribed()
    publisher = client()
    publisher.publish("stuck-at-exit", Invalidation("someone", 1, ("a",)).encode())
    publisher.close()
    assert inside.wait(30)


def listeners():
    return [t for t in threading.enumerate() if t.name.startswith("tiered-cache-bus")]


if {asyncio!r}:
    import redis.asyncio as aioredis

    async def main():
        bus = AsyncRedisBus(
            lambda: aioredis.Redis.from_url(URL),
            "stuck-at-exit",
            listen_with=client,
            health=Health(interval=1.0, timeout=1.0, poll=0.05),
        )
        await asyncio.to_thread(stuck_on, bus, lambda: bus._listening.wait_subscribed(30))
        await bus.aclose()
        print("closed", flush=True)

    asyncio.run(main())
    print("loop ended", flush=True)
else:
    bus = RedisBus(client, "stuck-at-exit", health=Health(interval=1.0, timeout=1.0, poll=0.05))
    stuck_on(bus, lambda: bus.wait_subscribed(30))
    bus.close()
    print("closed", flush=True)
print("alive at exit", [t.daemon for t in listeners()], flush=True)
"""


@pytest.mark.parametrize("face", ["threaded", "asyncio"])
def test_a_listener_stuck_for_good_is_left_and_the_process_still_ends(
    redis_server: RedisServer, face: str
) -> None:
    """The close gives up (the chains told down, then given up on), returns, and the process
    ends with the stuck listener's daemon thread still alive. A guard: a listener thread that
    is not a daemon, or a loop's end that waits for it, would hang the child."""
    script = textwrap.dedent(CHILD).format(url=redis_server.url, asyncio=face == "asyncio")
    ended = run_python(script, timeout=GUARD, what="the process, its stuck listener holding it")
    assert ended.returncode == 0, ended.stderr
    said = ["told down", "told given up", "closed"]
    if face == "asyncio":
        said.append("loop ended")
    assert ended.stdout.splitlines() == [*said, "alive at exit [True]"]
