"""Diffusion statistics, carried from the engine core to the front end.

The scheduler observes every denoising step and every finished request in a
:class:`DiffusionStatsBuilder`; once per scheduler step it flushes them into
the only statistics channel V1 has from the engine core to the stat loggers of
the front end: ``SchedulerStats.spec_decoding_stats``, a vLLM
``SpecDecodingStats`` (the canvas already rides the speculative path).

The totals keep vLLM's own diffusion meaning of that dataclass (its in-tree
diffusion path maps them the same way), so vLLM's stock stat loggers still
read sensible totals:

==================== ==================================================
``num_spec_tokens``  the draft budget (``max_model_len`` for our models)
``num_drafts``       denoising steps (a CFG pair's step counts once)
``num_draft_tokens`` canvas positions forwarded
``num_accepted_tokens`` tokens committed
==================== ==================================================

``num_accepted_tokens_per_pos``, which vLLM sizes by the draft budget, carries
the breakdown by ``(task, mode)`` as a small integer encoding, zero padded to
``num_spec_tokens`` entries (``num_draft_tokens_per_pos`` is all zeros)::

    MAGIC, VERSION, num_groups, num_entries,
    num_groups x (task index, mode index, steps, canvas positions, committed),
    num_entries x (group index, histogram, value, count)

Task and mode indices point into :data:`TASKS` and :data:`MODES` (append-only
tuples). ``histogram`` is :data:`COMMITS_PER_STEP` (``value`` = tokens
committed in one step, ``count`` = number of such steps) or
:data:`STEPS_PER_REQUEST` (``value`` = denoising steps of a finished request,
``count`` = number of such requests). Everything is a non-negative ``int``, so
the stats survive vLLM's msgpack transport and stay harmless to a stock
``SpecDecodingProm``/``SpecDecodingLogging`` that would read them as counts.
:func:`decode` recognises the encoding by its magic number and returns ``None``
for anything else (stock speculative-decoding stats).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from vllm.logger import init_logger
from vllm.v1.spec_decode.metrics import SpecDecodingStats

from dynin_vllm.diffusion.params import MODES
from dynin_vllm.diffusion.params import TASKS as PARAM_TASKS

__all__ = [
    "COMMITS_PER_STEP",
    "MAGIC",
    "MODES",
    "STEPS_PER_REQUEST",
    "TASKS",
    "VERSION",
    "DiffusionStats",
    "DiffusionStatsBuilder",
    "decode",
    "encode",
]

# A child of vLLM's logger, so that warnings come out in vLLM's format.
logger = init_logger("vllm." + __name__)

#: Generation tasks, by encoded index. Append only: the index is the encoding.
TASKS: tuple[str, ...] = PARAM_TASKS

#: First entry of an encoded ``num_accepted_tokens_per_pos`` ("DYNS"): a stock
#: per-position count would need that many drafts in one step.
MAGIC = 0x44594E53
#: Version of the layout below :data:`MAGIC`.
VERSION = 1

#: Histogram ids in the encoding.
COMMITS_PER_STEP = 0
STEPS_PER_REQUEST = 1

_HEADER = 4
_GROUP = 5
_ENTRY = 4

Key = tuple[str, str]


def _hist_total(hists: dict[Key, Counter[int]]) -> int:
    return sum(sum(h.values()) for h in hists.values())


@dataclass
class DiffusionStats:
    """Diffusion statistics of one or more scheduler steps, by ``(task, mode)``."""

    #: Denoising steps: forwards of a request's canvas (a CFG pair counts once).
    steps: Counter[Key] = field(default_factory=Counter)
    #: Canvas tokens forwarded.
    canvas_positions: Counter[Key] = field(default_factory=Counter)
    #: Tokens committed (unmasked).
    committed: Counter[Key] = field(default_factory=Counter)
    #: Histogram: tokens committed in one step -> number of such steps.
    commits_per_step: dict[Key, Counter[int]] = field(default_factory=dict)
    #: Histogram of finished requests: denoising steps -> number of requests.
    steps_per_request: dict[Key, Counter[int]] = field(default_factory=dict)

    def merge(self, other: DiffusionStats) -> None:
        """Add ``other`` into this one."""
        self.steps.update(other.steps)
        self.canvas_positions.update(other.canvas_positions)
        self.committed.update(other.committed)
        for mine, theirs in (
            (self.commits_per_step, other.commits_per_step),
            (self.steps_per_request, other.steps_per_request),
        ):
            for key, hist in theirs.items():
                mine.setdefault(key, Counter()).update(hist)

    def keys(self) -> list[Key]:
        """Every ``(task, mode)`` seen, sorted."""
        seen = set(self.steps) | set(self.canvas_positions) | set(self.committed)
        seen |= set(self.commits_per_step) | set(self.steps_per_request)
        return sorted(seen)

    @property
    def total_steps(self) -> int:
        return sum(self.steps.values())

    @property
    def total_canvas_positions(self) -> int:
        return sum(self.canvas_positions.values())

    @property
    def total_committed(self) -> int:
        return sum(self.committed.values())

    @property
    def total_finished(self) -> int:
        """Finished requests counted in :attr:`steps_per_request`."""
        return _hist_total(self.steps_per_request)

    def is_empty(self) -> bool:
        return not self.keys()


def _key(task: str, mode: str) -> Key:
    if task not in TASKS:
        raise ValueError(f"unknown diffusion task {task!r}; known: {list(TASKS)}")
    if mode not in MODES:
        raise ValueError(f"unknown diffusion mode {mode!r}; known: {list(MODES)}")
    return (task, mode)


def _count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value


class DiffusionStatsBuilder:
    """Engine-core side: collects steps and finished requests between flushes."""

    def __init__(self) -> None:
        self._stats = DiffusionStats()

    def observe_step(
        self, task: str, mode: str, committed: int, canvas_len: int
    ) -> None:
        """One denoising step of one request (a CFG pair: once).

        ``committed`` tokens were unmasked by it; ``canvas_len`` canvas tokens
        were forwarded.
        """
        key = _key(task, mode)
        committed = _count("committed", committed)
        canvas_len = _count("canvas_len", canvas_len)
        stats = self._stats
        stats.steps[key] += 1
        stats.canvas_positions[key] += canvas_len
        stats.committed[key] += committed
        stats.commits_per_step.setdefault(key, Counter())[committed] += 1

    def observe_finished(self, task: str, mode: str, num_steps: int) -> None:
        """A request finished after ``num_steps`` denoising steps."""
        key = _key(task, mode)
        num_steps = _count("num_steps", num_steps)
        self._stats.steps_per_request.setdefault(key, Counter())[num_steps] += 1

    def flush(self, num_spec_tokens: int) -> SpecDecodingStats | None:
        """Everything observed since the last flush, encoded; ``None`` if nothing.

        ``num_spec_tokens`` is the draft budget (vLLM's
        ``speculative_config.num_speculative_tokens``), the length of the
        per-position lists.
        """
        if self._stats.is_empty():
            return None
        stats, self._stats = self._stats, DiffusionStats()
        return encode(stats, num_spec_tokens)


def encode(stats: DiffusionStats, num_spec_tokens: int) -> SpecDecodingStats:
    """``stats`` as a ``SpecDecodingStats`` (see the module docstring).

    When the breakdown needs more than ``num_spec_tokens`` entries, the totals
    are kept and histogram entries are dropped (then whole groups, when even
    those do not fit), with a warning.
    """
    keys = stats.keys()
    groups: list[int] = []
    for key in keys:
        task, mode = key
        groups += [
            TASKS.index(task),
            MODES.index(mode),
            stats.steps[key],
            stats.canvas_positions[key],
            stats.committed[key],
        ]
    # Finished requests first: they are few and each one summarises a request.
    entries: list[int] = []
    for hist_id, hists in (
        (STEPS_PER_REQUEST, stats.steps_per_request),
        (COMMITS_PER_STEP, stats.commits_per_step),
    ):
        for group, key in enumerate(keys):
            for value, count in sorted(hists.get(key, Counter()).items()):
                if count:
                    entries += [group, hist_id, value, count]

    num_groups = len(keys)
    room = num_spec_tokens - _HEADER - len(groups)
    if room < 0:
        groups, num_groups, room = [], 0, num_spec_tokens - _HEADER
    if len(entries) > room:
        logger.warning_once(
            "Diffusion statistics do not fit the draft budget of %d entries; "
            "histogram entries are dropped (totals are kept).",
            num_spec_tokens,
        )
        entries = entries[: max(room, 0) // _ENTRY * _ENTRY]

    per_pos = [0] * num_spec_tokens
    if num_spec_tokens >= _HEADER:
        payload = [MAGIC, VERSION, num_groups, len(entries) // _ENTRY]
        payload += groups + entries
        per_pos[: len(payload)] = payload
    return SpecDecodingStats(
        num_spec_tokens=num_spec_tokens,
        num_drafts=stats.total_steps,
        num_draft_tokens=stats.total_canvas_positions,
        num_accepted_tokens=stats.total_committed,
        num_accepted_tokens_per_pos=per_pos,
        num_draft_tokens_per_pos=[0] * num_spec_tokens,
    )


def _ints(values: Iterable[object]) -> list[int] | None:
    out = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return None
        out.append(value)
    return out


def decode(spec: SpecDecodingStats) -> DiffusionStats | None:
    """The diffusion statistics in ``spec``; ``None`` if it is not our encoding.

    A breakdown that was dropped for lack of room (see :func:`encode`) decodes
    to empty per-``(task, mode)`` statistics; the totals stay in ``spec``.
    """
    raw = spec.num_accepted_tokens_per_pos
    if len(raw) < _HEADER or raw[0] != MAGIC or raw[1] != VERSION:
        return None
    num_groups, num_entries = raw[2], raw[3]
    end = _HEADER + num_groups * _GROUP + num_entries * _ENTRY
    if end > len(raw):
        return None
    values = _ints(raw[_HEADER:end])
    if values is None or any(raw[end:]):
        return None

    stats = DiffusionStats()
    keys: list[Key] = []
    for g in range(num_groups):
        task, mode, steps, canvas, committed = values[g * _GROUP : (g + 1) * _GROUP]
        if task >= len(TASKS) or mode >= len(MODES):
            return None
        key = (TASKS[task], MODES[mode])
        keys.append(key)
        stats.steps[key] = steps
        stats.canvas_positions[key] = canvas
        stats.committed[key] = committed
    if num_groups and (
        stats.total_steps != spec.num_drafts
        or stats.total_canvas_positions != spec.num_draft_tokens
        or stats.total_committed != spec.num_accepted_tokens
    ):
        return None

    hists = {
        COMMITS_PER_STEP: stats.commits_per_step,
        STEPS_PER_REQUEST: stats.steps_per_request,
    }
    base = num_groups * _GROUP
    for e in range(num_entries):
        group, hist_id, value, count = values[
            base + e * _ENTRY : base + (e + 1) * _ENTRY
        ]
        if group >= num_groups or hist_id not in hists:
            return None
        hists[hist_id].setdefault(keys[group], Counter())[value] += count
    return stats
