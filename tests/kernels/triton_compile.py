"""Compile the Triton kernels for an H100 (sm_90) without a GPU: catches what the interpreter forgives.

The interpreter runs kernels as numpy code, so it accepts loop-carried values that change dtype,
``tl.dot`` shapes below 16 and other things the real compiler rejects. ``triton.compile`` with a
``GPUTarget`` goes through TTIR → TTGIR → LLVM → PTX → cubin (ptxas ships with triton) on any
machine. Run as a script (``python tests/kernels/triton_compile.py [--all]``) or from the tests.
"""

from __future__ import annotations

import itertools
import sys
import time

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from qualcl.kernels import _triton_kernels as K

TARGET = GPUTarget("cuda", 90, 32)
DTYPES = {"bf16": "*bf16", "fp16": "*fp16", "fp32": "*fp32"}


def _info_nce_signature(kind: str, dtype: str) -> dict[str, str]:
    sig = {"q_ptr": DTYPES[dtype], "c_ptr": DTYPES[dtype]}
    if kind == "forward":
        sig |= {"lse_ptr": "*fp32", "possum_ptr": "*fp32", "npos_ptr": "*fp32", "thr_ptr": "*fp32"}
    else:
        name = "dq_ptr" if kind == "grad_query" else "dc_ptr"
        sig |= {name: "*fp32", "lse_ptr": "*fp32", "coef_lse_ptr": "*fp32", "coef_pos_ptr": "*fp32", "thr_ptr": "*fp32"}
    sig |= {
        "pidx_ptr": "*i64",
        "lab_ptr": "*i64",
        "clab_ptr": "*i64",
        "pmask_ptr": "*u8",
        "excl_ptr": "*i64",
        "nmask_ptr": "*u8",
        "N": "i32",
        "M": "i32",
        "D": "i32",
        "stride_q": "i32",
        "stride_c": "i32",
        "stride_pm": "i32",
        "stride_nm": "i32",
        "scale": "fp32",
    }
    if kind != "grad_candidates":
        sig["cols_per_split"] = "i32"
    return sig


def _options(block_d: int) -> dict[str, int]:
    """The launcher's warps (``_triton_launch._launch_options``) and pipelining stages."""
    return {"num_warps": 4 if block_d <= 128 else 8, "num_stages": 2}


def _flags(names: list[str], on: bool) -> dict[str, bool]:
    return dict.fromkeys(names, on)


def compile_info_nce(kind: str, dtype: str, flags_on: bool, block_d: int = 256, block: int = 64) -> float:
    kernel = {
        "forward": K.info_nce_forward_kernel,
        "grad_query": K.info_nce_grad_query_kernel,
        "grad_candidates": K.info_nce_grad_candidates_kernel,
    }[kind]
    sig = _info_nce_signature(kind, dtype)
    flags = _flags(["HAS_PIDX", "HAS_LABELS", "HAS_PMASK", "HAS_EXCL", "HAS_NMASK", "HAS_TOPK"], flags_on)
    if not flags_on:
        flags["HAS_PIDX"] = True
    constexprs = {
        "BM": block,
        "BN": block,
        "BD": block_d,
        **flags,
        "UPCAST": False,
        "PRECISION": "ieee" if dtype == "fp32" else "tf32",
    }
    sig |= dict.fromkeys(constexprs, "constexpr")
    start = time.perf_counter()
    triton.compile(ASTSource(kernel, sig, constexprs), target=TARGET, options=_options(block_d))
    return time.perf_counter() - start


def compile_topk(
    dtype: str, flags_on: bool, kp: int = 64, label_mode: int = 1, block_d: int = 256, block: int = 64
) -> float:
    sig = {
        "q_ptr": DTYPES[dtype],
        "c_ptr": DTYPES[dtype],
        "buf_val_ptr": "*fp32",
        "buf_idx_ptr": "*i32",
        "count_ptr": "*i32",
        "didx_ptr": "*i64",
        "excl_ptr": "*i64",
        "lab_ptr": "*i64",
        "clab_ptr": "*i64",
        "dmask_ptr": "*u8",
        "kmask_ptr": "*u8",
        "N": "i32",
        "M": "i32",
        "D": "i32",
        "K": "i32",
        "stride_q": "i32",
        "stride_c": "i32",
        "stride_dm": "i32",
        "stride_km": "i32",
        "scale": "fp32",
        "sign": "fp32",
        "cols_per_split": "i32",
        "capacity": "i32",
    }
    constexprs = {
        "BM": block,
        "BN": block,
        "BD": block_d,
        "KP": kp,
        **_flags(["HAS_DIDX", "HAS_EXCL", "HAS_DMASK", "HAS_KMASK"], flags_on),
        "LABEL_MODE": label_mode if flags_on else 0,
        "UPCAST": False,
        "PRECISION": "ieee" if dtype == "fp32" else "tf32",
    }
    sig |= dict.fromkeys(constexprs, "constexpr")
    start = time.perf_counter()
    triton.compile(ASTSource(K.topk_filter_kernel, sig, constexprs), target=TARGET, options=_options(block_d))
    return time.perf_counter() - start


def quick() -> None:
    """One small compile of each kernel (bf16, every column rule on, 32 × 32 × 64 tiles)."""
    for kind in ("forward", "grad_query", "grad_candidates"):
        compile_info_nce(kind, "bf16", True, block_d=64, block=32)
    compile_topk("bf16", True, kp=16, block_d=64, block=32)


def everything() -> None:
    """Every kernel × dtype × all / no column rules, plus K = 1 and label mode 2."""
    for kind, dtype, on in itertools.product(("forward", "grad_query", "grad_candidates"), DTYPES, (True, False)):
        print(kind, dtype, on, f"{compile_info_nce(kind, dtype, on):.1f}s")
    for dtype, on in itertools.product(DTYPES, (True, False)):
        print("topk", dtype, on, f"{compile_topk(dtype, on):.1f}s")
    print("topk K=1", f"{compile_topk('fp16', True, kp=1, label_mode=2):.1f}s")
    print("forward D=512", f"{compile_info_nce('forward', 'bf16', True, block_d=512):.1f}s")


if __name__ == "__main__":
    everything() if "--all" in sys.argv else quick()
    print("compiled for", TARGET)
