"""The Triton kernels at small shapes against the naive torch path: in the CPU interpreter, or on a GPU.

Run in a fresh process with the interpreter switched on before triton is imported::

    TRITON_INTERPRET=1 python tests/kernels/triton_checks.py fast   # or: slow, all, <check name>
    python tests/kernels/triton_checks.py all --cuda                 # the same checks on CUDA, plus bf16

``tests/kernels/test_kernel_triton.py`` does exactly this. Shapes are ragged (not multiples of the
16 × 16 tiles), dtypes fp32 and fp16 (the interpreter's bf16 ``tl.dot`` is wrong, triton#11584), and
bf16 on CUDA. The Triton path runs on the check's device, the naive reference on the CPU.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager

if "--cuda" not in sys.argv and os.environ.get("TRITON_INTERPRET") != "1":
    raise SystemExit("run with TRITON_INTERPRET=1 (set before triton is imported), or with --cuda on a GPU")

import torch
import torch.nn.functional as F

from qualcl.kernels import _triton_launch, fused_info_nce, topk_similarity

CHECKS: dict[str, tuple[Callable[[], None], bool]] = {}
CUDA = "--cuda" in sys.argv
#: Where the Triton path runs: the GPU with --cuda, else the CPU (interpreter).
DEVICE = torch.device("cuda" if CUDA else "cpu")


def check(slow: bool = False, cuda_only: bool = False) -> Callable[[Callable[[], None]], Callable[[], None]]:
    def register(fn: Callable[[], None]) -> Callable[[], None]:
        if CUDA or not cuda_only:
            CHECKS[fn.__name__] = (fn, slow)
        return fn

    return register


def dev(value: object) -> object:
    """``value`` (a tensor, or a dict of them) on the Triton device."""
    if isinstance(value, torch.Tensor):
        return value.to(DEVICE)
    if isinstance(value, dict):
        return {k: dev(v) for k, v in value.items()}
    return value


def cpu(value: torch.Tensor) -> torch.Tensor:
    return value.detach().cpu()


@contextmanager
def config(**changes: object) -> Iterator[None]:
    saved = {name: getattr(_triton_launch.CONFIG, name) for name in changes}
    for name, value in changes.items():
        setattr(_triton_launch.CONFIG, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(_triton_launch.CONFIG, name, value)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def forms(n: int, m: int, d: int, seed: int) -> dict[str, dict[str, torch.Tensor]]:
    g = _gen(seed)
    labels, column_labels = torch.randint(0, 4, (n,), generator=g), torch.randint(0, 4, (m,), generator=g)
    return {
        "positive": {"positive": torch.randn(n, d, generator=g)},
        "index": {"positive_index": torch.randint(-1, m, (n,), generator=g)},
        "labels+exclude": {
            "labels": labels,
            "candidate_labels": column_labels,
            "exclude_index": torch.randint(-1, m, (n,), generator=g),
        },
        "mask+negative_mask": {
            "positive_mask": torch.rand(n, m, generator=g) > 0.8,
            "negative_mask": torch.rand(n, m, generator=g) > 0.3,
        },
        "everything": {
            "positive": torch.randn(n, d, generator=g),
            "positive_index": torch.randint(-1, m, (n,), generator=g),
            "labels": labels,
            "candidate_labels": column_labels,
            "exclude_index": torch.randint(-1, m, (n,), generator=g),
            "negative_mask": torch.rand(n, m, generator=g) > 0.2,
        },
    }


def compare_info_nce(
    q: torch.Tensor,
    c: torch.Tensor,
    kw: dict,
    *,
    tol: float = 2e-5,
    grad_tol: float = 2e-5,
    label: str = "",
    **options: object,
) -> None:
    """Loss and gradients (query, candidates, positive) of the Triton path against the naive path."""
    results = []
    for impl in ("triton", "naive"):
        move = dev if impl == "triton" else (lambda x: x)
        leaves = [move(q).clone().requires_grad_(), move(c).clone().requires_grad_()]
        args = move(dict(kw))
        if "positive" in args:
            args["positive"] = args["positive"].clone().requires_grad_()
            leaves.append(args["positive"])
        loss = fused_info_nce(leaves[0], leaves[1], impl=impl, **args, **move(options))
        grads = torch.autograd.grad(loss.sum(), leaves)
        results.append((cpu(loss).float(), [cpu(g).float() for g in grads]))
    (got, got_grads), (want, want_grads) = results
    torch.testing.assert_close(got, want, atol=tol, rtol=tol, msg=lambda m: f"{label} loss: {m}")
    for name, a, b in zip(("query", "candidates", "positive"), got_grads, want_grads, strict=False):
        scale = max(b.abs().max().item(), 1e-3)
        torch.testing.assert_close(
            a / scale, b / scale, atol=grad_tol, rtol=0, msg=lambda m, name=name: f"{label} grad {name}: {m}"
        )


@check()
def info_nce_every_column_form() -> None:
    n, m, d = 37, 53, 20
    q, c = torch.randn(n, d, generator=_gen(0)), torch.randn(m, d, generator=_gen(1))
    w = torch.rand(n, generator=_gen(2))  # moved with the other options
    for name, kw in forms(n, m, d, 3).items():
        for top_k, reduction in ((None, "mean"), (5, "none")):
            compare_info_nce(
                q, c, kw, temperature=0.1, top_k=top_k, reduction=reduction, weights=w, label=f"{name}/{top_k}"
            )


def _half_precision(dtype: torch.dtype, loss_tol: float, grad_tol: tuple[float, float]) -> None:
    n, m, d = 21, 35, 24
    q = F.normalize(torch.randn(n, d, generator=_gen(0)), dim=1).to(dtype)
    c = F.normalize(torch.randn(m, d, generator=_gen(1)), dim=1).to(dtype)
    for top_k in (None, 4):
        results = []
        for impl, (a, b) in (("triton", (dev(q), dev(c))), ("naive", (q.float(), c.float()))):
            a, b = a.clone().requires_grad_(), b.clone().requires_grad_()
            index = torch.arange(n, device=a.device)
            loss = fused_info_nce(a, b, positive_index=index, temperature=0.05, top_k=top_k, normalize=False, impl=impl)
            loss.backward()
            results.append((cpu(loss), cpu(a.grad), cpu(b.grad)))
        (loss16, gq16, gc16), (loss32, gq32, gc32) = results
        assert loss16.dtype == torch.float32 and gq16.dtype == dtype
        torch.testing.assert_close(loss16, loss32, atol=loss_tol, rtol=loss_tol)
        torch.testing.assert_close(gq16.float(), gq32, atol=grad_tol[0], rtol=grad_tol[1])
        torch.testing.assert_close(gc16.float(), gc32, atol=grad_tol[0], rtol=grad_tol[1])


@check()
def info_nce_float16() -> None:
    _half_precision(torch.float16, 1e-5, (2e-3, 1e-2))


@check(cuda_only=True)
def info_nce_bfloat16() -> None:
    """bf16 inputs (8 mantissa bits): the loss accumulates in fp32 and stays within bf16 rounding of the inputs."""
    _half_precision(torch.bfloat16, 2e-2, (2e-2, 8e-2))


@check()
def info_nce_all_masked_rows() -> None:
    n, m, d = 18, 20, 8
    q, c, p = (torch.randn(s, d, generator=_gen(i)) for i, s in enumerate((n, m, n)))
    mask = torch.rand(n, m, generator=_gen(5)) > 0.5
    mask[[0, 7, 17]] = False
    compare_info_nce(q, c, {"positive": p, "negative_mask": mask}, temperature=0.2, top_k=3, label="masked rows")
    no_positive = torch.randint(0, m, (n,), generator=_gen(6))
    no_positive[[2, 9]] = -1  # rows without any positive: zero loss, zero gradient
    compare_info_nce(q, c, {"positive_index": no_positive}, temperature=0.2, reduction="none", label="no positive")
    loss = fused_info_nce(dev(q), dev(c), positive_index=dev(torch.full((n,), -1)), impl="triton")
    assert loss.item() == 0.0


@check()
def info_nce_ties_and_k_equal_m() -> None:
    d = 6
    base = torch.randint(-2, 3, (9, d), generator=_gen(0)).float()
    c = torch.cat([base, base[:5], base[:3]])  # exact duplicates: ties at the top-K threshold
    q = torch.randint(-2, 3, (13, d), generator=_gen(1)).float()
    kw = {"positive": torch.randn(13, d, generator=_gen(2))}
    for top_k in (1, 2, 5, c.shape[0]):
        compare_info_nce(q, c, kw, temperature=0.3, top_k=top_k, normalize=False, label=f"ties k={top_k}")
    full = fused_info_nce(dev(q), dev(c), **dev(kw), temperature=0.3, top_k=c.shape[0], impl="triton")
    torch.testing.assert_close(full, fused_info_nce(dev(q), dev(c), **dev(kw), temperature=0.3, impl="triton"))


@check()
def info_nce_temperatures() -> None:
    n, m, d = 20, 30, 16
    q, c = torch.randn(n, d, generator=_gen(0)), torch.randn(m, d, generator=_gen(1))
    for tau in (0.02, 1.0):
        compare_info_nce(q, c, {"positive_index": torch.arange(n)}, temperature=tau, top_k=6, label=f"tau={tau}")


@check()
def info_nce_column_splits_and_blocks() -> None:
    n, m, d = 19, 70, 12
    q, c = torch.randn(n, d, generator=_gen(0)), torch.randn(m, d, generator=_gen(1))
    kw = forms(n, m, d, 2)["everything"]
    with config(splits=3):
        compare_info_nce(q, c, kw, temperature=0.1, top_k=4, label="3 splits")
    with config(block_m=32, block_n=16):
        compare_info_nce(q, c, kw, temperature=0.1, label="32x16 tiles")


def _ints(seed: int, *shape: int) -> torch.Tensor:
    return torch.randint(-2, 3, shape, generator=_gen(seed)).float()


def compare_topk(q: torch.Tensor, c: torch.Tensor, k: int, label: str, **kw: object) -> None:
    values, indices = topk_similarity(dev(q), dev(c), k, impl="triton", normalize=False, **dev(kw))
    got = (cpu(values), cpu(indices))
    want = topk_similarity(q.float(), c.float(), k, impl="naive", normalize=False, **kw)
    assert torch.equal(got[1], want[1]), f"{label}: indices differ\n{got[1]}\n{want[1]}"
    assert torch.equal(got[0], want[0]), f"{label}: values differ"


@check()
def topk_exact_with_ties_masks_and_labels() -> None:
    n, m, d = 23, 90, 5
    q, c = _ints(0, n, d), _ints(1, m, d)
    g = _gen(2)
    mask = torch.rand(n, m, generator=g) > 0.4
    mask[4] = False
    labels, column_labels = torch.randint(0, 3, (n,), generator=g), torch.randint(0, 3, (m,), generator=g)
    exclude = torch.randint(-1, m, (n,), generator=g)
    for k in (1, 3, 8, m):
        for largest in (True, False):
            compare_topk(q, c, k, f"k={k} plain", largest=largest)
            compare_topk(q, c, k, f"k={k} mask", mask=mask, largest=largest)
        compare_topk(
            q, c, min(k, 8), f"k={k} labels", labels=labels, candidate_labels=column_labels, exclude_index=exclude
        )
        compare_topk(q, c, min(k, 8), f"k={k} same", labels=labels, candidate_labels=column_labels,
                     label_relation="same", largest=False)  # fmt: skip
    compare_topk(q.half(), c.half(), 6, "float16", mask=mask)  # small integers are exact in fp16


@check()
def topk_overflow_fallback_and_splits() -> None:
    n, m, d = 20, 150, 4
    q, c = _ints(0, n, d), _ints(1, m, d)  # few distinct values: many candidates tie with the bound
    with config(capacity_per_k=1):
        compare_topk(q, c, 4, "capacity 1·K")
    with config(splits=2):
        compare_topk(q, c, 4, "2 splits")
        compare_topk(q, c, 2, "2 splits, smallest", largest=False)
    values, indices = _triton_launch.topk(
        dev(q), dev(c), _filter(), 3, largest=True, scale=1.0, capacity=1, fallback_rows=7
    )  # every row overflows a 1-slot buffer and is recomputed
    want = topk_similarity(q, c, 3, impl="naive", normalize=False)
    assert torch.equal(cpu(indices), want[1]) and torch.equal(cpu(values), want[0])


def _filter() -> object:
    from qualcl.kernels._columns import KEEP_ALL_LABELS, CandidateFilter

    return CandidateFilter(None, None, None, None, KEEP_ALL_LABELS, None, None)


@check(slow=True)
def random_sweep() -> None:
    """Many random shapes, forms, temperatures and top-K values (fp32)."""
    g = _gen(123)
    for trial in range(25):
        n, m, d = (int(torch.randint(lo, hi, (), generator=g)) for lo, hi in ((1, 40), (1, 70), (2, 33)))
        tau = (0.02, 0.07, 0.3, 1.0)[trial % 4]
        form = list(forms(n, m, d, trial))[trial % 5]
        top_k = None if trial % 3 == 0 else int(torch.randint(1, m + 1, (), generator=g))
        q, c = torch.randn(n, d, generator=g), torch.randn(m, d, generator=g)
        compare_info_nce(q, c, forms(n, m, d, trial)[form], temperature=tau, top_k=top_k, label=f"trial {trial}")
        k = int(torch.randint(1, m + 1, (), generator=g))
        compare_topk(_ints(trial, n, d), _ints(trial + 1, m, d), k, f"topk trial {trial}", largest=trial % 2 == 0)


def main(argv: list[str]) -> int:
    argv = [a for a in argv if a != "--cuda"]
    mode = argv[1] if len(argv) > 1 else "fast"
    selected = [
        name
        for name, (_, slow) in CHECKS.items()
        if mode == "all" or name == mode or (mode == "fast" and not slow) or (mode == "slow" and slow)
    ]
    if not selected:
        print(f"no check named {mode!r}; known: {list(CHECKS)}")
        return 2
    failed = 0
    for name in selected:
        start = time.perf_counter()
        try:
            CHECKS[name][0]()
            print(f"PASS {name} ({time.perf_counter() - start:.1f}s)")
        except Exception:
            failed += 1
            print(f"FAIL {name}\n{traceback.format_exc()}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
