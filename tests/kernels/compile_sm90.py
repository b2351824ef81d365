"""Compile every Triton kernel for an H100 (sm_90) without a GPU.

Run as a script with ``TRITON_INTERPRET`` unset (``test_compile.py`` does so
in a subprocess): the interpreter never lowers a kernel, so type errors in the
GPU lowering (scalar branches, loop-carried types, 64-bit constants) only show
up here. Prints one line per kernel; exits non-zero on the first failure.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

os.environ.pop("TRITON_INTERPRET", None)
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend

from dynin_vllm.kernels import triton_ops as ops

TARGET = GPUTarget("cuda", 90, 32)


def compile_kernel(
    kernel, args: dict, num_warps: int = 4, fp_fusion: bool = False
) -> str:
    """Compile with pointer/int args divisible by 16 (as a real launch of
    contiguous, 16-aligned tensors with such sizes would specialise)."""
    signature, constexprs, attrs = {}, {}, {}
    for i, name in enumerate(kernel.arg_names):
        value = args[name]
        if isinstance(value, str):
            kind, _, hint = value.partition(":")
            signature[name] = kind
            if hint == "16":
                attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            signature[name] = "constexpr"
            constexprs[name] = value
    src = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=attrs)
    options = make_backend(TARGET).parse_options(
        {"num_warps": num_warps, "enable_fp_fusion": fp_fusion}
    )
    compiled = triton.compile(src, target=TARGET, options=options.__dict__)
    return compiled


def registers(ptx: str) -> str:
    """Registers per thread, from Triton's own ptxas (best effort)."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "k.ptx")
            with open(path, "w") as f:
                f.write(ptx)
            out = subprocess.run(
                [get_ptxas(90).path, "-arch=sm_90a", "-v", path, "-o", path + ".o"],
                capture_output=True,
                text=True,
                check=True,
            ).stderr
        found = re.search(r"Used (\d+) registers", out)
        return found.group(1) if found else "?"
    except Exception:  # a report, not a check
        return "?"


def score_args(
    has_cfg: bool, maskgit: bool, ranges: int, splits: int, rows: int = 0
) -> dict:
    block = ops.SCORE_BLOCK_V
    return {
        "logits_ptr": "*bf16:16",
        "uncond_ptr": "*bf16:16",
        "scale_ptr": "*fp64:16",
        "temp_ptr": "*fp64:16",
        "seed_ptr": "*i64:16",
        "step_ptr": "*i64:16",
        "pos_ptr": "*i64:16",
        "allowed_ptr": "*i64:16",
        "ids_ptr": "*i64:16",
        "conf_ptr": "*fp32:16",
        "part_max_ptr": "*fp32:16",
        "part_sum_ptr": "*fp32:16",
        "part_key_ptr": "*fp64:16",
        "part_idx_ptr": "*i32:16",
        "part_x_ptr": "*fp32:16",
        "V": "i32:16",
        "stride_l": "i32:16",
        "stride_u": "i32:16",
        "stride_a": "i32",
        "col_offset": "i32",
        "HAS_CFG": has_cfg,
        "MASKGIT_CFG": maskgit,
        "NUM_RANGES": ranges,
        "RANGES_PAD": max(2, triton.next_power_of_2(max(ranges, 1))),
        "SPLITS": splits,
        "BLOCK": block,
        "CTR_STEP": (block * ops._GOLDEN) & ops._MASK64,
        "STREAM_OFFSET": ops._stream_offset(0),
        "ROWS": rows,
    }


def main() -> int:
    jobs = []
    for has_cfg, maskgit, ranges, splits, rows in [
        (False, False, 0, 1, 0),
        (False, False, 0, 1, 1),
        (False, False, 0, 1, 2),
        (False, False, 0, 8, 0),
        (True, False, 0, 1, 0),
        (True, False, 0, 1, 1),
        (True, True, 3, 4, 2),
    ]:
        jobs.append(
            (
                f"score cfg={has_cfg} maskgit={maskgit} ranges={ranges} "
                f"splits={splits} rows={rows}",
                ops._score_kernel,
                score_args(has_cfg, maskgit, ranges, splits, rows),
            )
        )
    jobs.append(
        (
            "score combine",
            ops._score_combine_kernel,
            {
                "ids_ptr": "*i64:16",
                "conf_ptr": "*fp32:16",
                "part_max_ptr": "*fp32:16",
                "part_sum_ptr": "*fp32:16",
                "part_key_ptr": "*fp64:16",
                "part_idx_ptr": "*i32:16",
                "part_x_ptr": "*fp32:16",
                "SPLITS": 8,
            },
        )
    )
    commit = {
        "canvas_ptr": "*i64:16",
        "cand_ptr": "*i64:16",
        "conf_ptr": "*fp64:16",
        "edit_ptr": "*u8:16",
        "ntr_ptr": "*i64:16",
        "thr_ptr": "*fp64:16",
        "fac_ptr": "*fp64:16",
        "ncom_ptr": "*i64:16",
        "done_ptr": "*i8:16",
        "W": "i32",
        "stride_canvas": "i32",
        "stride_cand": "i32",
        "stride_conf": "i32",
        "stride_edit": "i32",
        "BLOCK_I": 64,
        "BLOCK_J": 64,
    }
    jobs.append(("commit", ops._commit_kernel, commit))
    jobs.append(
        (
            "maskgit conf",
            ops._maskgit_conf_kernel,
            {
                "probs_ptr": "*fp32:16",
                "edit_ptr": "*u8:16",
                "temp_ptr": "*fp64:16",
                "seed_ptr": "*i64:16",
                "step_ptr": "*i64:16",
                "pos_ptr": "*i64:16",
                "out_ptr": "*fp64:16",
                "W": "i32",
                "stride_p": "i32",
                "stride_e": "i32",
                "BLOCK": 1024,
                "STREAM_OFFSET": ops._stream_offset(2),
            },
        )
    )
    jobs.append(
        (
            "maskgit commit",
            ops._maskgit_commit_kernel,
            {
                "canvas_ptr": "*i64:16",
                "cand_ptr": "*i64:16",
                "conf_ptr": "*fp64:16",
                "edit_ptr": "*u8:16",
                "len_ptr": "*i64:16",
                "ncom_ptr": "*i64:16",
                "done_ptr": "*i8:16",
                "W": "i32",
                "stride_canvas": "i32",
                "stride_cand": "i32",
                "stride_edit": "i32",
                "BLOCK_I": 64,
                "BLOCK_J": 64,
            },
        )
    )
    jobs.append(
        (
            "uniform",
            ops._uniform_kernel,
            {
                "seed_ptr": "*i64:16",
                "step_ptr": "*i64:16",
                "pos_ptr": "*i64:16",
                "out_ptr": "*fp64:16",
                "exp_ptr": "*fp32:16",
                "width": "i32",
                "STREAM_OFFSET": 0,
                "BLOCK": 1024,
            },
        )
    )
    for name, kernel, args in jobs:
        # As launched: the scoring kernel contracts a*b+c unless it does CFG.
        fusion = kernel is ops._score_kernel and not args["HAS_CFG"]
        compiled = compile_kernel(kernel, args, fp_fusion=fusion)
        ptx = compiled.asm["ptx"]
        # bf16 logits should stream as 16-byte loads (8 values a thread).
        vector = "ld.global.v4" in ptx or "ld.global.nc.v4" in ptx
        print(
            f"ok {name}: {len(ptx.splitlines())} ptx lines, v4 loads={vector}, "
            f"{registers(ptx)} registers"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
