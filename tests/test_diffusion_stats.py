"""Diffusion statistics: the codec inside ``SpecDecodingStats`` and the stat logger.

The codec tests are pure Python. The stat-logger tests build real
``VllmConfig`` objects (the tiny Dynin checkpoint and a tiny Llama config, no
weights) but start no engine.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import pytest
from vllm.v1.spec_decode.metrics import SpecDecodingLogging, SpecDecodingStats

from dynin_vllm.engine import stats as stats_module
from dynin_vllm.engine.stats import (
    MAGIC,
    MODES,
    TASKS,
    DiffusionStats,
    DiffusionStatsBuilder,
    decode,
    encode,
)

BUDGET = 512


def _workload() -> DiffusionStatsBuilder:
    """Three requests: prefix 4 steps x 4 tokens, exact 16 x 1, block 2 x 3 + 2 x 0."""
    builder = DiffusionStatsBuilder()
    for _ in range(4):
        builder.observe_step("text", "prefix", committed=4, canvas_len=16)
    builder.observe_finished("text", "prefix", 4)
    for _ in range(16):
        builder.observe_step("text", "exact", committed=1, canvas_len=16)
    builder.observe_finished("text", "exact", 16)
    for committed in (3, 0, 3, 0):
        builder.observe_step("text", "block", committed=committed, canvas_len=4)
    return builder


def _expected() -> DiffusionStats:
    p, e, b = ("text", "prefix"), ("text", "exact"), ("text", "block")
    return DiffusionStats(
        steps=Counter({p: 4, e: 16, b: 4}),
        canvas_positions=Counter({p: 64, e: 256, b: 16}),
        committed=Counter({p: 16, e: 16, b: 6}),
        commits_per_step={
            p: Counter({4: 4}),
            e: Counter({1: 16}),
            b: Counter({3: 2, 0: 2}),
        },
        steps_per_request={p: Counter({4: 1}), e: Counter({16: 1})},
    )


# --- codec -------------------------------------------------------------------


def test_flush_encodes_totals_in_vllm_fields_and_round_trips():
    spec = _workload().flush(BUDGET)
    assert isinstance(spec, SpecDecodingStats)
    assert spec.num_spec_tokens == BUDGET
    assert (spec.num_drafts, spec.num_draft_tokens, spec.num_accepted_tokens) == (
        24,
        336,
        38,
    )
    assert len(spec.num_accepted_tokens_per_pos) == BUDGET
    assert spec.num_draft_tokens_per_pos == [0] * BUDGET
    assert spec.num_accepted_tokens_per_pos[0] == MAGIC
    assert all(type(v) is int and v >= 0 for v in spec.num_accepted_tokens_per_pos), (
        "plain non-negative ints (msgpack, and harmless to stock counters)"
    )
    assert decode(spec) == _expected()


def test_flush_resets_and_returns_none_when_nothing_was_observed():
    builder = DiffusionStatsBuilder()
    assert builder.flush(BUDGET) is None
    builder.observe_step("text", "prefix", 2, 8)
    assert builder.flush(BUDGET) is not None
    assert builder.flush(BUDGET) is None
    builder.observe_finished("text", "exact", 3)  # a finish alone is news too
    decoded = decode(builder.flush(BUDGET))
    assert decoded.total_steps == 0
    assert decoded.steps_per_request == {("text", "exact"): Counter({3: 1})}


def test_survives_vllms_msgpack_transport():
    from vllm.v1.engine import EngineCoreOutputs
    from vllm.v1.metrics.stats import SchedulerStats
    from vllm.v1.serial_utils import MsgpackDecoder, MsgpackEncoder

    spec = _workload().flush(BUDGET)
    outputs = EngineCoreOutputs(
        engine_index=0, scheduler_stats=SchedulerStats(spec_decoding_stats=spec)
    )
    frames = MsgpackEncoder().encode(outputs)
    received = MsgpackDecoder(EngineCoreOutputs).decode(frames)
    spec_received = received.scheduler_stats.spec_decoding_stats
    assert spec_received == spec
    assert decode(spec_received) == _expected()


def test_merge_adds_counts_and_histograms():
    first = decode(_workload().flush(BUDGET))
    second = DiffusionStatsBuilder()
    second.observe_step("text", "prefix", 4, 16)
    second.observe_step("text", "prefix", 2, 16)
    second.observe_finished("text", "prefix", 2)
    first.merge(decode(second.flush(BUDGET)))
    key = ("text", "prefix")
    assert first.steps[key] == 6
    assert first.committed[key] == 22
    assert first.canvas_positions[key] == 96
    assert first.commits_per_step[key] == Counter({4: 5, 2: 1})
    assert first.steps_per_request[key] == Counter({4: 1, 2: 1})
    assert first.steps[("text", "exact")] == 16  # untouched keys stay
    assert (first.total_steps, first.total_committed, first.total_finished) == (
        26,
        44,
        3,
    )


def test_overflow_keeps_totals_and_drops_histogram_entries(monkeypatch):
    warnings = []
    monkeypatch.setattr(
        stats_module.logger, "warning_once", lambda *args, **kw: warnings.append(args)
    )
    builder = DiffusionStatsBuilder()
    for committed in range(40):  # 40 distinct histogram values
        builder.observe_step("text", "prefix", committed, 64)
    builder.observe_finished("text", "prefix", 40)
    budget = 32  # header 4 + one group 5 leave room for 5 entries of 4
    spec = builder.flush(budget)
    assert len(spec.num_accepted_tokens_per_pos) == budget
    assert (spec.num_drafts, spec.num_draft_tokens, spec.num_accepted_tokens) == (
        40,
        40 * 64,
        sum(range(40)),
    )
    decoded = decode(spec)
    key = ("text", "prefix")
    assert decoded.steps[key] == 40 and decoded.committed[key] == sum(range(40))
    # Finished requests are kept first, then as many step entries as fit.
    assert decoded.steps_per_request[key] == Counter({40: 1})
    assert decoded.commits_per_step[key] == Counter({0: 1, 1: 1, 2: 1, 3: 1})
    assert len(warnings) == 1

    # Not even the groups fit: totals only, an empty breakdown.
    tiny = DiffusionStatsBuilder()
    tiny.observe_step("text", "exact", 1, 8)
    spec = tiny.flush(6)
    assert (spec.num_drafts, spec.num_accepted_tokens) == (1, 1)
    assert decode(spec).is_empty()
    # Below the header size nothing is encoded: stock-looking zeros.
    tiny.observe_step("text", "exact", 1, 8)
    spec = tiny.flush(2)
    assert spec.num_accepted_tokens_per_pos == [0, 0]
    assert decode(spec) is None


def test_stock_spec_decoding_stats_decode_to_none():
    stock = SpecDecodingStats.new(8)
    stock.observe_draft(num_draft_tokens=8, num_accepted_tokens=3)
    stock.observe_draft(num_draft_tokens=8, num_accepted_tokens=8)
    assert decode(stock) is None
    assert decode(SpecDecodingStats.new(0)) is None
    assert decode(SpecDecodingStats.new(512)) is None


def test_corrupted_encodings_decode_to_none():
    spec = _workload().flush(BUDGET)
    good = list(spec.num_accepted_tokens_per_pos)

    def with_values(values, **totals):
        fields = {
            "num_drafts": spec.num_drafts,
            "num_draft_tokens": spec.num_draft_tokens,
            "num_accepted_tokens": spec.num_accepted_tokens,
            **totals,
        }
        return SpecDecodingStats(
            num_spec_tokens=len(values),
            num_accepted_tokens_per_pos=values,
            num_draft_tokens_per_pos=[0] * len(values),
            **fields,
        )

    assert decode(with_values(good)) == _expected()
    assert decode(with_values([MAGIC, 99, *good[2:]])) is None  # unknown version
    assert decode(with_values(good[:10])) is None  # truncated
    assert decode(with_values([*good[:-1], 7])) is None  # trailing garbage
    assert decode(with_values(good, num_drafts=spec.num_drafts + 1)) is None
    bad_mode = list(good)
    bad_mode[5] = len(MODES)  # the first group's mode index
    assert decode(with_values(bad_mode)) is None


def test_builder_rejects_unknown_labels_and_negative_counts():
    builder = DiffusionStatsBuilder()
    with pytest.raises(ValueError, match="task"):
        builder.observe_step("speech", "prefix", 1, 4)
    with pytest.raises(ValueError, match="mode"):
        builder.observe_step("text", "fast", 1, 4)
    with pytest.raises(ValueError, match="committed"):
        builder.observe_step("text", "prefix", -1, 4)
    with pytest.raises(ValueError, match="num_steps"):
        builder.observe_finished("text", "prefix", -2)
    assert builder.flush(BUDGET) is None
    assert TASKS[0] == "text" and MODES[:3] == ("prefix", "exact", "block")


def test_encoded_stats_are_harmless_to_vllms_stock_spec_logging():
    """Where our logger is not installed, vLLM's own reads them without failing."""
    logging_ = SpecDecodingLogging()
    logging_.observe(_workload().flush(BUDGET))
    logging_.observe(_workload().flush(BUDGET))
    lines = []
    logging_.log(log_fn=lambda msg, *args: lines.append(msg % args))
    assert len(lines) == 1 and "Accepted: 76 tokens" in lines[0]


def test_encode_of_empty_stats_is_valid():
    spec = encode(DiffusionStats(), 16)
    assert spec.num_drafts == 0
    assert decode(spec) == DiffusionStats()


# --- stat logger ---------------------------------------------------------------


@pytest.fixture(scope="module")
def dynin_config(dynin_checkpoint: Path):
    from vllm.engine.arg_utils import EngineArgs

    from dynin_vllm.testing.engine_args import ENGINE_ARGS

    return EngineArgs(model=str(dynin_checkpoint), **ENGINE_ARGS).create_engine_config()


@pytest.fixture(scope="module")
def llama_config(tmp_path_factory):
    """A stock autoregressive model (config only: no weights are loaded)."""
    from transformers import LlamaConfig
    from vllm.engine.arg_utils import EngineArgs

    path = tmp_path_factory.mktemp("llama")
    LlamaConfig(
        vocab_size=256,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        architectures=["LlamaForCausalLM"],
    ).save_pretrained(path)
    return EngineArgs(
        model=str(path),
        skip_tokenizer_init=True,
        dtype="float32",
        max_model_len=256,
        gpu_memory_utilization=0.3,
        speculative_config={"method": "ngram", "num_speculative_tokens": 3},
    ).create_engine_config()


def _exposition() -> list[str]:
    """vLLM's part of ``/metrics``, without the creation timestamps."""
    from prometheus_client import REGISTRY, generate_latest

    text = generate_latest(REGISTRY).decode()
    return [x for x in text.splitlines() if "vllm:" in x and "_created" not in x]


def _scheduler_stats(spec, running=3, waiting=1):
    from vllm.v1.metrics.stats import SchedulerStats

    return SchedulerStats(
        num_running_reqs=running, num_waiting_reqs=waiting, spec_decoding_stats=spec
    )


def _sample(lines: list[str], name: str, **labels: str) -> float:
    for line in lines:
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {name} {labels}")


def test_stat_logger_exports_diffusion_series_and_one_short_line(dynin_config):
    from vllm.v1.metrics.loggers import LoggingStatLogger

    from dynin_vllm.serving.metrics import DiffusionStatLogger, serves_diffusion

    assert serves_diffusion(dynin_config)
    ours = DiffusionStatLogger(dynin_config)
    stock_logging = LoggingStatLogger(dynin_config)
    for _ in range(2):
        stats = _scheduler_stats(
            _workload().flush(dynin_config.model_config.max_model_len)
        )
        ours.record(stats, None)
        assert stats.spec_decoding_stats is None  # consumed for vLLM's logger
        stock_logging.record(stats, None)

    lines = _exposition()
    assert not any("spec_decode" in line for line in lines)
    steps = "vllm:diffusion_num_denoising_steps_total"
    assert _sample(lines, steps, mode="prefix", task="text") == 8
    assert _sample(lines, steps, mode="exact", task="text") == 32
    assert _sample(lines, steps, mode="block", task="text") == 8
    committed = "vllm:diffusion_num_committed_tokens_total"
    assert _sample(lines, committed, mode="block") == 12
    per_request = "vllm:diffusion_request_denoising_steps"
    assert _sample(lines, per_request + "_count", mode="exact") == 2
    assert _sample(lines, per_request + "_sum", mode="exact") == 32
    assert _sample(lines, per_request + "_count", mode="block") == 0
    per_step = "vllm:diffusion_committed_tokens_per_step"
    assert _sample(lines, per_step + "_bucket", mode="block", le="0.0") == 4
    assert _sample(lines, per_step + "_sum", mode="prefix") == 32
    diffusion = [x for x in lines if x.startswith("vllm:diffusion")]
    assert all('engine="0"' in x and 'model_name="' in x for x in diffusion)

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    vllm_logger = logging.getLogger("vllm")
    old_level = vllm_logger.level
    vllm_logger.addHandler(handler)
    vllm_logger.setLevel(logging.DEBUG)  # vLLM logs an idle engine at debug
    try:
        ours.log()
        stock_logging.log()
    finally:
        vllm_logger.removeHandler(handler)
        vllm_logger.setLevel(old_level)
    messages = [r.getMessage() for r in records]
    ours_lines = [m for m in messages if "Diffusion metrics" in m]
    assert len(ours_lines) == 1, messages
    assert "Steps: 48, Committed: 76 tokens" in ours_lines[0]
    assert "1.58 tokens/step" in ours_lines[0]
    assert "Running: 3 reqs, Waiting: 1 reqs" in ours_lines[0]
    assert not any("SpecDecoding" in m or "acceptance" in m for m in messages)
    assert any("Avg prompt throughput" in m for m in messages)  # vLLM's line stays
    assert max(map(len, messages)) < 300


def test_stat_logger_is_the_stock_one_for_other_models(llama_config):
    from vllm.v1.metrics.loggers import PrometheusStatLogger
    from vllm.v1.spec_decode.metrics import SpecDecodingProm

    from dynin_vllm.serving.metrics import DiffusionStatLogger, serves_diffusion

    assert not serves_diffusion(llama_config)

    def exported(cls) -> list[str]:
        logger = cls(llama_config)
        stock = SpecDecodingStats.new(3)
        stock.observe_draft(num_draft_tokens=3, num_accepted_tokens=2)
        stats = _scheduler_stats(stock)
        logger.record(stats, None)
        logger.log()
        assert stats.spec_decoding_stats is stock
        assert type(logger.spec_decoding_prom) is SpecDecodingProm
        return _exposition()

    stock_lines = exported(PrometheusStatLogger)
    assert any("spec_decode_num_accepted_tokens_per_pos" in x for x in stock_lines)
    assert exported(DiffusionStatLogger) == stock_lines


def test_offline_manager_adds_the_logger_for_our_models_only(
    dynin_config, llama_config
):
    from vllm.v1.engine import llm_engine
    from vllm.v1.metrics.loggers import (
        LoggingStatLogger,
        PrometheusStatLogger,
        StatLoggerManager,
    )

    from dynin_vllm.serving.metrics import (
        DiffusionStatLogger,
        install_offline_stat_logger,
    )

    installed = llm_engine.StatLoggerManager  # register() may have installed it
    original = StatLoggerManager
    try:
        llm_engine.StatLoggerManager = original
        install_offline_stat_logger()
        install_offline_stat_logger()  # idempotent
        manager_cls = llm_engine.StatLoggerManager
        assert manager_cls is not original and issubclass(manager_cls, original)
        ours = manager_cls(vllm_config=dynin_config, enable_default_loggers=False)
        assert [type(x) for x in ours.stat_loggers] == [DiffusionStatLogger]
        again = manager_cls(
            vllm_config=dynin_config,
            custom_stat_loggers=[DiffusionStatLogger],
            enable_default_loggers=False,
        )
        assert len(again.stat_loggers) == 1
        other = manager_cls(vllm_config=llama_config, enable_default_loggers=False)
        assert [type(x) for x in other.stat_loggers] == [PrometheusStatLogger]
        assert LoggingStatLogger not in map(type, other.stat_loggers)
    finally:
        llm_engine.StatLoggerManager = installed
