"""Diffusion statistics in the front end: one log line and Prometheus series.

The canvas of a masked-diffusion request rides vLLM's speculative-decoding
path with a draft budget of ``max_model_len``. Left alone, vLLM's stat loggers
would print a ``SpecDecoding metrics`` line with ``max_model_len`` per-position
acceptance rates every log interval and export one
``vllm:spec_decode_num_accepted_tokens_per_pos`` counter per position. Our
scheduler instead reports diffusion statistics (``dynin_vllm.engine.stats``)
through that channel, and :class:`DiffusionStatLogger` turns them into:

- one log line per engine and log interval::

    Engine 000: Diffusion metrics: 41.3 steps/s, 82.6 committed tokens/s,
    2.00 tokens/step, Steps: 413, Committed: 826 tokens, Running: 4 reqs,
    Waiting: 0 reqs

- Prometheus series labelled ``model_name``, ``engine``, ``task``, ``mode``:
  ``vllm:diffusion_num_denoising_steps``, ``vllm:diffusion_num_canvas_positions``
  and ``vllm:diffusion_num_committed_tokens`` (counters; the names of vLLM's
  own diffusion path), ``vllm:diffusion_committed_tokens_per_step`` and
  ``vllm:diffusion_request_denoising_steps`` (histograms), in place of the
  ``vllm:spec_decode_*`` series.

:class:`DiffusionStatLogger` is a ``PrometheusStatLogger`` registered under
the ``vllm.stat_logger_plugins`` entry point, so it replaces vLLM's default
Prometheus logger. For any other model it *is* the stock logger (it changes
nothing). ``AsyncLLM`` (``vllm serve``) loads that entry point; the offline
``LLMEngine`` (``vllm.LLM``) does not, see :func:`install_offline_stat_logger`.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import prometheus_client
from vllm.logger import init_logger
from vllm.v1.metrics.loggers import PrometheusStatLogger, StatLoggerManager

from dynin_vllm import ARCHITECTURES
from dynin_vllm.engine.stats import MODES, TASKS, decode

__all__ = [
    "DiffusionProm",
    "DiffusionStatLogger",
    "install_offline_stat_logger",
    "serves_diffusion",
]

# A child of vLLM's logger: the line goes where vLLM's stats lines go, at
# vLLM's level and in its format.
logger = init_logger("vllm." + __name__)

#: Label names added to vLLM's ``model_name`` and ``engine``.
DIFFUSION_LABELS = ("task", "mode")


def serves_diffusion(vllm_config: Any) -> bool:
    """Whether ``vllm_config`` serves one of this plugin's architectures."""
    model_config = getattr(vllm_config, "model_config", None)
    if model_config is None:
        return False
    try:
        architectures = model_config.architectures or ()
    except AttributeError:
        return False
    return any(arch in ARCHITECTURES for arch in architectures)


def _powers_of_two(limit: int) -> list[float]:
    """``0, 1, 2, 4, ...`` up to the first power of two >= ``limit``."""
    buckets, value = [0.0, 1.0], 1
    while value < limit:
        value *= 2
        buckets.append(float(value))
    return buckets


class DiffusionProm:
    """Prometheus series of the diffusion statistics.

    Takes the place of vLLM's ``SpecDecodingProm`` (same constructor and
    ``observe``) in :class:`DiffusionStatLogger` for our models: it exports no
    ``vllm:spec_decode_*`` series, the per-position one included.
    """

    _counter_cls = prometheus_client.Counter
    _histogram_cls = prometheus_client.Histogram

    def __init__(
        self,
        speculative_config: Any,
        labelnames: Sequence[str],
        per_engine_labelvalues: dict[int, list[object]],
        is_diffusion: bool = False,
    ):
        budget = getattr(speculative_config, "num_speculative_tokens", None) or 4096
        names = [*labelnames, *DIFFUSION_LABELS]
        keys = [(task, mode) for task in TASKS for mode in MODES]

        def per_key(metric: Any) -> dict[int, dict[tuple[str, str], Any]]:
            # Every (task, mode) child exists from the start (at 0).
            return {
                idx: {key: metric.labels(*values, *key) for key in keys}
                for idx, values in per_engine_labelvalues.items()
            }

        def counter(name: str, doc: str) -> dict:
            return per_key(
                self._counter_cls(name=name, documentation=doc, labelnames=names)
            )

        def histogram(name: str, doc: str, buckets: list[float]) -> dict:
            return per_key(
                self._histogram_cls(
                    name=name, documentation=doc, labelnames=names, buckets=buckets
                )
            )

        self.counter_steps = counter(
            "vllm:diffusion_num_denoising_steps",
            "Number of denoising steps (forwards of a request's canvas; a "
            "classifier-free guidance pair counts once).",
        )
        self.counter_canvas_positions = counter(
            "vllm:diffusion_num_canvas_positions",
            "Number of canvas positions forwarded by denoising steps.",
        )
        self.counter_committed = counter(
            "vllm:diffusion_num_committed_tokens",
            "Number of tokens committed (unmasked) by denoising steps.",
        )
        self.histogram_commits_per_step = histogram(
            "vllm:diffusion_committed_tokens_per_step",
            "Tokens committed in one denoising step of one request.",
            _powers_of_two(budget),
        )
        self.histogram_steps_per_request = histogram(
            "vllm:diffusion_request_denoising_steps",
            "Denoising steps of a finished request.",
            _powers_of_two(budget)[1:],
        )

    def observe(self, spec_decoding_stats: Any, engine_idx: int = 0) -> None:
        stats = decode(spec_decoding_stats)
        if stats is None:
            return
        for series, values in (
            (self.counter_steps, stats.steps),
            (self.counter_canvas_positions, stats.canvas_positions),
            (self.counter_committed, stats.committed),
        ):
            children = series[engine_idx]
            for key, value in values.items():
                if value:
                    children[key].inc(value)
        for series, hists in (
            (self.histogram_commits_per_step, stats.commits_per_step),
            (self.histogram_steps_per_request, stats.steps_per_request),
        ):
            children = series[engine_idx]
            for key, hist in hists.items():
                child = children[key]
                for value, count in hist.items():
                    for _ in range(count):
                        child.observe(value)


@dataclass
class _Interval:
    """What one engine did since the last log line."""

    start: float
    steps: int = 0
    committed: int = 0
    previous_steps: int = 0
    running: int = 0
    waiting: int = 0


class DiffusionStatLogger(PrometheusStatLogger):
    """vLLM's Prometheus stat logger, with diffusion statistics for our models.

    For a model of another architecture this class adds nothing to
    ``PrometheusStatLogger``. For ours:

    - Prometheus: :class:`DiffusionProm` replaces ``SpecDecodingProm``.
    - Logs: one line per engine and log interval (:meth:`log`). vLLM's
      ``LoggingStatLogger`` would print the speculative-decoding line with
      ``max_model_len`` per-position rates; stat loggers from plugins are
      recorded before vLLM's default ones, so :meth:`record` hands it
      ``SchedulerStats`` without ``spec_decoding_stats`` (its other lines are
      unchanged).
    """

    def __init__(self, vllm_config: Any, engine_indexes: list[int] | None = None):
        self.serves_diffusion = serves_diffusion(vllm_config)
        if self.serves_diffusion:
            self._spec_decoding_cls = DiffusionProm
        super().__init__(vllm_config, engine_indexes)
        # Like vLLM's LoggingStatLogger: no log line from several API servers,
        # each of which sees only its own share of the statistics.
        parallel = vllm_config.parallel_config
        self._log_lines = getattr(parallel, "_api_process_count", 1) <= 1
        now = time.monotonic()
        self._intervals = {idx: _Interval(start=now) for idx in self.engine_indexes}

    def record(
        self,
        scheduler_stats: Any,
        iteration_stats: Any,
        mm_cache_stats: Any = None,
        engine_idx: int = 0,
    ) -> None:
        super().record(
            scheduler_stats,
            iteration_stats,
            mm_cache_stats=mm_cache_stats,
            engine_idx=engine_idx,
        )
        if not self.serves_diffusion or scheduler_stats is None:
            return
        interval = self._intervals.get(engine_idx)
        if interval is None:
            return
        interval.running = scheduler_stats.num_running_reqs
        interval.waiting = (
            scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
        )
        spec = scheduler_stats.spec_decoding_stats
        if spec is not None:
            interval.steps += spec.num_drafts
            interval.committed += spec.num_accepted_tokens
            # Consumed here; vLLM's LoggingStatLogger, recorded next, would
            # print them as max_model_len per-position acceptance rates.
            scheduler_stats.spec_decoding_stats = None

    def log(self) -> None:
        super().log()
        if not self.serves_diffusion or not self._log_lines:
            return
        now = time.monotonic()
        for idx, interval in self._intervals.items():
            elapsed = now - interval.start
            steps, committed = interval.steps, interval.committed
            # Like vLLM's own line: quiet (debug) once the engine is idle.
            idle = not steps and not interval.previous_steps
            log_fn = logger.debug if idle else logger.info
            log_fn(
                "Engine %03d: Diffusion metrics: %.1f steps/s, "
                "%.1f committed tokens/s, %.2f tokens/step, Steps: %d, "
                "Committed: %d tokens, Running: %d reqs, Waiting: %d reqs",
                idx,
                steps / elapsed if elapsed > 0 else 0.0,
                committed / elapsed if elapsed > 0 else 0.0,
                committed / steps if steps else 0.0,
                steps,
                committed,
                interval.running,
                interval.waiting,
            )
            interval.start = now
            interval.previous_steps = steps
            interval.steps = interval.committed = 0


def install_offline_stat_logger() -> None:
    """Use :class:`DiffusionStatLogger` in ``vllm.LLM`` for our models too.

    ``AsyncLLM`` (``vllm serve``) adds the ``vllm.stat_logger_plugins`` entry
    points to its stat loggers; the offline ``LLMEngine`` does not. This makes
    the ``StatLoggerManager`` that ``LLMEngine`` builds add
    :class:`DiffusionStatLogger` when the engine serves one of our
    architectures (other models: unchanged). Idempotent.
    """
    from vllm.v1.engine import llm_engine

    if getattr(llm_engine.StatLoggerManager, "_dynin_offline", False):
        return
    llm_engine.StatLoggerManager = _OfflineStatLoggerManager


class _OfflineStatLoggerManager(StatLoggerManager):
    _dynin_offline = True

    def __init__(
        self,
        vllm_config: Any,
        engine_idxs: list[int] | None = None,
        custom_stat_loggers: list[Any] | None = None,
        *args: Any,
        **kwargs: Any,
    ):
        loggers = list(custom_stat_loggers or [])
        has_ours = any(
            isinstance(f, type) and issubclass(f, DiffusionStatLogger) for f in loggers
        )
        if serves_diffusion(vllm_config) and not has_ours:
            loggers.append(DiffusionStatLogger)
        super().__init__(
            vllm_config,
            engine_idxs,
            loggers if loggers else custom_stat_loggers,
            *args,
            **kwargs,
        )
