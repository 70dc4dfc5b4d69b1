"""The compiled core (``tools/build_core.py``, mypyc) decides exactly as its pure-Python source.

The same operations run on a memory tier built from the modules Python imports (compiled when
the build ran) and on one built from the ``.py`` sources, loaded apart under another package
name; every answer and, at the end, the whole state of the policy must be identical.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import pickle
import subprocess
import sys
import tracemalloc
import types
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tiered_cache
from tiered_cache import (
    accessor,
    entry,
    fence,
    framing,
    hit,
    invalidation_log,
    loader,
    memory_core,
    policy,
    sketch,
    slot,
    topk,
)
from tiered_cache.clocks import ManualClock
from tiered_cache.codecs import JsonCodec
from tiered_cache.compiled import compiled_core

PURE = "_tiered_cache_pure"
SOURCES = Path(tiered_cache.__file__).parent
IS_COMPILED = compiled_core() and all(
    not str(module.__file__).endswith(".py")
    for module in (
        *(entry, policy, sketch, slot, topk, hit, memory_core, invalidation_log),
        *(accessor, fence, loader, framing),
    )
)

needs_build = pytest.mark.skipif(
    not IS_COMPILED,
    reason="the compiled core is not in use (not built: `make install` found no C compiler "
    "or no mypyc; or stale, or TIERED_CORE_PURE=1): there is nothing to compare the "
    "pure-Python modules with",
)


class _SourcesOnly(importlib.abc.MetaPathFinder):
    """Finds ``_tiered_cache_pure.<name>`` as tiered_cache's ``<name>.py``, never a build."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(PURE + "."):
            return None
        source = SOURCES / (fullname.split(".", 1)[1].replace(".", "/") + ".py")
        return importlib.util.spec_from_file_location(fullname, source)


def pure(name: str) -> Any:
    """tiered_cache's module ``name`` from its source (its relative imports too)."""
    if PURE not in sys.modules:
        package = types.ModuleType(PURE)
        package.__path__ = []  # submodules come from _SourcesOnly alone
        sys.modules[PURE] = package
        sys.meta_path.insert(0, _SourcesOnly())
        # The reference is what TIERED_CORE_PURE=1 runs: its copy of compiled.py says so, and
        # its sketch counts with sketch.Counters, not the C extension (_sketch.c).
        saved = os.environ.get("TIERED_CORE_PURE")
        os.environ["TIERED_CORE_PURE"] = "1"
        try:
            assert not importlib.import_module(f"{PURE}.compiled").compiled_core()
        finally:
            if saved is None:
                del os.environ["TIERED_CORE_PURE"]
            else:
                os.environ["TIERED_CORE_PURE"] = saved
    return importlib.import_module(f"{PURE}.{name}")


class World:
    """A memory tier with the hot-key policy, from one set of modules."""

    def __init__(self, memory: Any, policy_module: Any, tier: Any, max_entries: int) -> None:
        self.clock = ManualClock(0.0)
        self.entry = tier.Entry
        self.policy = policy_module.TinyLfuPolicy(max_entries, clock=self.clock, top_k=5)
        self.tier = memory.MemoryTier(policy=self.policy, clock=self.clock, ttl=30.0)
        #: The chain's plain-hit reader over this tier (tiered_cache/hit.py, from ``memory``'s
        #: own import of it); XFetch margin 2: the last second before a soft expiry is not plain.
        self.hits = memory.HitCount()
        self.reader = self.tier.hit_reader(self.clock, 2.0, self.hits)

    def apply(self, operation: tuple[Any, ...]) -> Any:
        name, argument = operation
        tier, clock = self.tier, self.clock
        if name == "get":
            found = tier.get(argument)
            return found.value if found else None
        if name == "hit":
            return repr(self.reader(argument))  # a value, or NOT_FRESH
        if name == "set":
            key, lifetime = argument
            now = clock()
            # Stale after half its life, half a second to load: a plain hit, then the XFetch
            # window, then stale, then expired.
            tier.set(key, self.entry(key, now, now + lifetime / 2, now + lifetime, 0.5))
            return None
        if name == "peek":  # the chain's second look: no read recorded
            found = tier.peek(argument)
            return found.value if found else None
        if name == "replace":  # a write into a chain of this tier alone (the drop and the fill)
            now = clock()
            tier.replace(argument, self.entry(argument, now, now + 5.0, now + 10.0, 0.5))
            return None
        if name == "get_many":
            return {key: entry.value for key, entry in tier.get_many(argument).items()}
        if name == "set_many":
            now = clock()
            tier.set_many({key: self.entry(key, now, hard_expiry=now + 60.0) for key in argument})
            return None
        if name == "delete":
            tier.delete(argument)
            return None
        if name == "delete_prefix":
            tier.delete_prefix(argument)
            return None
        clock.advance(argument)
        return None

    def state(self, keys: list[str]) -> Any:
        policy = self.policy
        return (
            [policy.segment_of(key) for key in keys],
            [policy.sketch.frequency(key) for key in keys],
            policy.evictions,
            policy.window_max,
            len(policy),
            policy.weight,
            policy.hot_keys(5),
            sorted(key for key in keys if key in self.tier),
            self.hits.value,
        )


KEYS = [f"k{index}" for index in range(60)]
key = st.sampled_from(KEYS)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("get"), key),
        st.tuples(st.just("hit"), key),
        st.tuples(st.just("hit"), key),
        st.tuples(st.just("set"), st.tuples(key, st.sampled_from([0.5, 5.0, 100.0]))),
        st.tuples(st.just("peek"), key),
        st.tuples(st.just("replace"), key),
        st.tuples(st.just("get_many"), st.lists(key, max_size=6)),
        st.tuples(st.just("set_many"), st.lists(key, max_size=6, unique=True)),
        st.tuples(st.just("delete"), key),
        st.tuples(st.just("delete_prefix"), st.sampled_from(["k1", "k5"])),
        st.tuples(st.just("advance"), st.sampled_from([0.01, 1.0, 2.0, 40.0])),
    ),
    min_size=100,
    max_size=400,
)


@needs_build
@settings(max_examples=40, deadline=None)
@given(max_entries=st.sampled_from([1, 4, 12, 100]), steps=operations)
def test_compiled_and_pure_core_answer_and_decide_alike(
    max_entries: int, steps: list[tuple[Any, ...]]
) -> None:
    import tiered_cache.memory
    import tiered_cache.tier

    compiled = World(tiered_cache.memory, policy, tiered_cache.tier, max_entries)
    reference = World(pure("memory"), pure("policy"), pure("tier"), max_entries)
    for step in steps:
        assert compiled.apply(step) == reference.apply(step), step
    assert compiled.state(KEYS) == reference.state(KEYS)


@needs_build
def test_compiled_and_pure_core_decide_alike_in_and_out_of_lru_mode() -> None:
    # The LRU guard's mode and its miniature W-TinyLFU (policy._guard) only act on caches of
    # hundreds of entries after thousands of reads: a recency trace takes the window to the
    # whole cache, a Zipf law after it takes it back.
    import tiered_cache.memory
    import tiered_cache.tier
    from tiered_cache.workloads import recency_biased, zipf_keys

    compiled = World(tiered_cache.memory, policy, tiered_cache.tier, 500)
    reference = World(pure("memory"), pure("policy"), pure("tier"), 500)
    keys = [
        *recency_biased(40_000, reuse=0.7, mean_distance=1_000.0, seed=5),
        *zipf_keys(10_000, 1.0, 20_000, seed=6),
    ]
    windows: list[list[int]] = [[], []]
    for index, key in enumerate(keys):
        for world, seen in zip((compiled, reference), windows, strict=True):
            world.clock.advance(0.001)
            if world.apply(("get", key)) is None:
                world.apply(("set", (key, 100.0)))
            if index % 1_000 == 0:
                seen.append(world.policy.window_max)
    assert windows[0] == windows[1]
    assert max(windows[0]) == 500  # it did enter LRU mode
    assert windows[0][-1] < 500  # and left it
    assert compiled.state(keys[-60:]) == reference.state(keys[-60:])


times = st.floats(allow_nan=False, width=64)
values = st.one_of(st.none(), st.integers(), st.text(max_size=5), st.tuples(st.integers()))
fields = st.tuples(
    values, times, times, times, times, st.integers(min_value=-(2**70), max_value=2**70)
)


def entry_answers(module: Any, slot_module: Any, given: tuple[Any, ...], other: Any) -> Any:
    """What an entry of ``module`` (and the memory tier's ``Slot`` made from it) answers."""
    made = module.Entry(*given)
    second = module.Entry(*other)
    kept = slot_module.Slot(made, given[2], 3)

    def refused(target: Any, name: str, value: object = 0.0) -> str:
        try:
            setattr(target, name, value)
        except AttributeError:
            return "refused"
        return "assigned"

    now = given[1]
    copies = [pickle.loads(pickle.dumps(item)) for item in (made, kept)]
    return (
        repr(made),
        repr(kept),
        made == second,
        made == kept,
        kept == made,
        hash(made) == hash(kept),
        (made.is_fresh(now), made.is_expired(now), kept.is_fresh(now), kept.is_expired(now)),
        repr(made.replace(soft_expiry=other[2])),
        repr(kept.replace(hard_expiry=other[3])),
        repr(kept.with_value(other[0])),
        [(type(copy).__name__, repr(copy), copy == made) for copy in copies],
        [refused(target, name) for target in (made, kept) for name in module.ENTRY_FIELDS],
        [refused(kept, name, value) for name, value in (("expire_at", 1.0), ("weight", 2))],
        refused(made, "other"),
        (kept.expire_at, kept.weight, kept.segment, kept.entry is kept),
    )


@needs_build
@settings(max_examples=200, deadline=None)
@given(given=fields, other=fields)
def test_compiled_and_pure_entries_answer_alike(
    given: tuple[Any, ...], other: tuple[Any, ...]
) -> None:
    # Times are floats: compiled, an int given for one is stored as a float.
    compiled = entry_answers(entry, slot, given, other)
    assert compiled == entry_answers(pure("entry"), pure("slot"), given, other)


#: How each value of a batch read is stored (``None``: absent), in the framing's terms.
STORED_KINDS = ("live", "expired", "short", "magic", "format", "codec", "payload", "absent")


def stored_value(kind: str, index: int) -> bytes | None:
    """A value of ``kind`` as a shared tier would read it at time 100 (codec id 1: JSON)."""
    if kind == "absent":
        return None
    magic, form, codec_id = (
        b"xc" if kind == "magic" else framing.MAGIC,
        2 if kind == "format" else framing.FORMAT,
        2 if kind == "codec" else 1,
    )
    expire_at = 50.0 if kind == "expired" else 200.0 + index
    header = framing.HEADER.pack(magic, form, codec_id, 1.0, 2.0, 3.0, 0.5, expire_at, index)
    payload = b"{bad" if kind == "payload" else json.dumps({"n": index}).encode()
    data = header + payload
    return data[: index % framing.HEADER.size] if kind == "short" else data


def framing_answers(module: Any, kinds: list[str]) -> Any:
    """What ``module``'s batch read gives and refuses for values of ``kinds``, at time 100."""
    keys = [f"k{index}" for index in range(len(kinds))]
    values = [stored_value(kind, index) for index, kind in enumerate(kinds)]
    refused: list[tuple[str, str]] = []
    found = module.read_many(
        keys,
        values,
        codec_id=1,
        now=100.0,
        decode_batch=JsonCodec().decode_many,
        refuse=lambda key, why: refused.append((key, why)),
    )
    return (
        [
            (key, type(got).__name__, [getattr(got, name) for name in entry.ENTRY_FIELDS])
            for key, got in found.items()
        ],
        refused,
    )


@needs_build
@settings(max_examples=200, deadline=None)
@given(kinds=st.lists(st.sampled_from(STORED_KINDS), max_size=12))
def test_compiled_and_pure_batch_reads_of_stored_entries_answer_alike(kinds: list[str]) -> None:
    # The Redis tier's MGET decode (tiered_cache_redis.stored): the same entries, and the same
    # values refused in the same order with the same words, compiled and from the source.
    compiled = framing_answers(framing, kinds)
    assert compiled == framing_answers(pure("framing"), kinds)
    assert len(compiled[0]) == kinds.count("live")
    assert len(compiled[1]) == len(kinds) - kinds.count("live") - kinds.count(
        "expired"
    ) - kinds.count("absent")


def test_a_pure_slot_is_built_without_its_python_setattr() -> None:
    # The pure-Python Slot guards the entry's fields with a Python __setattr__; its
    # constructor wrote its six bookkeeping fields through it, one Python call each (with the
    # entry built through object.__setattr__, a miss on a full 100k cache went 16.5 -> 22.6 us
    # pure). Now every field goes through its slot's setter; the guard still refuses.
    pure_entry, pure_slot = pure("entry"), pure("slot")
    guard = pure_slot.Slot.__setattr__
    calls: list[str] = []

    def counted(target: Any, name: str, value: object) -> None:
        calls.append(name)
        guard(target, name, value)

    made = pure_entry.Entry([1], 2.0, 3.0, 4.0, 0.5, 7)
    type.__setattr__(pure_slot.Slot, "__setattr__", counted)
    try:
        kept = pure_slot.Slot(made, 3.5, 2)
        assert calls == []
        kept.weight = 5
        assert calls == ["weight"]
    finally:
        type.__setattr__(pure_slot.Slot, "__setattr__", guard)
    assert kept == made
    assert (kept.expire_at, kept.weight, kept.key, kept.prev, kept.next) == (3.5, 5, "", None, None)
    assert kept.segment == pure_slot.DETACHED
    for target in (made, kept):
        with pytest.raises(AttributeError):
            target.value = 2
    assert pure_entry.Entry(1, 2.0) == pure_entry.Entry(1, 2.0, pure_entry.NEVER, pure_entry.NEVER)


@needs_build
def test_a_kept_entry_is_one_object_with_its_times_inside() -> None:
    # Compiled, the memory tier keeps an entry as one Slot with its four times as C doubles:
    # 136 bytes, where an Entry (80), its float objects (24 each) and a Slot pointing at the
    # entry (96) were 272. Keys, values and times are made first (the caller's, not the
    # tier's); the entry a fill builds is freed once the slot holds a copy of it.
    count = 1000
    starts = [float(index) for index in range(count)]
    kept: list[slot.Slot | None] = [None] * count
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index, start in enumerate(starts):
            made = entry.Entry(start, start, start + 1.0, start + 2.0, start / 1e3)
            kept[index] = slot.Slot(made, start + 1.5)
        del made
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held / count < 137


@needs_build
def test_the_reference_is_the_source_and_the_core_is_compiled() -> None:
    assert str(pure("policy").__file__).endswith("policy.py")
    assert str(pure("sketch").__file__).endswith("sketch.py")
    assert pure("policy").TinyLfuPolicy is not policy.TinyLfuPolicy
    assert IS_COMPILED
    # The sketch's counters: C (_sketch.c) in the compiled core, sketch.Counters in the reference.
    assert pure("sketch").COUNTERS is pure("sketch").Counters
    assert sketch.COUNTERS is not sketch.Counters


def test_a_stale_or_missing_build_is_not_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tiered_cache import compiled

    manifest = tmp_path / "compiled.json"
    monkeypatch.setattr(compiled, "MANIFEST", manifest)
    assert not compiled._built_and_current()  # no manifest: never built
    names = (*compiled.MODULES, *compiled.DEPENDENCIES)
    current = {name: compiled.source_hash(name) for name in names}
    extensions = {name: compiled.source_hash(name, ".c") for name in compiled.EXTENSIONS}
    manifest.write_text(
        json.dumps({"modules": {**current, "policy": "0" * 64}, "extensions": extensions})
    )
    assert not compiled._built_and_current()  # policy.py changed since the build
    manifest.write_text(
        json.dumps({"modules": current, "extensions": {**extensions, "_hitcall": "0" * 64}})
    )
    assert not compiled._built_and_current()  # _hitcall.c changed since the build
    manifest.write_text(json.dumps({"modules": current}))
    assert not compiled._built_and_current()  # built before there were C extensions
    manifest.write_text(json.dumps({"modules": current, "extensions": extensions}))
    monkeypatch.setenv("TIERED_CORE_PURE", "1")
    assert not compiled._built_and_current()  # turned off
    monkeypatch.delenv("TIERED_CORE_PURE")
    # Current sources: used exactly when the compiled modules are there (whether or not this
    # run uses them: under TIERED_CORE_PURE=1 they may be built and not imported).
    built = all(
        any(
            (SOURCES / f"{name}{suffix}").exists()
            for suffix in importlib.machinery.EXTENSION_SUFFIXES
        )
        for name in (*compiled.MODULES, *compiled.EXTENSIONS)
    )
    assert compiled._built_and_current() == built


def test_turned_off_the_sources_are_imported() -> None:
    code = (
        "import tiered_cache.policy as p, tiered_cache.compiled as c; "
        "print(c.compiled_core(), p.__file__.endswith('policy.py'))"
    )
    environment = {**os.environ, "TIERED_CORE_PURE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], env=environment, capture_output=True, text=True, check=True
    )
    assert result.stdout.split() == ["False", "True"]


log_keys = st.sampled_from(["a", "b", "ab", "c"])
log_operations = st.lists(
    st.one_of(
        st.tuples(st.just("mark"), st.none()),
        st.tuples(st.just("keys"), st.lists(log_keys, max_size=3)),
        st.tuples(st.just("key"), log_keys),
        st.tuples(st.just("prefixes"), st.lists(st.sampled_from(["a", "x"]), max_size=2)),
        st.tuples(st.just("everything"), st.booleans()),
        st.tuples(st.just("gap"), st.booleans()),
        st.tuples(st.just("pending"), st.lists(log_keys, max_size=3)),
        st.tuples(st.just("done"), st.integers(min_value=0, max_value=8)),
        st.tuples(st.just("overtaken"), st.tuples(st.integers(0, 8), st.lists(log_keys))),
        st.tuples(st.just("own"), st.tuples(st.integers(0, 8), st.lists(log_keys))),
        st.tuples(st.just("shared"), st.tuples(st.integers(0, 8), st.lists(log_keys))),
    ),
    max_size=60,
)


def log_answers(module: Any, size: int, steps: list[tuple[str, Any]]) -> list[Any]:
    """What an invalidation log of ``module`` answers to ``steps`` (marks and numbers are
    looked back at by position: the n-th mark or number taken so far)."""
    log = module.InvalidationLog(size)
    marks: list[int] = [log.mark()]
    numbers: list[int] = [0]
    answers: list[Any] = []
    for name, argument in steps:
        if name == "mark":
            marks.append(log.mark())
            answers.append(marks[-1])
        elif name == "keys":
            numbers.append(log.record_keys(argument))
        elif name == "key":
            numbers.append(log.record_key(argument))
        elif name == "prefixes":
            numbers.append(log.record_prefixes(argument))
        elif name == "everything":
            numbers.append(log.record_everything(pending=argument))
        elif name == "gap":
            numbers.append(log.record_gap(pending=argument))
        elif name == "pending":
            numbers.append(log.record(argument, (), pending=True))
        elif name == "done":
            log.done(numbers[argument % len(numbers)])
        else:
            at, keys = argument
            ignore = numbers[-1] if name == "own" else None
            answers.append(log.overtaken(marks[at % len(marks)], keys, ignore, name == "shared"))
    answers.append(numbers)
    return answers


@needs_build
@settings(max_examples=60, deadline=None)
@given(size=st.sampled_from([0, 1, 3, 1024]), steps=log_operations)
def test_compiled_and_pure_invalidation_logs_answer_alike(
    size: int, steps: list[tuple[str, Any]]
) -> None:
    assert log_answers(invalidation_log, size, steps) == log_answers(
        pure("invalidation_log"), size, steps
    )


#: One read of the general L1 lookup: the key, the time, and what tier 0's ``get_at`` does
#: (no entry, an entry of a soft expiry at 10 and a load of ``took`` seconds, or a failure).
lookup_reads = st.lists(
    st.tuples(
        st.sampled_from(["k", "j", 7]),
        st.floats(0, 20, allow_nan=False),
        st.sampled_from(["missing", "entry", "fails"]),
        st.floats(0, 5, allow_nan=False),
    ),
    max_size=30,
)


def lookup_answers(hit_module: Any, entry_module: Any, tier_module: Any, reads: Any) -> list[Any]:
    """What an ``L1Lookup`` of ``hit_module`` answers for ``reads``, and what it told its
    tier and its hit counter, sentinels by name."""
    told: list[str] = []

    class Hits:
        def add(self, amount: int = 1) -> None:
            told.append(f"hit {amount}")

    class Tier:
        def failed(self, exc: Exception) -> None:
            told.append(f"failed {exc}")

        def miss(self) -> None:
            told.append("miss")

    read: dict[str, Any] = {}

    def get_at(key: str, now: float) -> Any:
        if read["what"] == "fails":
            raise RuntimeError("down")
        if read["what"] == "missing":
            return tier_module.MISSING
        return entry_module.Entry(f"{key}@{now}", 0.0, 10.0, 30.0, read["took"])

    lookup = hit_module.L1Lookup(lambda: read["now"], Hits(), 1.0, 1.0, lambda: 0.5)
    lookup.get_at, lookup.tier = get_at, Tier()
    names = {id(tier_module.MISSING): "MISSING", id(hit_module.REFRESH_DUE): "REFRESH_DUE"}
    answers: list[Any] = []
    for key, read["now"], read["what"], read["took"] in reads:
        try:
            value = lookup(key)
        except TypeError as exc:
            answers.append(f"TypeError {exc}")
            continue
        answers.append(names.get(id(value), value))
    return [answers, told]


@needs_build
@settings(max_examples=60, deadline=None)
@given(reads=lookup_reads)
def test_compiled_and_pure_l1_lookups_answer_alike(reads: Any) -> None:
    from tiered_cache import tier

    assert lookup_answers(hit, entry, tier, reads) == lookup_answers(
        pure("hit"), pure("entry"), pure("tier"), reads
    )


def test_the_makefile_rebuilds_after_a_change_to_any_source_the_build_reads() -> None:
    """The Makefile's prerequisites for the build come from ``build_core.py --sources``, which
    reads compiled.py's lists: a module added there is a prerequisite at once (they were written
    out by hand in the Makefile and had to be kept in step)."""
    root = Path(__file__).resolve().parent.parent
    printed = subprocess.run(
        [sys.executable, str(root / "tools" / "build_core.py"), "--sources"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    from tiered_cache import compiled

    expected = {f"tiered_cache/{name}.py" for name in (*compiled.MODULES, *compiled.DEPENDENCIES)}
    expected |= {f"tiered_cache/{name}.c" for name in compiled.EXTENSIONS}
    assert set(printed) == expected
    assert all((root / path).is_file() for path in printed)
    assert "$(shell $(PYTHON) tools/build_core.py --sources)" in (root / "Makefile").read_text()
