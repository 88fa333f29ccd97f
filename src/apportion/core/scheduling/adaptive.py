"""The ``adaptive`` strategy: run times learned from finished jobs, corrected
while jobs run, and response-ratio order with an aging bound.

Design, after Tsafrir, Etsion & Feitelson, "Backfilling using
system-generated predictions rather than user runtime estimates" (TPDS
2007), and Mu'alem & Feitelson (TPDS 2001):

* **Learn at several levels, each used only with enough evidence.** A
  finished job's run time is recorded under user+name, user, name, queue,
  size class (the primary request rounded up to a power of two) and
  globally. A level predicts once a key has ``min_runs`` runs: the mean of
  the last two runs for the per-user levels (Tsafrir's predictor: a user's
  recent runs beat mining the whole history), the median of the last 32 for
  the broad ones, where one run says little.
* **Measure every guess.** Before a finished job is learned from, each
  level's prediction for it and its user's estimate are scored: the mean
  log error ``|ln(predicted / actual)|`` per level and per user. A job is
  predicted from the level with the lowest error among those with
  evidence (the most specific on a tie), so a level that misleads (users
  whose runs alternate) gives way to a broader one that does not.
* **Weigh it against the user's estimate.** With both, the plan is their
  weighted geometric mean (weights ``1 / error**2``), never above the
  user's estimate (the kill limit: the job cannot run longer).
* **Do not plan on a poor guess.** A level whose measured error is above
  ``max_error`` (8x off on average) does not override the job's own
  estimate, for planning or for ordering. A job with no estimate at all is
  still planned on the learned value (planning it on a high quantile
  instead stops nearly all backfilling: measured in ``docs/scheduling.md``)
  but is not reordered by it: it keeps its place in submit order.
* **Correct underestimates during the run.** A running job that passes its
  predicted end is next expected at the following rung of a ladder of
  Tsafrir's gradual increments (+1 min, +5 min, +15 min, ... +100 h) hung
  from its first estimate, never past its kill limit while that is ahead.
  Without it such a job is expected to end "now" at every cycle, so the
  head job's reservation moves with the clock and every backfill decision
  is made against a reservation that will not hold.
* **Order** (``AdaptiveOrder``): highest response ratio next,
  ``(wait + predicted) / predicted``, so short jobs go first (mean bounded
  slowdown is dominated by short jobs that wait) while a long job's ratio
  grows as it waits; and an aging bound: a job that has waited
  ``aging_bound_s`` goes ahead of every job that has not, in submit order,
  so a job past the bound is never again overtaken in queue order, only by
  backfilling that its reservation allows. Shortest-predicted-first with
  the same bound (``by="sjf"``) was measured against it:
  ``docs/scheduling.md`` says why response ratio stays.

Pure: the learner is state owned by its caller (the jobs service or the
simulator), fed with finished jobs and asked questions; no clock, no I/O.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from apportion.core import fastreplay
from apportion.core.scheduling.adaptive_order import AdaptiveOrder as AdaptiveOrder
from apportion.core.scheduling.adaptive_parts import (
    _EXACT,
    _FLOOR_S,
    _SLACK,
    _TAME,
    _UNKNOWN,
    _Error,
    _Facts,
    _facts,
    _keys,
    _ladder,
    _Levels,
    _log_error,
    _moved,
    _Window,
    learn_keys,
)
from apportion.core.scheduling.adaptive_parts import CORRECTION_STEPS as CORRECTION_STEPS
from apportion.core.scheduling.adaptive_parts import LEVELS as LEVELS
from apportion.core.scheduling.adaptive_parts import LearnSettings as LearnSettings
from apportion.core.scheduling.adaptive_parts import size_class as size_class
from apportion.core.scheduling.jobs import Job, RunningJob

if TYPE_CHECKING:
    from apportion.core.scheduling.state import ClusterState

_learn_keys = fastreplay.learn_keys
"""``learn_keys`` compiled (``core/_replay_c.pyx``), or None."""
_answer_of = fastreplay.answer_of
"""``RuntimeHistory._answer`` compiled, or None."""
_floors_of = fastreplay.floors_of
"""``RuntimeHistory.floors``'s loop (and ``_floor``) compiled, or None."""
_levels_of = fastreplay.levels_of
"""``_levels_py`` compiled, or None."""


def _levels_py(history: RuntimeHistory, levels: tuple[str, ...]
               ) -> tuple[tuple[str, ...], list[str], dict[str, float]]:
    """``RuntimeHistory._levels``'s pass over ``levels``: their order
    (lowest mean error first), the poor ones and each scored one's weight."""
    errors = history.errors
    s = history.settings
    means: dict[str, float] = {}
    poor: list[str] = []
    weight: dict[str, float] = {}
    for level in levels:
        err = errors.get(level)
        if err is None:
            means[level] = math.inf
            continue
        mean = means[level] = err.mean
        weight[level] = 1.0 / max(mean, _EXACT) ** 2
        if err.count >= s.min_runs[level] and mean > s.max_error:
            poor.append(level)
    # Stable: levels with equal errors stay most specific first.
    return tuple(sorted(levels, key=means.__getitem__)), poor, weight


@dataclass(slots=True)
class RuntimeHistory:
    """Run times of finished jobs and how good each kind of guess has been.

    ``record`` a finished job; ``predict`` is the learned value alone,
    ``estimate`` what the ``adaptive`` strategy plans with, ``extend`` the
    new estimate of a running job that outran its own (see the module)."""

    settings: LearnSettings = field(default_factory=LearnSettings)
    runs: dict[tuple[str, object], deque[float]] = field(default_factory=dict)
    typical: dict[tuple[str, object], float] = field(default_factory=dict)
    """Per key with enough runs, the value it predicts (kept up to date as
    runs come in: a cycle asks for every pending job's estimate)."""
    errors: dict[str, _Error] = field(default_factory=dict)
    """Mean log error per level, and per user (``"user:<name>"``, ``"user:"``
    for all) of the users' own estimates."""
    corrections: dict[str, tuple[float, float]] = field(default_factory=dict)
    """Job id -> (start, the estimate it started with) of jobs corrected."""
    key_cache: dict[str, tuple[list[tuple[str, object]], int]] = field(default_factory=dict)
    """Job id -> its keys (most specific first) and the number of its
    signature: jobs with the same keys and estimate get the same answers."""
    signatures: dict[tuple[object, ...], int] = field(default_factory=dict)
    answers: dict[int, tuple[float | None, float | None]] = field(default_factory=dict)
    """Signature -> (estimate, rank), until the next ``record``: a cycle asks
    for every pending job, and a long queue repeats a few users and sizes."""
    sig_facts: list[_Facts] = field(default_factory=list)
    """Per signature number, what its answer is computed from."""
    sig_best: list[tuple[int, tuple[str, object] | None, str]] = field(default_factory=list)
    """Per signature number, (``shape``, the key its learned value is read
    from or None, that key's level) as of the last answer."""
    levels_now: _Levels | None = None
    """The levels' standing until the next ``record`` (each answer after a
    ``record`` reads it: one table per record, not one per answer)."""
    shape: int = 0
    """Bumped when the level a job is predicted from may change: a key
    gains a typical value (none is ever lost) or the levels' order moves."""
    levels_now_order: tuple[str, ...] = ()
    ordered_runs: dict[tuple[str, object], list[float]] = field(default_factory=dict)
    """The runs of each key kept deeper than two, sorted: their median is
    asked at every ``record``, and sorting the window each time cost more."""
    windows: dict[tuple[str, object], _Window] = field(default_factory=dict)
    """Per key, its ``runs`` and ``ordered_runs`` and the settings they are
    read with, found in one lookup (``record`` visits six keys a job)."""
    user_weights: dict[str, float] = field(default_factory=dict)
    """Per user error name with an error of its own, the weight of that
    user's estimates, until a job of theirs is scored (``record`` drops it):
    a user's error moves only with their own jobs, so unlike the levels'
    weights it outlives most records."""
    floor_cache: dict[int, float] = field(default_factory=dict)
    """Signature -> ``_floor``. A floor is read from the user's estimate and
    one typical value: unlike an answer, it outlives a ``record`` that
    changes neither that value nor the levels' shape or poor ones."""
    floor_readers: dict[tuple[str, object], list[int]] = field(default_factory=dict)
    """Key -> the signatures whose floor read its typical value."""
    floor_levels: dict[str, set[int]] = field(default_factory=dict)
    """Level -> the signatures whose floor a key of that level decided
    (``_drop_levels``; a set: a floor is taken again after each drop)."""
    floor_basis: tuple[int, tuple[str, ...], frozenset[str], bool] = (-1, (), frozenset(), False)
    """(``keys_gained``, the levels' order, the poor levels, ``wild``) the
    floors were taken under."""
    keys_gained: int = 0
    """Bumped when a key gains a typical value (``shape`` is bumped too)."""
    wild: bool = False
    """A run time or estimate learned from was not finite (or beyond 1e300):
    the errors may be too, and ``floors`` gives exact ranks only."""
    learned: int = 0
    """Jobs recorded: an answer (``rank``) stands while this is unchanged."""
    floors_dropped: list[int] = field(default_factory=list)
    """Signatures whose floor a ``record`` dropped since ``stale_floors``."""
    floors_reset: bool = True
    """Every floor may have changed since ``stale_floors`` (a new basis,
    signatures numbered afresh, or too many drops to list)."""
    numbering: int = 0
    """Bumped when signatures are numbered afresh (the caches' sweep)."""

    # -- learning --------------------------------------------------------

    def record(self, job: Job, run_time: float) -> None:
        """Learn from a finished job (scoring the guesses it would have had first)."""
        cached = self.key_cache.pop(job.id, None)
        keys = cached[0] if cached is not None else _keys(job)
        self.answers.clear()
        self.levels_now = None
        self.learned += 1
        est = job.runtime_estimate
        if not (abs(run_time) < _TAME and (est is None or abs(est) < _TAME)):
            self.wild = True
        (_learn_keys or learn_keys)(self, keys, run_time)
        smoothing = self.settings.smoothing
        if est is not None:
            miss = _log_error(est, run_time)
            # The name of the user's error, as the job's signature keeps it.
            user = (self.sig_facts[cached[1]].user if cached is not None
                    else f"user:{job.user or ''}")
            self._error(user).add(miss, smoothing)
            self.user_weights.pop(user, None)
            if job.user:
                self._error("user:").add(miss, smoothing)
                self.user_weights.pop("user:", None)
        self.corrections.pop(job.id, None)

    def _window(self, key: tuple[str, object]) -> _Window:
        """A new key's window of recent runs (also kept in ``runs`` and,
        when deeper than two, ``ordered_runs``)."""
        s = self.settings
        kept: deque[float] = deque(maxlen=s.depth[key[0]])
        self.runs[key] = kept
        ordered = None
        if kept.maxlen is not None and kept.maxlen > 2:
            ordered = self.ordered_runs[key] = []
        window = self.windows[key] = _Window(kept, ordered, s.min_runs[key[0]])
        return window

    def _error(self, name: str) -> _Error:
        found = self.errors.get(name)
        if found is None:
            found = self.errors[name] = _Error()
        return found

    # -- asking ----------------------------------------------------------

    def predict(self, job: Job) -> float | None:
        """The learned run time alone, from the level with enough runs that
        has been the most accurate (the most specific one on a tie)."""
        found = self._learned(job)
        return None if found is None else found[1]

    def _of(self, job: Job) -> tuple[list[tuple[str, object]], int]:
        found = self.key_cache.get(job.id)
        if found is None:
            if len(self.key_cache) > 16 * _SLACK:
                self._sweep()
            found = self._new(job)
        return found

    def _sweep(self) -> None:
        """Forget every job's keys and number the signatures afresh (jobs
        cancelled before they ended are never recorded)."""
        self.key_cache.clear()
        self.signatures.clear()
        self.answers.clear()
        self.floor_cache.clear()
        self.floor_readers.clear()
        self.floor_levels.clear()
        self.sig_facts.clear()
        self.sig_best.clear()
        self.floors_reset = True
        self.numbering += 1

    def _new(self, job: Job) -> tuple[list[tuple[str, object]], int]:
        """``job``'s keys and signature number, kept in ``key_cache``."""
        keys = _keys(job)
        sig = (*keys, job.runtime_estimate)
        number = self.signatures.setdefault(sig, len(self.signatures))
        if number == len(self.sig_facts):
            self.sig_facts.append(_facts(job, keys))
            self.sig_best.append((-1, None, ""))
        found = self.key_cache[job.id] = (keys, number)
        return found

    def signature(self, job: Job) -> tuple[object, ...]:
        """What ``job``'s answers are a function of (its keys and its own
        estimate): jobs of one signature are estimated and ranked alike."""
        return (*self._of(job)[0], job.runtime_estimate)

    def _learned(self, job: Job) -> tuple[str, float] | None:
        keys = self._of(job)[0]
        typical = self.typical
        errors = self.errors
        best: tuple[str, float] | None = None
        best_err = math.inf
        for key in keys:
            value = typical.get(key)
            if value is None:
                continue
            err = errors.get(key[0])
            mean = err.mean if err is not None else math.inf
            if best is None or mean < best_err:
                best, best_err = (key[0], value), mean
        return best

    def estimate(self, job: Job) -> float | None:
        """The run time to plan ``job`` with (backfill, reservations): the
        learned one and the user's weighed by how accurate each has been;
        the user's alone where the learned one has been too poor."""
        # ``_answers`` written out: a backfill pass asks for every waiting
        # job at every event, and the call showed.
        of = self.key_cache.get(job.id)
        found = self.answers.get((of if of is not None else self._of(job))[1])
        return (found if found is not None else self._answers(job))[0]

    def rank(self, job: Job) -> float | None:
        """The run time to order ``job`` by: as ``estimate``, except that a
        learned value too poor to plan on does not reorder jobs either
        (None: the job keeps its place in submit order)."""
        return self._answers(job)[1]

    def ranks(self, jobs: Sequence[Job]) -> list[float | None]:
        """``rank`` of each of ``jobs``: the queue's order asks for all of
        them at every event, and one loop costs less than a call each."""
        key_cache = self.key_cache
        answers = self.answers
        out: list[float | None] = []
        for job in jobs:
            of = key_cache.get(job.id)
            number = (of if of is not None else self._of(job))[1]
            found = answers.get(number) or self.answer(number)
            out.append(found[1])
        return out

    def floors(self, jobs: Sequence[Job]) -> tuple[list[float | None], list[bool]]:
        """``ranks`` of ``jobs``, each with whether it is exact: where a rank
        not asked since the last ``record`` would weigh a learned value
        against the user's estimate, a floor of it instead (the lesser of
        the two, a hair under: their weighted geometric mean is not below
        it). Every ``record`` moves the levels' weights, so the hrrn queue
        would rank each signature again after each; with floors it ranks a
        head exactly only where its floor could put it first
        (``adaptive_queue``)."""
        table = self._floor_table()
        if _floors_of is not None:
            return _floors_of(self, jobs, table)
        key_cache, answers, cache = self.key_cache, self.answers, self.floor_cache
        out: list[float | None] = []
        exact: list[bool] = []
        for job in jobs:
            of = key_cache.get(job.id)
            number = (of if of is not None else self._of(job))[1]
            found = answers.get(number)
            if found is None:
                floor = cache.get(number)
                if floor is None:
                    floor = cache[number] = self._floor(number, table)
                if floor >= 0.0:
                    out.append(floor)
                    exact.append(False)
                    continue
                found = self.answer(number)
            out.append(found[1])
            exact.append(True)
        return out, exact

    def number(self, job: Job) -> int:
        """The number of ``job``'s signature, as ``stale_floors`` names it
        (numbers are given afresh when it answers None)."""
        return self._of(job)[1]

    def numbers(self, jobs: Iterable[Job]) -> list[int]:
        """``number`` of each of ``jobs``, all in one numbering: the caches
        are not swept partway (``number`` may sweep before any job it has
        not seen, which would leave the earlier numbers meaningless); the
        next ``number`` of a new job sweeps them where they are due."""
        key_cache, new = self.key_cache, self._new
        out: list[int] = []
        for job in jobs:
            found = key_cache.get(job.id)
            out.append((found if found is not None else new(job))[1])
        return out

    def stale_floors(self) -> list[int] | None:
        """The signatures whose floor (``floors``) may have changed since the
        last call, or None where every floor may have: a queue that keeps
        floors across events asks again only for these."""
        self._floor_table()
        dropped, self.floors_dropped = self.floors_dropped, []
        if self.floors_reset:
            self.floors_reset = False
            return None
        return dropped

    def _floor_table(self) -> _Levels:
        """The levels' table, with the floors dropped where their basis
        moved (``shape``, the poor levels, ``wild``)."""
        table = self.levels_now or self._levels()  # it may move ``shape``
        basis = (self.keys_gained, table.order, table.poor, self.wild)
        old = self.floor_basis
        if basis != old:
            self.floor_basis = basis
            if basis[0] != old[0] or basis[3] != old[3]:
                self.floor_cache.clear()
                self.floor_readers.clear()
                self.floor_levels.clear()
                self.floors_reset = True
            else:
                self._drop_levels(_moved(old[1], basis[1]) | (old[2] ^ basis[2]))
        if len(self.floors_dropped) > _SLACK:  # nobody asks ``stale_floors``
            self.floors_dropped.clear()
            self.floors_reset = True
        return table

    def _drop_levels(self, levels: frozenset[str] | set[str]) -> None:
        """Drop the floors read from a key of one of ``levels``: where only
        the levels' order or the poor ones moved (no key gained a value, no
        run was wild), a floor whose key's level kept its place and its
        standing is the same floor (``_moved``). Every floor taken where a
        level decides is listed under that level in ``floor_levels``
        (``_floor``). On the KTH adaptive+none replay 2,768 of 3,085 such
        moves dropped every floor, ~24 a time, each asked again."""
        found, cache = self.floor_levels, self.floor_cache
        for level in levels:
            numbers = found.pop(level, None)
            if numbers:
                for number in numbers:
                    cache.pop(number, None)
                self.floors_dropped += numbers

    def _floor(self, number: int, table: _Levels) -> float:
        """A floor of ``_answer(number)``'s rank, or -1.0 where that rank is
        cheap, may be None, or may not lie above the lesser value."""
        facts = self.sig_facts[number]
        given = facts.given
        best = self.sig_best[number]
        if best[0] != self.shape:
            best = self.sig_best[number] = (self.shape, *self._best(facts.keys, table.order))
        key = best[1]
        if key is None or given is None or self.wild or not 0.0 <= given < _TAME:
            return -1.0
        # Listed before the poor test: a level that stops being poor drops
        # the floors it refused (``_drop_levels``).
        self.floor_readers.setdefault(key, []).append(number)
        levels = self.floor_levels
        numbers = levels.get(best[2])
        if numbers is None:
            numbers = levels[best[2]] = set()
        numbers.add(number)
        learned = self.typical[key]
        if best[2] in table.poor or not 0.0 <= learned < _TAME:
            return -1.0
        least = given if given < learned else learned
        # The mean's float error is about 1e-13 of ``least + 1`` at most.
        return least - 1e-9 * (least + 1.0)

    def _answers(self, job: Job) -> tuple[float | None, float | None]:
        # Asked for every pending job in every cycle: the common path is two
        # dictionary reads.
        of = self.key_cache.get(job.id)
        number = (of if of is not None else self._of(job))[1]
        return self.answers.get(number) or self.answer(number)

    def answer(self, number: int) -> tuple[float | None, float | None]:
        """(estimate, rank) of the jobs of signature ``number``, kept in
        ``answers`` until the next ``record``. Callers that ask for many
        jobs read ``answers.get(number) or answer(number)``: the pair is
        never empty, and the read alone is the common path."""
        found = self.answers.get(number)
        if found is None:
            found = self.answers[number] = (_answer_of or RuntimeHistory._answer)(self, number)
        return found

    def _answer(self, number: int) -> tuple[float | None, float | None]:
        """(estimate, rank) of the jobs of signature ``number``: the value of
        the level ``_learned`` picks, weighed against the user's estimate
        (``tests/core/test_sched_adaptive_order.py`` holds it to a plain
        restatement of the rules on generated histories)."""
        facts = self.sig_facts[number]
        given = facts.given
        table = self.levels_now or self._levels()
        best = self.sig_best[number]
        if best[0] != self.shape:
            best = self.sig_best[number] = (self.shape, *self._best(facts.keys, table.order))
        key = best[1]
        if key is None:
            return given, given
        learned = self.typical[key]
        level = best[2]
        if given is None:
            return learned, None if level in table.poor else learned
        if level in table.poor:
            return given, given
        w_learned = table.weight.get(level)
        w_given = self.user_weights.get(facts.user)
        if w_given is None:
            w_given = table.users.get(facts.user, _UNKNOWN)
            if w_given is _UNKNOWN:
                w_given = table.users[facts.user] = self._user_weight(facts.user)
        if w_given is None or w_learned is None:
            # min(learned, given), written out (as the clamp below).
            least = given if given < learned else learned
            return least, least
        log_given = facts.log_given
        if log_given is None:
            log_given = math.log(given + _FLOOR_S)
        mixed = math.exp((w_learned * math.log(learned + _FLOOR_S) + w_given * log_given)
                         / (w_learned + w_given)) - _FLOOR_S
        if given < mixed:  # max(0.0, min(mixed, given))
            mixed = given
        if not mixed > 0.0:
            mixed = 0.0
        return mixed, mixed

    def _best(self, keys: Mapping[str, tuple[str, object]], order: tuple[str, ...]
              ) -> tuple[tuple[str, object] | None, str]:
        """The key a job of ``keys`` is predicted from and its level: the
        first level in ``order`` where it has a typical value."""
        typical = self.typical
        for level in order:
            key = keys.get(level)
            if key is not None and key in typical:
                return key, level
        return None, ""

    def _user_weight(self, user: str) -> float | None:
        """The weight of the estimates of ``user`` (``"user:<name>"``), from
        their error, or from all users' where theirs was never scored."""
        own = self.errors.get(user)
        if own is not None:
            weight = self.user_weights[user] = 1.0 / max(own.mean, _EXACT) ** 2
            return weight
        found = self.errors.get("user:")
        return None if found is None else 1.0 / max(found.mean, _EXACT) ** 2

    def _levels(self) -> _Levels:
        order, poor, weight = (_levels_of or _levels_py)(self, LEVELS)
        if self.levels_now_order != order:
            self.levels_now_order = order
            self.shape += 1
        table = self.levels_now = _Levels(order, frozenset(poor), weight)
        return table

    # -- running jobs ----------------------------------------------------

    def extend(self, rj: RunningJob, now: float) -> float:
        """A new estimate for ``rj``, which is past its own at ``now``: the
        first end after ``now`` on the ladder of Tsafrir's increments above
        the estimate it started with (planned + 1 min, + 5 min more, ...),
        but not past its kill limit (the user's estimate) while that is
        still ahead. The ladder hangs from the first estimate, so asking
        again (as a server that rebuilds its state every cycle does) gives
        the same answer."""
        return self.extend_run(rj.job, rj.start, rj.estimate, now)

    def extend_run(self, job: Job, start: float, estimate: float | None, now: float) -> float:
        """``extend`` for ``job`` started at ``start`` with ``estimate``
        (the counted pool keeps no ``RunningJob``)."""
        first = self.corrections.get(job.id)
        if first is None or first[0] != start:  # a new run after a preemption
            first = self.corrections[job.id] = (start, estimate or 0.0)
        elapsed = now - start
        end = first[1]
        for step in _ladder():
            end += step
            if end > elapsed:
                break
        limit = job.runtime_estimate
        if limit is not None and limit > elapsed:
            end = min(end, limit)
        return end

    def correct(self, state: ClusterState, now: float) -> int:
        """Raise the estimate of every running job past it at ``now``;
        returns how many were raised."""
        ends = state.ends
        cut = int(ends.bisect_left((math.nextafter(now, math.inf),)))
        if not cut:
            return 0
        overdue = [job_id for _, job_id in ends.islice(0, cut)]
        running = state.running
        for job_id in overdue:
            state.reestimate(job_id, self.extend(running[job_id], now))
        if len(self.corrections) > 2 * len(running) + _SLACK:
            # Jobs that were cancelled or preempted never finish here.
            self.corrections = {k: v for k, v in self.corrections.items() if k in running}
        return len(overdue)
