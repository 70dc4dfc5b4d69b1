"""The ``"hot-keys"`` eviction policy of the memory tier: W-TinyLFU with hot-key tracking.

A new key always enters a small LRU *window* (about 1% of the entries), so that a key that is
suddenly popular is served from memory at once. When the window overflows, its least recently
used key becomes a *candidate* for the main area, a segmented LRU (20% *probation*, 80%
*protected*): it gets in only if the frequency sketch says it was read more often than the
*victim* it would displace (the coldest of probation's oldest keys). One-off keys therefore
never push out a frequently read one, however many of them pass (Einziger, Friedman, Manes,
"TinyLFU: A Highly Efficient Cache Admission Policy", 2017, section 5: W-TinyLFU).

A fixed 1% window is a bet on frequency: it loses to plain LRU on a recency-biased trace (a
database's page references). With ``adaptive`` (the default) the split between window and main
area follows the workload, the way ARC splits its recency and frequency lists (Megiddo, Modha,
"ARC: A Self-Tuning, Low Overhead Replacement Cache", FAST 2003): a *ghost* remembers the keys
that recently left the cache, and from which side. A miss on a candidate the window pushed out
and admission refused says a larger window would have hit: the window grows (unless the sketch
already counts that candidate as frequent: then it lost on frequency, and a larger window would
only have put off the same contest). A miss on a key the main area evicted says the opposite: it
shrinks. Each step is ARC's, one entry times the ratio of the two ghosts' sizes, doubled for
each further hit in a row, up to sixteen times, while the evidence is one-sided (a slow start):
per key remembered, this side's ghosts are read over a thousand times as often as the other
side's, which did take in keys lately. On a recency-biased trace refused candidates come back
and evicted main keys never do, and at one entry per hit the window took most of the trace to
reach the whole cache, below LRU all the way; on a Zipf law both kinds come back, and the step
stays ARC's. Caffeine's hill climber (Einziger et al., "Adaptive Software Cache Management",
Middleware 2018), which moves the split by comparing the hit ratio of successive samples, was
measured first: on short real traces it wandered with the workload's own phases (see
docs/benchmarks/hit-ratio.md).

Every cache adapts, however small: its ghosts remember at least 25 keys, and below 100 entries
a step is a hundredth of the entries rather than one. A cache under 100 entries used to keep
its window for good, and 1% of it is one entry: a key read again after the next miss had
already gone to the admission contest, which a key read once loses. On recency-biased traces
of 20 to 80 entries the policy then hit a quarter to a third of what LRU hits (reuse 0.8, mean
distance 30, 50 entries: 70,834 hits of 300,000, LRU 239,947), and on CloudPhysics' block I/O
trace at 49 entries it was 0.63 points below S3-FIFO.

Where recency is all there is, the ghosts' balance can still leave a main area that holds
keys whose bursts are over, below plain LRU. An *LRU guard* simulates plain LRU on a sample
of the keys (a miniature simulation, as many sampled keys as the cache holds): while the
ghosts have given recency half the cache or more and the simulated LRU is ahead by more than
chance, the policy switches to *LRU mode*: the window takes the whole cache (no main area, so
the policy is plain LRU: the main area's keys go first, and one read since joins the window)
and the ghosts move nothing. The same sample then replays a miniature
W-TinyLFU (half window, half main area, the real sketch's counts); when that is ahead by more
than chance, the window goes back to half the cache and the ghosts take over again (see
``TinyLfuPolicy._guard``). The ghosts alone can also take the window to the top (nine tenths
of the cache or more) on a burst of keys read again soon, where the policy is LRU or nearly and
the guard cannot tell the two apart; there it weighs the miniature too, whose lead takes the
window back to half the cache (see ``TinyLfuPolicy._top_period``). Until the sketch first ages
(the warm-up; from 1,024 entries, ages on its own, not at a shift's or a burst's asking) the
guard runs at any window, and LRU ahead of a window under half the cache at
the end of two periods in a row takes the window to half at once, where the ghosts take tens of
thousands of reads when keys come back later than they remember (see
``TinyLfuPolicy._warm_up``). Before the guard has any evidence, at the fill, a
cache of 100 to 1,023 entries asks a trial run on every key since its first read: plain LRU
and W-TinyLFU (with the cache's own window) at a quarter of its size, which fill first; LRU
ahead there by more than chance enters LRU mode from the first eviction, to be confirmed at
the warm-up's end by LRU's lead over two miniatures, at half the cache and at three
quarters, the latter on every key (see ``TinyLfuPolicy._confirmation``).

A popularity shift (a new hot set) leaves the main area full of keys the sketch still counts
as frequent until it next ages. When a period's hit ratio falls sharply below the recent
periods' and refused candidates keep coming back (their ghosts are hit), the sketch ages at
once (see ``TinyLfuPolicy._period_end``), as Caffeine's hill climber restarts on a large change
of the hit rate.

While the window is small (frequency rules), a candidate must beat an established victim (one
read four times or more since the sketch last aged) by two reads, not one: the candidate's count
includes the read that just brought it in, and in a loop the victim's matching read is still to
come, so a one-read lead is no evidence, and admitting on it churns the whole main area (a loop
slightly larger than the cache then hits 10 times less). Victims read once or twice, the tail of
a Zipf law, still give way to a lead of one.

Every read is observed, hits and misses alike: the sketch counts it (a protected key's
occasional hits by an unbiased sample, see :meth:`TinyLfuPolicy.record_hits`), and a key the
sketch has seen a few times is counted in the :class:`~tiered_cache.topk.TopK` list that
answers :meth:`TinyLfuPolicy.hot_keys` and decides which keys are hot enough for ``hot_ttl``.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Final

from . import policy_defaults as defaults
from .ghosts import GhostList
from .policy_options import check_options
from .sketch import FrequencySketch
from .slot import DETACHED, Slot, SlotList
from .topk import TopK

__all__ = ["TinyLfuPolicy"]

logger = logging.getLogger(__name__)

#: A candidate this frequent that loses to its victim is still admitted with probability 1/128,
#: so that an attacker cannot pin a victim by flooding its hash collisions (Caffeine).
_HASH_DOS_THRESHOLD: Final = 6
#: Fewer hits than this to a protected key since the last replay are counted as a sample.
_HIT_SAMPLE: Final = 4
#: The victim is the least frequently read of this many keys at the cold end of probation.
_VICTIM_SAMPLE: Final = 8
#: Below this share of the entries the window is small (frequency rules) ...
_SMALL_WINDOW: Final = 0.05
#: ... and a victim read this often since the last aging is only displaced by a lead of two.
_ESTABLISHED: Final = 4
#: A refused candidate read this often since the last aging is frequency's business: a miss on
#: its ghost does not grow the window (see ``_ghost_hit``).
_FREQUENT_GHOST: Final = 2 * _ESTABLISHED
#: The ghosts remember this share of ``max_entries`` keys, both sides together. ARC keeps a
#: whole cache's worth; a quarter followed OLTP's first half better (0.125 to 1 were tried,
#: docs/benchmarks/hit-ratio.md): only a miss soon after its key left says much about the split.
_GHOST_SHARE: Final = 0.25
#: The ghosts remember at least this many keys: a quarter of a cache under 100 entries is too
#: few misses to weigh one side against the other (on the tweet timeline at 20 entries, with 5
#: ghosts, the split swung between 1 and 19 and the hit ratio fell from 34.8% to 29.4%).
_MIN_GHOSTS: Final = 25.0
#: A step of the split is ARC's, in entries, from this many entries on; a smaller cache steps by
#: the same share of its entries (a hundredth) instead, see ``_ghost_hit``.
_STEP_ENTRIES: Final = 100.0
#: One-sided evidence (see ``_ghost_hit``): a side's ghosts are read this many times more often
#: per key remembered than the other side's (2, 4, 8 and 32 let OLTP's phases swing the window
#: from end to end: 41.68% at 1,000 entries fell to 38.3 to 41.1) ...
_ONE_SIDED: Final = 1000.0
#: ... and the other side took in at least this share of the ghosts' bound lately (it could
#: have been read).
_ONE_SIDED_FED: Final = 0.1
#: The doubled step stops growing at this multiple of ARC's: unbounded, OLTP's phases swung a
#: 15,000-entry window from end to end (66.70% -> 66.22%, 2,000 entries 47.35 -> 47.22, Zipf 0.6
#: at 1,000 entries 12.79 -> 12.48; with 16: 66.71, 47.34, 12.72).
_MAX_BOOST: Final = 16.0

#: The LRU guard (see ``_guard``) simulates plain LRU on the keys whose hash is 0 modulo a
#: power of two, chosen so that the simulated cache holds about this many entries (all of
#: them below twice this size): a miniature simulation (Waldspurger et al., "Cache Modeling
#: and Optimization using Miniature Simulations", USENIX ATC 2017).
_GUARD_ENTRIES: Final = 256
#: LRU is ahead when its lead over this policy, on the sampled reads where the two differ,
#: exceeds this many standard deviations of a fair coin's (a sign test).
_GUARD_SIGMAS: Final = 2.0
#: In LRU mode the guard's sample is shown a miniature W-TinyLFU whose window holds this share
#: of the sampled entries: the split at which the guard starts (see ``_set_window``), and the
#: one the warm-up's jump takes (see ``_warm_up``).
_ALT_WINDOW: Final = 0.5
#: The window is at the top when the main area holds this share of the entries or less: the
#: guard then weighs the miniature W-TinyLFU too (see ``_top_period``) ...
_TOP_MAIN: Final = 0.1
#: ... in a cache of this many entries or more. Under it the guard's periods are a few dozen
#: reads, and a recency trace whose LRU mode waited for the window to reach the top lost it
#: to a brief lead of the miniature (reuse 0.6 / mean 100, 20 entries: LRU mode at the 80,000th
#: read instead of the 30,000th, 340 hits fewer under salt 0, 81 under salt 3).
_TOP_ENTRIES: Final = 100

#: The fill's trial (see ``_fill_trial``): plain LRU and W-TinyLFU with the cache's initial
#: window, simulated on every key at this fraction of the cache's size until the cache first
#: fills (a quarter the size fills at about a quarter of the distinct keys, so the two differ long
#: before the cache evicts; at the guard's own scale, sampled or not, they fill when it does:
#: recency-biased at 500 / 1,000 / 2,000 entries, the 2,562nd / 4,954th / 10,093rd read,
#: sampled at a half to an eighth within 2,444 to 3,055 / 4,653 to 5,152 / 10,122 to
#: 10,612) ...
_TRIAL_SCALE: Final = 4
#: ... and LRU's lead over it, on the reads where the two differed, enters LRU mode at the
#: fill when it exceeds this many standard deviations of a fair coin's. The trial's W-TinyLFU
#: has the cache's own window, in entries, not a quarter of it (see ``__init__``); with a
#: scaled window it was 5, since a block trace's small scale then favoured LRU (CloudPhysics'
#: first half at 490 entries: 3.7, and LRU mode from the fill cost 169 hits), and recency
#: traces whose reuse distances pass the quarter-scale cache read 0.5 to 4.5 and kept their
#: warm-up losses (reuse 0.65 to 0.8, mean distance 700 to 1,000, 500 entries: 33 to 88 hits
#: below LRU). With the cache's window CloudPhysics reads -1.9, every tuned row but the
#: recency ones 0.65 or less (OLTP at 1,000 entries; LRU mode from its fill costs 271 hits),
#: those traces 0.5 to 4.5 as before (docs/benchmarks/hit-ratio-rounds.md, twenty-second round) ...
_TRIAL_SIGMAS: Final = 1.0
#: ... in caches of ``_TOP_ENTRIES`` entries to under this many. The trial reads every key,
#: not the guard's sample (one key in two from 512 entries, in four from 768): on that sample
#: a cache of 1,000 entries had a trial of 62 keys, too few to decide, so it ran only under
#: 512 entries, and the guard's LRU mode came thousands of reads after the fill (recency
#: traces at 1,000 entries, reuse 0.7 to 0.75, mean distance 800 to 900: 171 to 207 hits below
#: LRU; docs/benchmarks/hit-ratio-rounds.md, nineteenth round). Not in larger caches: reading
#: every key, the trial costs their longer warm-up two ``OrderedDict`` reads per read, and sampled,
#: its lead is a draw of the hash salt (OLTP at 15,000 entries: 1.1 to 5.3 sigma under salts
#: 0 to 11, and LRU mode from the fill cost it 6,699 hits).
_TRIAL_ENTRIES: Final = 1_024
#: LRU mode from the fill's trial is kept at the warm-up's end only if LRU leads, besides the
#: guard's miniature at half the cache, a second one whose window holds this share (see
#: ``_confirmation``): where the ghosts' split beats LRU it sits above half.
_CONFIRM_WINDOW: Final = 0.75

#: A popularity shift (see ``_period_end``): the hit ratio is taken over periods of this many
#: reads per entry (at least ``_SHIFT_MIN_READS``) ...
_SHIFT_PERIOD: Final = 2
_SHIFT_MIN_READS: Final = 1_000
#: ... and a period whose hits fall below this share of the recent periods' ratio ...
_SHIFT_DROP: Final = 0.8
#: ... by more than this many standard deviations (Poisson: the square root of the hits
#: expected) ages the sketch at once.
_SHIFT_SIGMAS: Final = 3.0
#: ... when at least this share of the period's misses were refused candidates coming back
#: (their ghosts hit): the new hot keys, read again and kept out by the old ones' counts. A
#: scan or a phase of one-off keys also lowers the hit ratio, but its keys do not come back
#: (OLTP at 1,000 entries: 0.5% to 4% of the misses of most of its sharp drops, 7.7% of one;
#: shift halfway at 1,000 and 2,000: 8.4% and 8.9%).
_SHIFT_COMEBACKS: Final = 0.06
#: ... and only while the window holds less than this share of the cache (frequency rules the
#: main area): OLTP's phases drop as sharply with as many keys coming back, with the window at
#: 392 of 1,000 entries (shift halfway at 1,000 and 2,000: 109 and 175).
_SHIFT_WINDOW: Final = 0.25

#: A burst (see ``_comeback``): refused candidates come back this many misses in a row (hits
#: between them allowed) per doubling of the entries (two log2 of them), and at least
#: ``_BURST_MIN_RUN``: more than twice the longest such run of OLTP at each of its sizes
#: (5, 5, 6, 8 and 12 at 1,000 to 15,000 entries), where CloudPhysics' strided burst is one
#: run of 78 at 490 entries ...
_BURST_RUN_PER_DOUBLING: Final = 2.0
_BURST_MIN_RUN: Final = 8
#: ... of keys the sketch counted this often or less before the read (read once or twice:
#: new keys, not a loop's) ...
_BURST_RARE: Final = 2
#: ... and not again until the sketch has aged this many times more after the one the burst
#: itself asks for: a loop slightly larger than the cache whose hits a read buffer drops
#: shows such a run every round or two, and aging at each took the hit ratio of its rounds
#: 10 to 40 from 88.1% to 79.2% (84.1% to 86.3% with one aging between, 88.0% with two).
_BURST_REFRACTORY: Final = 2

# The segments' tags (Slot.segment): a kept slot names the list that holds it.
_WINDOW: Final = 0
_PROBATION: Final = 1
_PROTECTED: Final = 2
_SEGMENT_NAMES: Final = ("window", "probation", "protected")


class TinyLfuPolicy:
    """W-TinyLFU admission and eviction for :class:`~tiered_cache.memory.MemoryTier`.

    Called with the tier's lock held; not thread-safe on its own.

    Args:
        max_entries: bound on the number of entries.
        max_weight: optional bound on the summed weights (the tier's ``max_bytes``).
        window_fraction: initial share of the entries given to the admission window.
        adaptive: let misses on recently evicted keys move the window's share (ARC's rule);
            ``False`` keeps ``window_fraction`` for good.
        protected_fraction: share of the main area that is protected (the rest is probation).
        sample_factor: the sketch ages (halves) after ``sample_factor * max_entries`` reads
            (TinyLFU uses 10; a longer memory measured better on the benchmark workloads).
        min_sample: ... but after no fewer than this many reads (small caches).
        sketch_width: counters per sketch row (a power of two); default from ``max_entries``.
        doorkeeper: put a Bloom filter in front of the sketch (absorbs one-hit wonders).
        top_k: how many keys the hot-key list reports as hot.
        hot_half_life: seconds after which a read counts half in the hot-key rates.
        hot_ttl: if set, a hot key (one of the ``top_k``) filled into the tier is kept for this
            many seconds, even when that is longer than the tier's ``ttl`` (never longer than
            the entry's own hard expiry).
        clock: seconds, the tier's clock.
        rng: randomness for the 1/128 admission; seeded for reproducible replays.

    The options a config file's memory tier also gives are checked by its rules
    (:mod:`tiered_cache.policy_options`): one they refuse raises
    :class:`~tiered_cache.ConfigError` naming it (``hot_ttl: ...``, ``sketch_width: ...``).
    """

    def __init__(  # noqa: PLR0915 - each rule's state is set here, once
        self,
        max_entries: int,
        max_weight: int | None = None,
        *,
        window_fraction: float = defaults.WINDOW_FRACTION,
        adaptive: bool = defaults.ADAPTIVE,
        protected_fraction: float = defaults.PROTECTED_FRACTION,
        sample_factor: int = defaults.SAMPLE_FACTOR,
        min_sample: int = defaults.MIN_SAMPLE,
        sketch_width: int | None = defaults.SKETCH_WIDTH,
        doorkeeper: bool = defaults.DOORKEEPER,
        top_k: int = defaults.TOP_K,
        hot_half_life: float = defaults.HOT_HALF_LIFE,
        hot_ttl: float | None = defaults.HOT_TTL,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        # The rules of a config file's memory tier, in one place (built, never read).
        check_options(
            max_entries=max_entries,
            max_weight=max_weight,
            window_fraction=window_fraction,
            adaptive=adaptive,
            sample_factor=sample_factor,
            sketch_width=sketch_width,
            doorkeeper=doorkeeper,
            top_k=top_k,
            hot_half_life=hot_half_life,
            hot_ttl=hot_ttl,
        )
        if not 0.0 < protected_fraction < 1.0:
            raise ValueError("protected_fraction must be in (0, 1)")
        self.max_entries = max_entries
        self._max_weight = max_weight
        self._protected_fraction = protected_fraction
        self._adaptive = adaptive
        self._hot_ttl = hot_ttl
        self._clock = clock
        self._rng = rng or random.Random(0)
        self._random = self._rng.random
        self.sketch = FrequencySketch(
            max_entries,
            width=sketch_width,
            sample_factor=sample_factor,
            min_sample=min_sample,
            doorkeeper=doorkeeper,
        )
        self.top = TopK(top_k, half_life=hot_half_life, clock=clock)
        # The segments' orders are threaded through the slots themselves (SlotList): one dict
        # entry and one record per key, no OrderedDict node beside them.
        self._window = SlotList(_WINDOW)
        self._probation = SlotList(_PROBATION)
        self._protected = SlotList(_PROTECTED)
        # Every kept slot, whatever its segment: the tier's lock-free hit path reads it with
        # one C-level lookup (see MemoryTier.get); segments only keep the order.
        self._slots: dict[str, Slot] = {}
        self.peek: Callable[[str], Slot | None] = self._slots.get
        self._weight = 0
        self._evictions = 0
        # Estimates of probation keys, kept for the sketch's current epoch: a key on probation
        # is not read (a read promotes it), so its count moves only by aging or, rarely, by
        # other keys' collisions; an estimate leaves with its key.
        self._probation_estimates: dict[str, int] = {}
        self._estimates_epoch = self.sketch.epoch
        # The LRU guard (_guard): plain LRU simulated on a sample of the keys, its lead over
        # this policy on the same reads and the reads where the two differed, both halved
        # after each period of sampled reads.
        rate = _power_of_two_at_least(max(1, max_entries // _GUARD_ENTRIES))
        self._guard_mask = rate - 1
        self._guard_size = max(1, max_entries // rate)
        self._guard_lru: OrderedDict[str, None] = OrderedDict()
        self._guard_period = self._guard_size
        self._guard_reads = 0
        self._lru_lead = self._guard_differed = 0.0
        # LRU mode (_guard): the window is the whole cache, so the policy is plain LRU, until
        # a miniature W-TinyLFU on the same sampled keys (its window and main area) beats it.
        # The warm-up (_warm_up): until the sketch first ages (from _TRIAL_ENTRIES entries, on
        # its own: see _age_early) the guard runs at any window;
        # whether LRU led at the end of the last period, and the window a jump left (-1: none).
        self._guarding = self._lru_mode = self._lru_was_ahead = self._half_or_more = False
        self._warming, self._jumped_from = self._adaptive, -1.0
        # At the top (_set_window: a main area of _TOP_MAIN or less, outside LRU mode) the
        # guard also shows its sample to the miniature W-TinyLFU: its lead over this policy.
        self._at_top = False
        self._top_lead = self._top_differed = 0.0
        self._alt_window: OrderedDict[str, None] = OrderedDict()
        self._alt_main: OrderedDict[str, None] = OrderedDict()
        # The fill's trial (_fill_trial): until the cache first fills, LRU and W-TinyLFU with
        # the cache's initial window, scaled down, on every key; LRU's lead then, and whether
        # the LRU mode it entered is still to be confirmed at the warm-up's end.
        self._trying = adaptive and _TOP_ENTRIES <= max_entries < _TRIAL_ENTRIES
        # The keys a read shows the guard (get, record_hits): every key while the trial runs
        # and while the LRU mode it entered is provisional (the guard then skips those outside
        # its own sample), the guard's sample after.
        self._sample_mask = 0 if self._trying else self._guard_mask
        self._trial_size = max(1, max_entries // _TRIAL_SCALE)
        # The cache's window in entries, not scaled: the trial is a smaller cache on the same
        # reads, so a key read again a few keys later hits in the cache's window, and a window
        # of a quarter of it (one entry at 500) credited LRU with those hits (a block device's
        # blocks read two or three times in a row).
        self._trial_window_size = max(
            1, min(self._trial_size - 1, round(max_entries * window_fraction))
        )
        self._trial_lru: OrderedDict[str, None] = OrderedDict()
        self._trial_window: OrderedDict[str, None] = OrderedDict()
        self._trial_main: OrderedDict[str, None] = OrderedDict()
        self._trial_lead = self._trial_differed = 0.0
        # The last max_entries keys read until the fill, in the order of their last read:
        # LRU's order, which the cache takes if the trial enters LRU mode (_order_by_last_read).
        self._last_reads: OrderedDict[str, None] = OrderedDict()
        self._provisional = False
        # While that LRU mode is provisional, a second miniature W-TinyLFU (_confirm_read) of
        # the cache's size at a window of _CONFIRM_WINDOW, on every key, and LRU's lead over it
        # once it has filled.
        self._confirm_window: OrderedDict[str, None] = OrderedDict()
        self._confirm_main: OrderedDict[str, None] = OrderedDict()
        self._confirm_lead = self._confirm_differed = 0.0
        self._window_target = max_entries * window_fraction
        self._set_window(self._window_target)
        # Keys that recently left, each with the side that let it go (+1: refused from the
        # window, -1: evicted from the main area), ARC's two ghost lists in one (bounded by
        # _GHOST_SHARE), counted per side for the size of a step.
        self._ghosts = GhostList()
        self._ghost_limit = max(_GHOST_SHARE * max_entries, _MIN_GHOSTS)
        # ARC's step is one entry; under _STEP_ENTRIES, that share of the cache (_ghost_hit).
        self._step_unit = min(1.0, max_entries / _STEP_ENTRIES)
        # Per side, in attributes of their own rather than dicts keyed by side (compiled: no
        # boxed int or float per eviction): the ghosts held, refused (+1) and evicted (-1).
        self._refused_ghosts = 0
        self._evicted_ghosts = 0
        # For the slow start on one-sided evidence (_ghost_hit): per side, the keys remembered
        # and the ghost hits, both halved after each ghost list's worth of departures; the
        # step's multiplier and the side it favours.
        self._refused_fed = self._evicted_fed = 0.0
        self._refused_reads = self._evicted_reads = 0.0
        self._departures = 0
        self._one_sided_fed = _ONE_SIDED_FED * self._ghost_limit
        self._boost = 1.0
        self._boost_side = 0
        # The shift detector (_period_end): reads left in this period, its hits, and the hit
        # ratio of the recent periods (-1: none yet).
        self._period_reads = max(_SHIFT_PERIOD * max_entries, _SHIFT_MIN_READS)
        self._period_left = self._period_reads
        self._period_hits = self._period_comebacks = 0
        self._recent_ratio = -1.0
        # The burst detector (_comeback): refused candidates' comebacks in a row, the window
        # when the run began, whether the window is held, the misses in a row since the last
        # comeback while it is, and the sketch's epoch from which a burst may be taken again.
        self._comeback_run = 0
        self._run_window = self._window_target
        self._holding = False
        self._quiet_misses = 0
        self._burst_epoch = 0
        self._burst_run = max(
            _BURST_MIN_RUN, round(_BURST_RUN_PER_DOUBLING * math.log2(max_entries))
        )
        # A key enters the hot-key list once the sketch has seen it this often: one-off keys
        # would only churn the list (Filtered Space-Saving).
        self._top_gate = 3
        # Bound once: it runs on every read (the sketch picks it: with a doorkeeper or not).
        self._increment = self.sketch.increment

    # -- sizes ------------------------------------------------------------------------------

    def _set_window(self, target: float) -> None:
        n = self.max_entries
        # At least one window slot (so that a new key is always let in) unless the whole
        # cache is one entry; at least one main slot for the same reason the other way round,
        # but in LRU mode (see _guard), where the window is the whole cache.
        # The target stays fractional so that the climber's small late steps add up.
        upper = float(n) if self._lru_mode else max(n - 1.0, 1.0)
        self._window_target = min(max(target, 1.0), upper)
        self._window_max = 1 if n == 1 else round(self._window_target)
        main = n - self._window_max
        self._protected_max = int(main * self._protected_fraction)
        self._small_window = _SMALL_WINDOW * n
        # The LRU guard is fed only while the window holds half the cache or more, the only
        # time it acts (see _guard), or in the warm-up (see _warm_up): no cost on a miss
        # otherwise. It starts afresh each time, since the reads in between went unseen; its
        # evidence also when the window crosses half the cache: LRU's lead over a smaller
        # window is no evidence for LRU mode (see _warm_up).
        half_or_more = 2 * self._window_max >= n
        # The top: a main area of a tenth of the cache or less, outside LRU mode (see
        # _top_period). The miniature starts afresh each time the window gets there.
        at_top = n >= _TOP_ENTRIES and not self._lru_mode and n - self._window_max <= _TOP_MAIN * n
        if at_top != self._at_top:
            self._at_top = at_top
            self._alt_window.clear()
            self._alt_main.clear()
            self._top_lead = self._top_differed = 0.0
        guarding = self._adaptive and (self._warming or half_or_more)
        if guarding != self._guarding:
            self._guard_lru.clear()
            self._guard_reads = 0
        if guarding != self._guarding or half_or_more != self._half_or_more:
            self._guarding, self._half_or_more = guarding, half_or_more
            self._lru_lead = self._guard_differed = 0.0

    @property
    def window_max(self) -> int:
        """Entries the admission window may hold now (moves when ``adaptive``)."""
        return self._window_max

    # -- EvictionPolicy ---------------------------------------------------------------------

    def get(self, key: str) -> Slot | None:
        """The slot for ``key``; the read is counted in the sketch and the hot-key list.

        The memory tier calls this for its misses; its hits come through
        :meth:`record_hits`, replayed from its read buffer at the next miss or write, so
        that the hit itself stays cheaper than ``cachetools.TTLCache.get``.
        """
        slot = self._slots.get(key)
        if slot is None:
            if self._adaptive:
                side = self._ghosts.pop(key)
                if side:
                    self._ghost_hit(key, side)
                else:
                    self._comeback_run = 0
                    if self._holding:
                        self._quiet_miss()
                if self._guarding and not hash(key) & self._sample_mask:
                    self._guard(key, 0)
                self._period_left -= 1
                if self._period_left <= 0:
                    self._period_end()
            if self._increment(key, 1) >= self._top_gate:
                self.top.add(key, 1)
            return None
        segment = slot.segment
        if segment == _PROTECTED and not self._lru_mode:
            self._protected.move_to_end(slot)
        elif segment == _WINDOW:
            self._window.move_to_end(slot)
        elif self._lru_mode:
            self._join_window(key, slot)
        else:
            self._probation.remove(slot)
            self._promote(key, slot)
        if self._increment(key, 1) >= self._top_gate:
            self.top.add(key, 1)
        return slot

    def record_hits(self, hits: Mapping[str, int]) -> None:
        """Count buffered hits (per key, in the order of each key's last hit) and touch.

        One sketch update per distinct key, whatever its number of hits. Hits to keys in the
        window or on probation count exactly: admission compares keys read a few times, and
        a sampled count (0 or 4 for one hit) would be noise right there. A protected key
        with fewer than four hits since the last replay, the bulk of the hits of a warm
        cache, is counted four at a time with probability ``hits / 4``: unbiased, at a
        quarter of the cost. Randomly, not every fourth time, which keys read in a cycle
        would alias with.
        """
        slots = self._slots
        increment, gate, random = self._increment, self._top_gate, self._random
        window, probation, protected = self._window, self._probation, self._protected
        frequent = []  # one update of the hot-key list for the whole replay
        guarding, sample_mask = self._guarding, self._sample_mask
        lru_mode = self._lru_mode
        if self._adaptive:
            replayed = sum(hits.values())
            self._period_hits += replayed
            self._period_left -= replayed
        for key, hit_count in hits.items():
            counted = hit_count
            if guarding and not hash(key) & sample_mask:
                self._guard(key, hit_count)
            slot = slots.get(key)
            if slot is not None:
                segment = slot.segment
                if segment == _PROTECTED and not lru_mode:
                    protected.move_to_end(slot)
                    # A protected key was read again and again: a sample of its few hits is
                    # as good as their count, and most hits are to protected keys.
                    if hit_count < _HIT_SAMPLE:
                        if random() * _HIT_SAMPLE >= hit_count:
                            continue
                        counted = _HIT_SAMPLE
                elif segment == _WINDOW:
                    window.move_to_end(slot)
                elif lru_mode:
                    self._join_window(key, slot)
                else:
                    probation.remove(slot)
                    self._promote(key, slot)
            # else: dropped since; the reads still count, there is nothing to touch
            if increment(key, counted) >= gate:
                frequent.append((key, counted))
        if frequent:
            self.top.add_many(frequent)

    def _promote(self, key: str, slot: Slot) -> None:
        """Move ``key``, just taken off probation by a read, to protected."""
        self._probation_estimates.pop(key, None)
        protected = self._protected
        protected.append(key, slot)
        while protected.size > self._protected_max:
            demoted = protected.pop_oldest()
            self._probation.append(demoted.key, demoted)

    def _join_window(self, key: str, slot: Slot) -> None:
        """In LRU mode, move ``key``, a main-area key just read, to the window's recent end.

        LRU mode evicts the main area's keys first (``_evict``), since they are older than the
        window's in LRU's order, or were let in by frequency; one read since is a recent use,
        and LRU would keep it as long as the window's keys read at the same time. Left in the
        main area, a key read again after the switch went before keys not read since: the
        cache held what LRU holds only once the whole main area had gone (recency-biased, 500
        entries: 17 hits fewer than LRU in the 2,000 reads after the switch, 49 over the trace;
        34 with the move). Read in LRU mode, a key is counted exactly, as in the window.
        """
        if slot.segment == _PROTECTED:
            self._protected.remove(slot)
        else:
            self._probation.remove(slot)
            self._probation_estimates.pop(key, None)
        self._window.append(key, slot)

    def keys(self) -> list[str]:
        """The keys kept, in no particular order."""
        return list(self._slots)

    def put(self, key: str, slot: Slot) -> bool:
        """Offer ``slot``; a new key enters the window, which may push a candidate out."""
        if not self._place(key, slot):
            return False
        self._evict()
        return key in self._slots

    def put_many(self, items: Sequence[tuple[str, Slot]]) -> None:
        """Offer several slots; the same contests as one :meth:`put` after another.

        No read is counted between the offers of a batch, so the new keys can all enter the
        window first and its overflow be judged in one pass: the candidates leave it in the
        same order, against the same victims. A key already kept waits for the contests
        before it (one of them may have evicted it); a weight bound, which acts after every
        offer, takes the offers one by one.
        """
        if self._max_weight is not None:
            for item in items:
                self.put(*item)
            return
        kept = self._slots
        for key, slot in items:
            if key in kept:
                self._evict()
            self._place(key, slot)
        self._evict()

    def _place(self, key: str, slot: Slot) -> bool:
        """Store ``slot`` without evicting; False if it can never fit."""
        weight = slot.weight
        if self._max_weight is not None and weight > self._max_weight:
            self.pop(key)
            return False
        if slot.segment != DETACHED:
            # Already kept (under another key, or by another policy): a slot is in one list
            # at most, so this key keeps a record of its own.
            slot = Slot(slot.entry, slot.expire_at, weight)
        if self._hot_ttl is not None and self.top.is_hot(key):
            entry = slot.entry
            hot_expire_at = min(entry.hard_expiry, self._clock() + self._hot_ttl)
            if hot_expire_at > slot.expire_at:
                slot = Slot(entry, hot_expire_at, weight)
        kept = self._slots.get(key)
        if kept is not None:  # a new value for a kept key: it stays where it is
            self._weight += weight - kept.weight
            self._segment(kept).replace(kept, slot)
        else:
            self._weight += weight
            self._window.append(key, slot)
        self._slots[key] = slot
        return True

    def pop(self, key: str) -> Slot | None:
        """Remove ``key`` (not an eviction, not a read)."""
        slot = self._slots.pop(key, None)
        if slot is not None:
            self._segment(slot).remove(slot)
            self._weight -= slot.weight
            self._probation_estimates.pop(key, None)
        return slot

    def _segment(self, slot: Slot) -> SlotList:
        """The segment holding ``slot``, a kept slot."""
        segment = slot.segment
        if segment == _PROTECTED:
            return self._protected
        if segment == _WINDOW:
            return self._window
        return self._probation

    def clear(self) -> None:
        """Forget every entry; the sketch and the hot-key list keep their history."""
        self._slots.clear()
        self._probation_estimates.clear()
        self._window.clear()
        self._probation.clear()
        self._protected.clear()
        self._weight = 0

    def __len__(self) -> int:
        return len(self._slots)

    def __bool__(self) -> bool:
        # An empty policy is still a policy: ``policy or LruPolicy(...)`` must keep it.
        return True

    @property
    def weight(self) -> int:
        """Sum of the weights of the kept slots."""
        return self._weight

    @property
    def evictions(self) -> int:
        """Slots pushed out to make room, including candidates refused by the sketch."""
        return self._evictions

    # -- reports ----------------------------------------------------------------------------

    def hot_keys(self, n: int) -> list[tuple[str, float]]:
        """The ``n`` most read keys lately, with estimated reads per second, hottest first."""
        return self.top.top(n)

    def segment_of(self, key: str) -> str | None:
        """``"window"``, ``"probation"``, ``"protected"`` or ``None`` (for tests and stats)."""
        slot = self._slots.get(key)
        return None if slot is None else _SEGMENT_NAMES[slot.segment]

    # -- eviction ---------------------------------------------------------------------------

    def _drop(self, key: str) -> None:
        # A lookup and a del, not pop(key, None): compiled, a dict's get, ``in`` and del are
        # direct calls, its pop a method found by name (about 400 instructions a call, twice
        # per eviction).
        slots = self._slots
        slot = slots.get(key)
        if slot is not None:
            del slots[key]
            self._weight -= slot.weight
        estimates = self._probation_estimates
        if key in estimates:
            del estimates[key]
        self._evictions += 1

    def _victim(self, victims: SlotList) -> tuple[Slot, int]:
        """The least frequently read of the ``_VICTIM_SAMPLE`` slots at the cold end of
        ``victims`` (the oldest of them on a tie), with its estimate.

        Taking the LRU key alone lets a key that was read a lot, but not lately, block every
        candidate until aging; taking the coldest of a few old keys costs one dict lookup
        each, since probation keys' estimates are kept (see ``_probation_estimates``). The
        slots are walked in place (``victims`` must not be empty), and the victim's is handed
        back: no list of keys, and no lookup of the slot to unlink.
        """
        sketch = self.sketch
        frequency = sketch.frequency
        slot = victims.oldest()
        victim = slot
        lowest = -1
        sample = min(_VICTIM_SAMPLE, victims.size)
        if victims is not self._probation:
            # Protected keys are read in place: a kept estimate would go stale.
            for _ in range(sample):
                count = frequency(slot.key)
                if lowest < 0 or count < lowest:
                    victim, lowest = slot, count
                after = slot.next
                assert after is not None
                slot = after
            return victim, lowest
        estimates = self._probation_estimates
        if sketch.epoch != self._estimates_epoch:
            estimates.clear()
            self._estimates_epoch = sketch.epoch
        for _ in range(sample):
            key = slot.key
            estimate = estimates.get(key)
            if estimate is None:
                estimate = estimates[key] = frequency(key)
            if lowest < 0 or estimate < lowest:
                victim, lowest = slot, estimate
            after = slot.next
            assert after is not None
            slot = after
        return victim, lowest

    def _admit(self, candidate: str, victim_frequency: int) -> bool:
        candidate_frequency = self.sketch.frequency(candidate)
        if self._window_max < self._small_window and victim_frequency >= _ESTABLISHED:
            victim_frequency += 1  # see the module's docstring: a lead of one is no evidence
        if candidate_frequency > victim_frequency:
            return True
        if candidate_frequency >= _HASH_DOS_THRESHOLD:
            return self._rng.getrandbits(7) == 0
        return False

    def _evict(self) -> None:
        window, probation, protected = self._window, self._probation, self._protected
        slots = self._slots
        limit = self.max_entries
        window_max = self._window_max
        main_max = limit - window_max
        # A native call, when compiled (a bound method picked here was a Python call each).
        adaptive = self._adaptive
        while window.size > window_max:
            candidate_slot = window.pop_oldest()
            candidate = candidate_slot.key
            if probation.size + protected.size < main_max:  # room in the main area
                probation.append(candidate, candidate_slot)
                continue
            victims = probation or protected
            if not victims:
                self._drop(candidate)
                continue
            victim_slot, victim_frequency = self._victim(victims)
            if self._admit(candidate, victim_frequency):
                victim = victim_slot.key
                victims.remove(victim_slot)
                self._drop(victim)
                if adaptive:
                    self._remember(victim, -1)
                probation.append(candidate, candidate_slot)
            else:
                self._drop(candidate)
                if adaptive:
                    self._remember(candidate, 1)
        # After the window grew the main area may hold more than its share.
        while len(slots) > limit:
            segment = probation or protected or window
            dropped = segment.pop_oldest().key
            self._drop(dropped)
            if adaptive:
                self._remember(dropped, -1 if segment is not window else 1)
        if self._max_weight is not None:
            while self._weight > self._max_weight:
                segment = probation or window or protected
                self._drop(segment.pop_oldest().key)

    def _remember(self, key: str, side: int) -> None:
        """Keep ``key`` in the ghost of ``side``; past the bound the oldest ghost goes."""
        ghosts = self._ghosts
        previous = ghosts.pop(key)
        if previous > 0:
            self._refused_ghosts -= 1
        elif previous < 0:
            self._evicted_ghosts -= 1
        ghosts.append(key, side)
        if side > 0:
            self._refused_ghosts += 1
            self._refused_fed += 1.0
        else:
            self._evicted_ghosts += 1
            self._evicted_fed += 1.0
        self._departures += 1
        if self._departures >= self._ghost_limit:  # recent departures weigh more
            self._departures = 0
            self._refused_fed *= 0.5
            self._evicted_fed *= 0.5
            self._refused_reads *= 0.5
            self._evicted_reads *= 0.5
        if ghosts.size > self._ghost_limit:
            if ghosts.pop_oldest() > 0:
                self._refused_ghosts -= 1
            else:
                self._evicted_ghosts -= 1

    def _ghost_hit(self, key: str, side: int) -> None:
        """A miss on ``key``, a ghost of ``side``: move the split toward it (ARC's step).

        Not for a refused candidate the sketch already counts as frequent (read
        ``_FREQUENT_GHOST`` times or more since the last aging, before this read): it lost a
        contest of frequencies to a victim at least as frequent, and a larger window would only
        have delayed the same contest. That is the miss of a loop slightly larger than the cache
        (every key read equally often, each refused candidate read again within the ghosts'
        reach); counted, it grew the window, which in a loop only trades main-area hits for
        window hits (loop of 1,100 at 1,000 entries: 84.8% counted, 89.0% not).
        """
        if side > 0:
            self._refused_ghosts -= 1
            self._period_comebacks += 1
            ghosts, other_ghosts = self._refused_ghosts, self._evicted_ghosts
            frequency = self.sketch.frequency(key)
            if self._comeback(frequency) or frequency >= _FREQUENT_GHOST:
                return
        else:
            self._evicted_ghosts -= 1
            ghosts, other_ghosts = self._evicted_ghosts, self._refused_ghosts
            self._comeback_run = 0
            if self._holding:
                self._quiet_miss()
        if self._lru_mode:
            return  # the guard owns the split (see _guard)
        # A cache under 100 entries steps by a hundredth of its entries, not one entry: at 20
        # entries one entry is 5% of the cache, and on a Zipf law the ghosts' noise swung the
        # window between 1 and 12 (Zipf 0.8, 20 entries: 2,745 hits of 300,000 fewer than a
        # fixed window of one entry; 1,195 with the smaller step).
        step = max(1.0, other_ghosts / max(ghosts, 1)) * self._step_unit
        # Slow start on one-sided evidence: this side's ghosts are read, per key remembered, over
        # a thousand times as often as the other side's, which took in keys that could have
        # been read: each further hit on this side in a row doubles the step. ARC's step is
        # one while this side's ghost is the larger, and at one entry per hit a recency-biased
        # trace took 120,000 reads to grow a 500-entry cache's window from 5 to 490 entries,
        # below LRU all the while (LRU 80.03%; 79.84% without this rule, 80.02% with it). Both
        # conditions matter: doubling on any run of hits on one side (Zipf's refused
        # candidates far outnumber its evicted main keys, so their ghosts are hit in long runs)
        # took the window of Zipf 1.0 at 10,000 entries to the whole cache (76.25% -> 73.97%).
        if side > 0:
            self._refused_reads += 1.0
            reads, other_reads = self._refused_reads, self._evicted_reads
            fed, other_fed = self._refused_fed, self._evicted_fed
        else:
            self._evicted_reads += 1.0
            reads, other_reads = self._evicted_reads, self._refused_reads
            fed, other_fed = self._evicted_fed, self._refused_fed
        if other_fed >= self._one_sided_fed and reads * other_fed > _ONE_SIDED * other_reads * fed:
            if self._boost_side == side:
                self._boost = min(self._boost * 2.0, _MAX_BOOST)
            else:
                self._boost, self._boost_side = 1.0, side
            step *= self._boost
        else:
            self._boost, self._boost_side = 1.0, 0
        before = self._window_max
        self._set_window(self._window_target + side * step)
        if self._window_max != before:
            logger.debug("window %d -> %d", before, self._window_max)

    def _comeback(self, frequency: int) -> bool:
        """A miss on a refused candidate's ghost, a key the sketch counted ``frequency`` times
        before this read: True while a burst holds the window (the ghost hit moves nothing).

        A block device's strided stream reads new blocks two or three times, a little apart:
        each second read is a refused candidate coming back, the ghosts take it for a window
        too small, and the slow start doubles the step at each (CloudPhysics' first half at
        490 entries: 78 such misses in a row, the window from 56 to 489 entries, and the main
        area that held the trace's frequent blocks evicted for a burst that is over a few
        thousand reads later). A run of comebacks of keys read once or twice, longer than a
        recency trace or OLTP shows (``_burst_run``: none of 4 or more on the recency traces,
        at most 12 on OLTP), is taken for such a burst: the window goes back to where it
        stood when the run began, the sketch ages once (the burst's blocks, read two or three
        times, then win their contests against counts from before it, as ARC's frequency list
        takes them), and refused candidates' comebacks move the window no more until they
        stop (as many misses in a row without one as the run asked for). A hold of a fixed
        2,000 misses instead cost OLTP at 10,000 and 15,000 entries (docs/benchmarks/
        hit-ratio-rounds.md, fourteenth and fifteenth rounds).

        Costs an addition and a test per comeback; any other miss a store and a test.
        """
        if frequency > _BURST_RARE:
            self._comeback_run = 0
            if self._holding:
                self._quiet_miss()
            return self._holding
        if not self._comeback_run:
            self._run_window = self._window_target
        self._comeback_run += 1
        self._quiet_misses = 0
        if self._holding:
            return True
        sketch = self.sketch
        if self._comeback_run < self._burst_run or sketch.epoch < self._burst_epoch:
            return False
        self._holding = True
        self._burst_epoch = sketch.epoch + 1 + _BURST_REFRACTORY
        self._age_early()
        if not self._lru_mode:  # in LRU mode the guard owns the split (see _guard)
            self._boost, self._boost_side = 1.0, 0
            self._set_window(self._run_window)
        logger.debug("a burst of %d comebacks: window %d", self._comeback_run, self._window_max)
        return True

    def _age_early(self) -> None:
        """Age the sketch now, as a popularity shift (``_period_end``) or a burst
        (``_comeback``) asks: the one owner of the agings the policy asks for.

        From ``_TRIAL_ENTRIES`` entries such an aging does not end the warm-up: ``_warm_up``
        waits for the sketch's own (``early_resets`` tells them apart). A hot set, then
        returning blocks, then the hot set again: the first set's shift aged the sketch early,
        the warm-up ended there, and the returning blocks, LRU ahead of a small window all
        the while, found the guard off (it acts at a window of half the cache or more after
        the warm-up) and the ghosts, which remember a quarter of the departures, too slow: at
        5,000 entries 158,089 hits of 300,000 where LRU hit 161,686, 163,632 with the warm-up
        kept (docs/benchmarks/hit-ratio-rounds.md, thirty-second round: 5 of 48 check cells
        changed, +3,117 to +6,345 hits on average, the rest the same to the hit). Under
        ``_TRIAL_ENTRIES``, where the fill's trial answers the fill, an early aging ends the
        warm-up as before: kept, a loop of 1,100 keys at 1,000 entries lost with it
        (``test_a_loop_the_main_area_holds_does_not_fool_the_lru_guard``: 8 salts of 12 at
        86% or more of rounds 10 to 40 hitting, 11 without).
        """
        if self.max_entries >= _TRIAL_ENTRIES:
            self.sketch.age_early()
        else:
            self.sketch.reset()

    def _quiet_miss(self) -> None:
        """A miss that is no comeback while a burst holds the window: enough in a row end it."""
        self._quiet_misses += 1
        if self._quiet_misses >= self._burst_run:
            self._holding = False
            self._quiet_misses = 0

    def _guard(self, key: str, hits: int) -> None:
        """A sampled key was read ``hits`` times since the last replay and found each time
        (0: once, a miss): the same reads through a plain LRU cache of the sample's share (in
        LRU mode, through the miniature W-TinyLFU of ``_alternative_read``).

        Keeps this policy from settling below plain LRU where recency is all there is. The
        ghosts weigh the two sides by the misses a different split would have saved, and on a
        recency-biased trace their balance leaves a main area of a tenth of the cache that
        holds keys whose bursts are over (reuse 0.7, mean distance 500, 500 entries: the window
        settled at 410 to 460 entries and the hit ratio 1.1 points below LRU; with a fixed
        window of 99%, 0.1 below: no main slot at all is the optimum there). When, after a
        period of sampled reads, the simulated LRU is ahead by more than chance
        (``_GUARD_SIGMAS`` on the reads where the two differed), the policy enters LRU mode:
        the window takes the whole cache and the ghosts move nothing, until the sample's
        miniature W-TinyLFU beats it (``_alternative_read``), which puts the window back at
        half the cache. Before LRU mode, the window took a quarter of the main area per period
        and evicted main keys' ghosts did not shrink it while LRU was ahead: the evidence, two
        sigma over a period and a half-weighted past, came and went, and those ghost hits
        pulled the window back in between (reuse 0.7 / mean 1,000 at 1,000 entries: window 850
        to 950, 0.66 points below LRU; in LRU mode 0.23 below, all of it before the window
        first reached half the cache). Only while the window holds half the cache or
        more (``_guarding``, see ``_set_window``): on a workload where frequency pays LRU is
        far behind anyway, and in a loop the main area holds, a read buffer that drops hits
        (990 in a row) showed the simulation a part of them, and it found keys a real LRU
        would not (loop of 1,100 at 1,000 entries, 128 reads buffered: 88.83% -> 85.70% with
        the guard acting at any window).

        Costs, while guarding, a hash and a mask per read the policy is shown; a sampled read
        (one in ``max_entries // 256`` rounded to a power of two, every read below 512
        entries) an ``OrderedDict`` move, and at the top (``_top_period``) a read of the
        miniature too; a period's end one pass over the keys. Otherwise one attribute test per
        miss and per replayed key. While the fill's trial runs, and in the warm-up while the
        LRU mode it entered is provisional, every read comes here, and a second hash and mask
        leave the trial's or the confirmation's reads of keys outside the guard's sample; the
        confirmation's read is an ``OrderedDict`` read or two, and a sketch lookup or two on
        its miss (caches of 100 to 1,023 entries whose trial found LRU ahead, until the
        sketch first ages).
        """
        if self._trying:
            if self._fill_trial(key):
                return
            if hash(key) & self._guard_mask:
                return  # the trial's read only: not in the guard's sample
        if self._provisional:
            self._confirm_read(key, hits)
            if hash(key) & self._guard_mask:
                return  # the confirmation's read only: not in the guard's sample
        guard_lru = self._guard_lru
        if self._lru_mode:
            found = self._alternative_read(key)
        else:
            found = _lru_read(key, guard_lru, self._guard_size)
            if self._at_top:
                top_lead = self._alternative_read(key) - (hits > 0)
                if top_lead:
                    self._top_lead += top_lead
                    self._top_differed += 1.0
        # Only the first read of a replayed key can differ: the later ones hit in both.
        lead = found - (hits > 0)
        if lead:
            self._lru_lead += lead
            self._guard_differed += 1.0
        self._guard_reads += 1
        if self._guard_reads < self._guard_period:
            return
        self._guard_reads = 0
        mask = self._guard_mask
        if mask and not self._lru_mode:
            # As many sampled keys as this cache holds now: a fixed share of the entries
            # would be off by the sample's luck.
            size = sum(1 for kept in self._slots if not hash(kept) & mask)
            self._guard_size = max(1, size)
            while len(guard_lru) > self._guard_size:
                guard_lru.popitem(last=False)
        if self._warming and self._warm_up():
            return
        if self._at_top and self._top_period():
            return
        if self._lru_lead > _GUARD_SIGMAS * self._guard_differed**0.5:
            self._switch_mode(not self._lru_mode)
            return
        self._lru_lead *= 0.5
        self._guard_differed *= 0.5

    def _switch_mode(self, lru_mode: bool) -> None:
        """Enter LRU mode (the window takes the whole cache), or leave it (back to
        ``_ALT_WINDOW``); the guard's evidence starts afresh either way."""
        self._lru_mode = lru_mode
        self._guard_lru.clear()
        self._restart_alternative()
        self._set_window(self.max_entries * (1.0 if lru_mode else _ALT_WINDOW))

    def _fill_trial(self, key: str) -> bool:
        """Until the cache first fills, a read through plain LRU and W-TinyLFU with the
        cache's initial window, both at ``_TRIAL_SCALE`` of the cache; at the fill, LRU's lead
        by ``_TRIAL_SIGMAS`` enters LRU mode (True: the guard's period starts afresh).

        What the guard cannot reach: the reads between the fill and its verdict. On a
        recency-biased trace the first eviction of a cache at the initial split loses to LRU
        on nearly every read where the two differ, and the guard's sign test, over two periods
        for the warm-up's jump and one more for LRU mode, took 1,250 reads to act
        (recency-biased, 500 entries: 31 of its 34 hits below LRU lost there; acting at the
        first read where the test could, 15 below; started in LRU mode, exactly LRU, but every
        Zipf row lost until the miniature won, up to 2,196 hits). A smaller cache fills first:
        scaled down, the two have been told apart by the time this one evicts, and a verdict
        for LRU then costs no read of the cache at the initial split. The scale's verdict is
        not the cache's (recency-biased at 1,000 and 2,000 entries: LRU at the fill, the
        ghosts' split 0.04 and 0.03 points above LRU by the end), so LRU mode entered here is
        confirmed at the warm-up's end (``_warm_up``). Costs, until the fill only, two
        ``OrderedDict`` reads per read and a sketch lookup or two on a miss of the W-TinyLFU;
        after it, one attribute test per sampled read.
        """
        size, lru = self._trial_size, self._trial_lru
        last_reads = self._last_reads
        last_reads.pop(key, None)
        last_reads[key] = None
        if len(last_reads) > self.max_entries:
            # A key read before the last max_entries others is not in the cache, or is its
            # oldest, where LRU mode evicts first anyway: a cache that never fills (keys
            # deleted as fast as read) kept every key until the warm-up's end.
            last_reads.popitem(last=False)
        lead = _lru_read(key, lru, size) - _miniature_read(
            key,
            self._trial_window,
            self._trial_main,
            size=size,
            window=self._trial_window_size,
            sketch=self.sketch,
        )
        if lead:
            self._trial_lead += lead
            self._trial_differed += 1.0
        if len(self._slots) < self.max_entries and not self._evictions:
            return False  # not full yet (a weight bound fills it by its first eviction)
        self._trying = False
        lru.clear()
        self._trial_window.clear()
        self._trial_main.clear()
        if self._trial_lead <= _TRIAL_SIGMAS * self._trial_differed**0.5:
            self._sample_mask = self._guard_mask
            last_reads.clear()
            return False
        logger.debug("LRU ahead at the fill: %d of %d", self._trial_lead, self._trial_differed)
        self._provisional = True  # every key still comes to the guard (_confirm_read)
        self._switch_mode(True)
        self._order_by_last_read()
        self._guard_reads = 0
        return True

    def _order_by_last_read(self) -> None:
        """At the fill, entering LRU mode: every kept key joins the window in the order of its
        last read, so that the cache evicts as LRU from the first eviction on.

        LRU mode evicts the main area first, probation then protected, each in its own order:
        at the fill that is not LRU's (a key read twice long ago sits in protected behind keys
        read once since), and a recency trace whose LRU mode stays ended a few hits off LRU
        for good (reuse 0.65 to 0.8, mean distance 500 to 900, 1,000 entries: 6 below LRU to
        3 above, the same under each hash salt; now LRU's hits exactly: docs/benchmarks/
        hit-ratio-rounds.md, twenty-first round). Before the first eviction the cache holds every
        key read, so their order is the whole of LRU's. Costs, until the fill only, an
        ``OrderedDict`` pop and insert per read, and at the switch one move per kept key.
        """
        slots, window = self._slots, self._window
        for key in self._last_reads:
            slot = slots.get(key)
            if slot is None:
                continue  # the read in flight, not placed yet
            if slot.segment == _WINDOW:
                window.move_to_end(slot)
            else:
                self._join_window(key, slot)
        self._last_reads.clear()

    def _warm_up(self) -> bool:
        """The end of a period of the guard in the warm-up (until the sketch first ages; from
        ``_TRIAL_ENTRIES`` entries, on its own, see ``_age_early``): True when it settled the
        period.

        LRU mode needs the window at half the cache first, and the ghosts remember a quarter
        of the cache's departures: where keys come back later than that (a recency-biased
        trace with a long reuse distance), refused candidates' ghosts are rarely hit and the
        window took 50,000 reads to reach half, below LRU all the way (reuse 0.65 / mean
        1,200 at 500 entries: window 150 to 300, and 946 hits fewer than LRU before LRU mode;
        214 with the jump). So in the warm-up the guard runs at any window, and when it finds
        LRU ahead of a window under half the cache at the end of two periods in a row, the
        window jumps to half; the ghosts and the guard go on from there.

        Two periods in a row: on a Zipf law LRU may lead for one period after the cache first
        fills, while the sketch is cold (shift halfway, Zipf 0.9, 500 entries: a jump on one
        period's lead cost 0.04 points; on two, no jump). Not LRU mode on LRU's lead over the
        small window: early on LRU also leads on traces where the ghosts' split beats it later,
        once the sketch has learnt the frequent keys, and a miniature at half the cache does not
        beat LRU there to bring it back (recency-biased, 2,000 entries: LRU mode on the
        warm-up's evidence ended 0.05 below LRU, the previous policy 0.03 above;
        docs/benchmarks/hit-ratio.md).

        From the jump on, the guard weighs LRU against the window at half the cache, the
        evidence LRU mode asks for after the warm-up too, and acts on it the same way: LRU ahead
        enters LRU mode (``_guard``), the policy ahead takes the window back where it was (left
        to the ghosts, a window that jumped during a recency phase stayed at 245 to 275 of 500
        entries for 5,000 reads of a Zipf law after it). Until the warm-up was over a jumped
        window waited for LRU mode, below LRU all the while (reuse 0.55 / mean 400 at 500
        entries: 366 hits fewer than LRU, 73 without the wait; reuse 0.65 / mean 1,200: 214 and
        108), and on a Zipf law after a recency phase the guard's evidence, LRU ahead while the
        sketch was cold on the new keys and then the policy ahead by little, left the window at
        149 to 250 of 500 after 5,000 reads under 4 salts of 42. LRU mode now takes those first
        reads, the miniature gives the cache back, and the window is back where it was (16 to
        49) within 5,000 reads under all 42, with 127 to 200 hits more in the 15,000 reads under
        each of salts 0 to 11 (tests/test_policy.py).
        """
        sketch = self.sketch
        if sketch.epoch > sketch.early_resets:  # the warm-up is over (see _age_early)
            if self._provisional:
                # LRU mode from the fill's trial stays only if the miniatures are behind LRU.
                self._provisional = False
                self._sample_mask = self._guard_mask
                window = self._confirmation()
                if window:
                    self._warming = False
                    self._switch_mode(False)
                    self._set_window(window)
                    return True
            self._warming = False
            self._jumped_from = -1.0
            self._set_window(self._window_target)
            return not self._guarding
        if self._lru_mode:
            return False
        bound = _GUARD_SIGMAS * self._guard_differed**0.5
        half = self.max_entries * _ALT_WINDOW
        if self._jumped_from >= 0.0:
            if -self._lru_lead <= bound:
                return False  # the guard's own rule: LRU mode if LRU is ahead of half the cache
            target, self._jumped_from = self._jumped_from, -1.0
        elif self._lru_lead > bound and self._window_target < half:
            if not self._lru_was_ahead:  # once may be the cold sketch's doing
                self._lru_was_ahead = True
                self._lru_lead *= 0.5
                self._guard_differed *= 0.5
                return True
            self._lru_was_ahead = False
            target, self._jumped_from = half, self._window_target
        else:
            self._lru_was_ahead = False
            return False
        self._set_window(target)
        self._lru_lead = self._guard_differed = 0.0
        return True

    def _confirmation(self) -> float:
        """At the warm-up's end, LRU mode from the fill's trial: 0.0 to keep it, else the
        window to leave it for. It stays only if LRU is ahead, by the guard's test, of both
        the guard's miniature at half the cache and a second one at ``_CONFIRM_WINDOW``
        (``_confirm_read``); otherwise the window goes to the split of the one LRU leads
        least, in sigma.

        The trial's verdict is taken at a quarter of the scale, and on traces where the
        ghosts' split beats LRU later that split sits above half the cache (reuse 0.6 to 0.8,
        mean distance 200 to 500, 1,000 entries: windows of 700 to 970 by the end, 20 to 552
        hits above LRU on the policy before this rule), where the miniature at half the cache
        trails LRU: with it alone, LRU mode stayed and those traces ended within a hit of LRU
        (docs/benchmarks/hit-ratio-rounds.md, nineteenth round). The guard's evidence is halved
        each period, and a miniature this close to LRU differs from it on a few reads a period: the
        second one's is counted whole from the read it filled on (halved, it read 1.3 sigma on
        recency-biased at 500 entries, where LRU mode pays, and 0.5 to 1.6 on those traces).
        And it reads every key, at the cache's own size, not the guard's sample: from 512
        entries the guard reads one key in two or four, and on that sample the verdict was the
        hash salt's draw (reuse 0.6 / mean 200 at 1,000 entries: LRU mode kept on three traces
        of three under two salts of six, left on all three under the other four); on every key
        it was left under all six (twentieth round).
        """
        half = -self._lru_lead > _GUARD_SIGMAS * self._guard_differed**0.5
        if not self._lru_mode:  # the guard left it already: the ghosts' window from half
            return 0.0 if half else self.max_entries * _ALT_WINDOW
        confirm = -self._confirm_lead > _GUARD_SIGMAS * self._confirm_differed**0.5
        behind_half = -self._lru_lead / max(1.0, self._guard_differed) ** 0.5
        behind_confirm = -self._confirm_lead / max(1.0, self._confirm_differed) ** 0.5
        self._confirm_window.clear()
        self._confirm_main.clear()
        if half and confirm:
            return 0.0
        share = _CONFIRM_WINDOW if behind_confirm < behind_half else _ALT_WINDOW
        return self.max_entries * share

    def _confirm_read(self, key: str, hits: int) -> None:
        """While LRU mode from the fill's trial is provisional, a read (every key, not the
        guard's sample) through a miniature W-TinyLFU of the cache's size at a window of
        ``_CONFIRM_WINDOW``; its lead over this policy (plain LRU) once it has filled, never
        halved (see ``_confirmation``)."""
        size = self.max_entries
        window = max(1, min(size - 1, round(size * _CONFIRM_WINDOW)))
        recent, main = self._confirm_window, self._confirm_main
        found = _miniature_read(key, recent, main, size=size, window=window, sketch=self.sketch)
        lead = found - (hits > 0)
        if lead and len(recent) + len(main) >= size:
            self._confirm_lead += lead
            self._confirm_differed += 1.0

    def _top_period(self) -> bool:
        """The end of a period of the guard while the window is at the top (a main area of
        ``_TOP_MAIN`` of the cache or less, outside LRU mode, from ``_TOP_ENTRIES`` entries on):
        True when the miniature W-TinyLFU's lead took the window back to half the cache.

        The ghosts can take the window to the top on a burst of keys read again soon (a block
        device's strided streams: CloudPhysics' first half at 490 entries, reads 22,000 to
        23,000), and nothing brought it back: a main area of one slot (or a few) evicts too
        few keys for their ghosts to shrink the window, and the guard weighs LRU against a
        policy that is LRU by then, or nearly, so LRU mode, whose miniature gives the cache
        back, is never entered. That trace then read 24,000 more blocks with the window at 489
        of 490, 168 hits where ARC, whose frequency list kept the blocks read four times or
        more, hit 402 (under other hash salts the window sat at 460 to 489). So at the top the
        guard also replays the miniature of LRU mode (``_alternative_read``) and weighs it
        against this policy by the same sign test; when the miniature leads, the window goes
        to half the cache, where LRU mode leaves it too. LRU ahead still enters LRU mode first
        (``_guard``): weighing only the miniature at the top, two recency traces that reach the
        top before LRU mode lost 46 and 19 hits (docs/benchmarks/hit-ratio-rounds.md, seventh
        round).
        A floor of a tenth of the cache under the main area instead (no top at all) cost a
        recency trace whose best split outside LRU mode is a main area of a few percent
        (eighth round).
        """
        if self._lru_lead > _GUARD_SIGMAS * self._guard_differed**0.5:
            return False  # LRU mode (_guard)
        if self._top_lead > _GUARD_SIGMAS * self._top_differed**0.5:
            self._set_window(self.max_entries * _ALT_WINDOW)  # the miniature starts afresh
            self._lru_lead = self._guard_differed = 0.0
            return True
        self._top_lead *= 0.5
        self._top_differed *= 0.5
        return False

    def _period_end(self) -> None:
        """The end of a period of reads (hits replayed so far and misses): age the sketch at
        once when the period's hit ratio fell well below the recent periods'.

        A popularity shift (a new hot set) leaves the main area full of keys whose counts
        the sketch ages only every ``sample_factor`` reads per entry: the new hot keys lose
        the admission contest to the old ones until then (shift halfway, Zipf 1.0, 2,000
        entries: 0.24 points below ARC; aging once by hand at the shift closed all but 0.02).
        Caffeine restarts its hill climber on a large change of the hit rate; here a sharp
        drop ages the counters. Only a drop by a share (``_SHIFT_DROP``) and by more than
        chance (``_SHIFT_SIGMAS``): a flat Zipf law at 100 entries hits a few reads in a
        hundred, and its periods' ratios swing by half. And only when refused candidates come
        back (``_SHIFT_COMEBACKS``) while the window is small (``_SHIFT_WINDOW``): OLTP's
        phases drop as sharply; aging on every sharp drop cost it 0.01 to 0.04 points at
        1,000, 2,000 and 5,000 entries (``PYTHONHASHSEED=0``), and with comebacks asked for,
        still 0.03 points on average at 1,000 entries under salts 0 to 3, on one drop whose
        window held 392 of the 1,000 entries. In LRU mode (no main area, no comebacks to
        hear) a sharp drop restarts the guard's miniature instead (``_restart_alternative``).

        Costs a decrement and a test per miss and a sum per replay of buffered hits (adaptive
        caches only); a period's end a few float operations.
        """
        reads = self._period_reads - self._period_left
        hits, comebacks = self._period_hits, self._period_comebacks
        self._period_left = self._period_reads
        self._period_hits = self._period_comebacks = 0
        ratio = hits / reads
        recent = self._recent_ratio
        if recent < 0.0:
            self._recent_ratio = ratio
            return
        expected = recent * reads
        sharp = hits < _SHIFT_DROP * expected and expected - hits > _SHIFT_SIGMAS * expected**0.5
        if sharp and self._lru_mode:
            self._restart_alternative()
            self._recent_ratio = ratio
            logger.debug("hit ratio %.3f after %.3f: the miniature restarts", ratio, recent)
            return
        if (
            sharp
            and comebacks >= _SHIFT_COMEBACKS * (reads - hits)
            and self._window_max < _SHIFT_WINDOW * self.max_entries
        ):
            self._age_early()
            self._recent_ratio = ratio
            logger.debug("hit ratio %.3f after %.3f: the sketch ages", ratio, recent)
            return
        self._recent_ratio = 0.5 * (recent + ratio)

    def _restart_alternative(self) -> None:
        """The miniature W-TinyLFU of ``_alternative_read`` starts afresh, its window, main
        area and the guard's evidence cleared: at a switch of mode (``_switch_mode``), and in
        LRU mode after a sharp drop of the hit ratio (``_period_end``), so that a change inside
        LRU mode is judged by a miniature that does not hold the last phase's keys (recency,
        then a Zipf law over new keys, 1,000 entries: the miniature kept the recency phase's
        keys in its main area, and LRU mode held on through the Zipf law)."""
        self._alt_window.clear()
        self._alt_main.clear()
        self._lru_lead = self._guard_differed = 0.0

    def _alternative_read(self, key: str) -> bool:
        """In LRU mode, the guard's sampled read through a miniature W-TinyLFU of the
        sample's share (whether it hit): a window of ``_ALT_WINDOW`` of it (LRU) and a main
        area (LRU) that a candidate enters only when the sketch counts it more often than the
        main area's oldest key. ``_guard`` weighs it against this policy, now plain LRU
        (``_lru_lead`` is then the alternative's lead)."""
        size = self._guard_size
        window_size = max(1, int(size * _ALT_WINDOW))
        return _miniature_read(
            key, self._alt_window, self._alt_main, size=size, window=window_size, sketch=self.sketch
        )


def _lru_read(key: str, lru: OrderedDict[str, None], size: int) -> bool:
    """A read of ``key`` through a simulated plain LRU of ``size`` sampled entries (whether it
    hit): the guard's and the fill's trial's."""
    if key in lru:
        lru.move_to_end(key)
        return True
    lru[key] = None
    if len(lru) > size:
        lru.popitem(last=False)
    return False


def _miniature_read(
    key: str,
    recent: OrderedDict[str, None],
    main: OrderedDict[str, None],
    *,
    size: int,
    window: int,
    sketch: FrequencySketch,
) -> bool:
    """A read of ``key`` through a miniature W-TinyLFU of ``size`` sampled entries (whether it
    hit): a window of ``window`` of them (``recent``, LRU) and a main area (LRU) that a
    candidate enters only when the sketch counts it more often than the main area's oldest key.
    A window of the whole size leaves no main area: the candidate leaves (the guard's sample
    can be one key when the cache holds a few: a victim asked of an empty main area raised
    ``StopIteration`` from the tier's read).
    """
    if key in recent:
        recent.move_to_end(key)
        return True
    if key in main:
        main.move_to_end(key)
        return True
    recent[key] = None
    if len(recent) > window:
        candidate = recent.popitem(last=False)[0]
        if len(main) < size - window:
            main[candidate] = None
        elif main:
            victim = next(iter(main))
            frequency = sketch.frequency
            if frequency(candidate) > frequency(victim):
                del main[victim]
                main[candidate] = None
    return False


def _power_of_two_at_least(value: int) -> int:
    return 1 << max(0, value - 1).bit_length()
