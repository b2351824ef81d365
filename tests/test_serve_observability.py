"""Observability of ``vllm serve``: the diffusion log line and Prometheus series.

One server (INFO logging, a 2 s stats interval, output captured to a file)
gets ~20 s of completions from the OpenAI SDK: the three modes, 1 and 4
tokens per step, and classifier-free guidance, all with a fixed schedule
(``ignore_eos``: every request runs to ``max_tokens``), so every count is
known in advance and is also checked against each response's own step count.
"""

from __future__ import annotations

import itertools
import re
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from dynin_vllm.serving.launch import served
from dynin_vllm.testing.engine_args import ENGINE_ARGS, cli_args

pytestmark = pytest.mark.server

INTERVAL_S = 2  # VLLM_LOG_STATS_INTERVAL
TRAFFIC_S = 20
WORKERS = 4
MAX_TOKENS = 16
BLOCK = 4
MAX_LINE = 300

#: (mode, steps, cfg_scale): each request commits MAX_TOKENS tokens in
#: ``steps`` denoising steps (BLOCK blocks, steps // BLOCK steps per block).
KINDS = [
    ("prefix", 16, 0.0),
    ("exact", 16, 0.0),
    ("block", 16, 0.0),
    ("prefix", 4, 0.0),
    ("exact", 4, 0.0),
    ("block", 4, 0.0),
    ("prefix", 4, 1.0),  # a CFG pair: its steps count once
]
MODES = sorted({mode for mode, _, _ in KINDS})

DIFFUSION_LINE = re.compile(
    r"Diffusion metrics: (?P<steps_s>[\d.]+) steps/s, "
    r"(?P<tokens_s>[\d.]+) committed tokens/s, (?P<per_step>[\d.]+) tokens/step, "
    r"Steps: (?P<steps>\d+), Committed: (?P<committed>\d+) tokens, "
    r"Running: (?P<running>\d+) reqs, Waiting: (?P<waiting>\d+) reqs"
)


@dataclass
class Answer:
    mode: str
    steps_param: int
    cfg_scale: float
    finish_reason: str
    completion_tokens: int
    num_spec_steps: int
    num_accepted: int


@dataclass
class Observed:
    answers: list[Answer]
    metrics: dict[tuple[str, tuple[tuple[str, str], ...]], float]
    metrics_text: str
    log_during_traffic: list[str]
    log_startup: str
    seconds: float  # from the first request to the /metrics scrape


def _complete(client, model: str, kind: tuple[str, int, float]) -> Answer:
    mode, steps, cfg_scale = kind
    xargs = {"mode": mode, "block_length": BLOCK, "steps": steps}
    if cfg_scale:
        xargs["cfg_scale"] = cfg_scale
    response = client.completions.create(
        model=model,
        prompt="The capital of France is",
        max_tokens=MAX_TOKENS,
        temperature=0,
        extra_body={"ignore_eos": True, "vllm_xargs": xargs},
    )
    # vLLM's extra response field; the SDK keeps unknown fields as plain data.
    spec = response.to_dict()["metrics"]["speculative_decoding"]
    return Answer(
        mode=mode,
        steps_param=steps,
        cfg_scale=cfg_scale,
        finish_reason=response.choices[0].finish_reason,
        completion_tokens=response.usage.completion_tokens,
        num_spec_steps=spec["num_spec_steps"],
        num_accepted=spec["num_accepted_draft_tokens"],
    )


def _traffic(base_url: str, model: str) -> list[Answer]:
    import openai

    client = openai.OpenAI(
        base_url=f"{base_url}/v1",
        api_key="EMPTY",
        http_client=openai.DefaultHttpxClient(trust_env=False),
        max_retries=0,
        timeout=120,
    )
    deadline = time.monotonic() + TRAFFIC_S

    def worker(offset: int) -> list[Answer]:
        answers = []
        kinds = itertools.islice(itertools.cycle(KINDS), offset, None)
        while time.monotonic() < deadline:
            answers.append(_complete(client, model, next(kinds)))
        return answers

    with ThreadPoolExecutor(WORKERS) as pool:
        per_worker = list(pool.map(worker, range(WORKERS)))
    client.close()
    return [a for answers in per_worker for a in answers]


def _parse_metrics(text: str) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            samples[(sample.name, labels)] = sample.value
    return samples


@pytest.fixture(scope="module")
def observed(dynin_checkpoint: Path, tmp_path_factory) -> Observed:
    log_path = tmp_path_factory.mktemp("observability") / "server.log"
    env = {"VLLM_LOGGING_LEVEL": "INFO", "VLLM_LOG_STATS_INTERVAL": str(INTERVAL_S)}
    with served(
        dynin_checkpoint,
        extra_args=cli_args(ENGINE_ARGS),
        env=env,
        log_path=log_path,
    ) as server:
        startup_end = log_path.stat().st_size
        start = time.monotonic()
        answers = _traffic(server.base_url, server.model)
        # Two more intervals: the last busy one is logged, then one idle one.
        time.sleep(2.5 * INTERVAL_S)
        session = requests.Session()
        session.trust_env = False
        response = session.get(f"{server.base_url}/metrics", timeout=30)
        response.raise_for_status()
        seconds = time.monotonic() - start
        with log_path.open("rb") as log:
            startup = log.read(startup_end).decode(errors="replace")
            during = log.read().decode(errors="replace").splitlines()
    return Observed(
        answers=answers,
        metrics=_parse_metrics(response.text),
        metrics_text=response.text,
        log_during_traffic=during,
        log_startup=startup,
        seconds=seconds,
    )


def _value(observed: Observed, name: str, **labels: str) -> float:
    """The one sample ``name`` whose labels include ``labels``."""
    found = [
        value
        for (sample, sample_labels), value in observed.metrics.items()
        if sample == name and set(labels.items()) <= set(sample_labels)
    ]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def test_every_request_ran_its_fixed_schedule(observed):
    answers = observed.answers
    assert len(answers) >= 2 * len(KINDS), "too little traffic to mean anything"
    assert {(a.mode, a.steps_param, a.cfg_scale) for a in answers} == set(KINDS)
    for a in answers:
        assert a.finish_reason == "length"
        assert a.completion_tokens == MAX_TOKENS
        assert a.num_spec_steps == a.steps_param, a
        assert a.num_accepted == MAX_TOKENS, a


def test_prometheus_diffusion_series_agree_with_the_responses(observed):
    by_mode = {mode: [a for a in observed.answers if a.mode == mode] for mode in MODES}
    for mode, answers in by_mode.items():
        labels = {"task": "text", "mode": mode}
        steps = sum(a.num_spec_steps for a in answers)
        committed = sum(a.num_accepted for a in answers)
        assert committed == MAX_TOKENS * len(answers)

        name = "vllm:diffusion_num_denoising_steps_total"
        assert _value(observed, name, **labels) == steps
        name = "vllm:diffusion_num_committed_tokens_total"
        assert _value(observed, name, **labels) == committed
        name = "vllm:diffusion_num_canvas_positions_total"
        assert _value(observed, name, **labels) >= committed

        per_request = "vllm:diffusion_request_denoising_steps"
        assert _value(observed, per_request + "_count", **labels) == len(answers)
        assert _value(observed, per_request + "_sum", **labels) == steps
        short = sum(a.num_spec_steps <= 4 for a in answers)
        assert _value(observed, per_request + "_bucket", le="4.0", **labels) == short

        per_step = "vllm:diffusion_committed_tokens_per_step"
        assert _value(observed, per_step + "_count", **labels) == steps
        assert _value(observed, per_step + "_sum", **labels) == committed
        # steps=16: one token per step; steps=4: four.
        one_per_step = sum(a.num_spec_steps for a in answers if a.steps_param == 16)
        assert _value(observed, per_step + "_bucket", le="1.0", **labels) == (
            one_per_step
        )
        assert _value(observed, per_step + "_bucket", le="2.0", **labels) == (
            one_per_step
        )
    model_names = {
        dict(labels)["model_name"]
        for (name, labels) in observed.metrics
        if name.startswith("vllm:diffusion_")
    }
    assert len(model_names) == 1


def test_per_position_spec_decode_series_are_absent(observed):
    assert "vllm:spec_decode_num_accepted_tokens_per_pos" not in observed.metrics_text
    assert "vllm:spec_decode" not in observed.metrics_text
    # vLLM's other series are still there.
    assert _value(observed, "vllm:generation_tokens_total") == MAX_TOKENS * len(
        observed.answers
    )


def test_log_has_one_short_diffusion_line_per_interval(observed):
    lines = observed.log_during_traffic
    long = [line[:120] + "..." for line in lines if len(line) > MAX_LINE]
    assert not long, long
    assert not any("SpecDecoding" in x or "acceptance rate" in x for x in lines)
    # vLLM's own throughput line is still logged.
    assert any("Avg prompt throughput" in x for x in lines)
    # The stat-logger plugin was loaded through its entry point.
    assert "dynin_vllm.serving.metrics:DiffusionStatLogger" in observed.log_startup

    matches = [m for x in lines if (m := DIFFUSION_LINE.search(x))]
    assert len(matches) == sum("Diffusion metrics" in x for x in lines)
    # One line per interval while busy, and one for the first idle interval.
    assert (
        TRAFFIC_S / INTERVAL_S - 2 <= len(matches) <= observed.seconds / INTERVAL_S + 1
    )
    for m in matches:
        steps, committed = int(m["steps"]), int(m["committed"])
        expected = committed / steps if steps else 0.0
        assert float(m["per_step"]) == pytest.approx(expected, abs=0.006)
        # CFG pairs count once: never more running than clients sending.
        assert int(m["running"]) + int(m["waiting"]) <= WORKERS
    # Every step and committed token of the traffic is in exactly one line.
    assert sum(int(m["steps"]) for m in matches) == sum(
        a.num_spec_steps for a in observed.answers
    )
    assert sum(int(m["committed"]) for m in matches) == MAX_TOKENS * len(
        observed.answers
    )
    # The last line is the first idle interval.
    assert (matches[-1]["steps"], matches[-1]["running"]) == ("0", "0")
