"""``benchmarks/gpu_kernels.py --dry-run``: the GPU script's whole path on CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_kernels.py"


def test_dry_run(tmp_path: Path) -> None:
    out = tmp_path / "kernels_dry.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONWARNINGS"] = "ignore"
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(out)],
        env=env,
        cwd=tmp_path,  # no repository on the path but the script's own setup
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["status"] == "ok" and report["mode"] == "dry-run"
    assert report["vllm_imported"] is False
    assert report["correctness"] and all(c["ok"] for c in report["correctness"])
    assert report["copy_bandwidth_gbs"] > 0
    impls = {"triton", "torch_fp32", "torch_ref_f64", "upstream_f64"}
    assert len(report["score_rows"]) == 16
    for entry in report["score_rows"]:
        assert impls <= entry.keys()
        assert entry["triton"]["median_ms"] > 0 and entry["floor_ms"] > 0
    assert report["selection"] and report["tuning"]
