"""Benchmark cases: qualcl's kernels and their peers on the same maths, built from one shape.

A case builds its inputs once and returns a closure that runs one iteration (forward, or forward and
backward). ``benchmarks.compare`` times the closures of a group interleaved in one process and
measures each one's peak memory in a fresh process; ``benchmarks/test_bench_kernels.py`` feeds the
same closures to pytest-benchmark at small sizes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import cast

import torch
import torch.nn.functional as F

from qualcl import kernels
from qualcl.functional import info_nce as functional_info_nce
from qualcl.losses import ClipLoss, MultiLevelInfoNCE

Run = Callable[[], object]


@dataclass(frozen=True)
class Shape:
    """Problem size of a group: ``n`` queries × ``m`` candidates of dimension ``d``."""

    n: int
    m: int
    d: int
    k: int = 64
    temperature: float = 0.1
    device: str = "cpu"
    dtype: str = "float32"

    @property
    def torch_dtype(self) -> torch.dtype:
        dtype = getattr(torch, self.dtype, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"dtype {self.dtype!r} is not a torch dtype")
        return dtype


@dataclass(frozen=True)
class Case:
    """One implementation of a group's computation.

    Attributes:
        group: Key of the group (cases of a group compute the same thing).
        name: Short name, unique in the group.
        label: What the table shows.
        role: ``"floor"`` (bare matmul), ``"baseline"`` (naive torch, the ratio denominator),
            ``"qualcl"`` or ``"peer"``.
        build: Inputs → one-iteration closure.
        note: Optional remark for the table.
        devices: Devices the case runs on.
    """

    group: str
    name: str
    label: str
    role: str
    build: Callable[[Shape], Run]
    note: str = ""
    devices: tuple[str, ...] = ("cpu", "cuda")


@dataclass(frozen=True)
class Group:
    """A table: title, the shape (device-dependent) and the cases compared."""

    key: str
    title: str
    cpu: Shape
    cuda: Shape
    cases: tuple[Case, ...]
    floor: str | None = None
    notes: tuple[str, ...] = ()


def _inputs(shape: Shape, *, grad: bool, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(shape.n, shape.d, generator=g).to(shape.device, shape.torch_dtype)
    c = torch.randn(shape.m, shape.d, generator=g).to(shape.device, shape.torch_dtype)
    return q.requires_grad_(grad), c.requires_grad_(grad)


def _clear(*tensors: torch.Tensor) -> None:
    for t in tensors:
        t.grad = None


# --- InfoNCE, one positive per row (column i of row i) ------------------------------------------


def _mm_forward(shape: Shape) -> Run:
    q, c = _inputs(shape, grad=False)
    return lambda: q @ c.T


def _mm_forward_backward(shape: Shape) -> Run:
    q, c = _inputs(shape, grad=True)
    upstream = torch.ones(shape.n, shape.m, device=shape.device, dtype=shape.torch_dtype)

    def run() -> None:
        (q @ c.T).backward(upstream)  # type: ignore[no-untyped-call]
        _clear(q, c)

    return run


def _naive_info_nce(shape: Shape, *, backward: bool = True) -> Run:
    q, c = _inputs(shape, grad=backward)
    target = torch.arange(shape.n, device=shape.device)

    def run() -> None:
        logits = F.normalize(q.float(), dim=1) @ F.normalize(c.float(), dim=1).T / shape.temperature
        loss = F.cross_entropy(logits, target)
        if backward:
            loss.backward()  # type: ignore[no-untyped-call]
            _clear(q, c)

    return run


def _qualcl_info_nce(impl: str, *, backward: bool = True) -> Callable[[Shape], Run]:
    def build(shape: Shape) -> Run:
        q, c = _inputs(shape, grad=backward)
        index = torch.arange(shape.n, device=shape.device)

        def run() -> None:
            loss = kernels.fused_info_nce(q, c, positive_index=index, temperature=shape.temperature, impl=impl)
            if backward:
                loss.backward()  # type: ignore[no-untyped-call]
                _clear(q, c)

        return run

    return build


def _flex_info_nce(*, backward: bool = True) -> Callable[[Shape], Run]:
    """InfoNCE through ``torch.nn.attention.flex_attention``: ``mean(lse_i(q̂ k̂ᵀ/τ) - q̂_i·k̂_i/τ)``.

    flex_attention returns the row log-sum-exp of the attention logits (differentiable), so an InfoNCE
    with one positive per row is its ``lse`` minus the positive logit; the value tensor is a dummy
    ``(M, 16)`` zero block. Compiled with ``torch.compile`` on CUDA (as flex_attention is meant to run);
    eager on CPU, where torch 2.14's compiled CPU flex_attention refuses ``lse`` ("only supports inference
    and `return_lse` is not supported yet") and its backward is not implemented.
    """

    def build(shape: Shape) -> Run:
        from torch.nn.attention.flex_attention import AuxOutput, AuxRequest, flex_attention

        # torch.compile's stub types a compiled function by its first overload: this names the one called here
        attend = cast(
            "Callable[..., tuple[torch.Tensor, AuxOutput]]",
            torch.compile(flex_attention) if shape.device == "cuda" else flex_attention,
        )
        q, c = _inputs(shape, grad=backward)
        values = torch.zeros(1, 1, shape.m, 16, device=shape.device, dtype=shape.torch_dtype)
        scale = 1.0 / shape.temperature

        def run() -> None:
            with torch.set_grad_enabled(backward):
                qn, cn = F.normalize(q, dim=1), F.normalize(c, dim=1)
                _, aux = attend(qn[None, None], cn[None, None], values, scale=scale, return_aux=AuxRequest(lse=True))
                assert aux.lse is not None
                positive = (qn * cn[: shape.n]).sum(dim=1).float() * scale
                loss = (aux.lse[0, 0].float() - positive).mean()
                if backward:
                    loss.backward()  # type: ignore[no-untyped-call]
                    _clear(q, c)

        return run

    return build


FLEX = "`flex_attention` InfoNCE (lse − positive logit; compiled on CUDA, eager on CPU)"


def _naive_info_nce_top_k(shape: Shape) -> Run:
    q, c = _inputs(shape, grad=True)
    p = _inputs(replace(shape, m=shape.n), grad=False, seed=1)[1]

    def run() -> None:
        functional_info_nce(q, p, c, temperature=shape.temperature, top_k=shape.k).backward()  # type: ignore[no-untyped-call]
        _clear(q, c)

    return run


def _qualcl_info_nce_top_k(shape: Shape) -> Run:
    q, c = _inputs(shape, grad=True)
    p = _inputs(replace(shape, m=shape.n), grad=False, seed=1)[1]

    def run() -> None:
        kernels.fused_info_nce(q, c, positive=p, temperature=shape.temperature, top_k=shape.k).backward()  # type: ignore[no-untyped-call]
        _clear(q, c)

    return run


# --- CLIP ----------------------------------------------------------------------------------------


def _open_clip(shape: Shape) -> Run:
    import open_clip

    img, txt = _inputs(shape, grad=True)
    loss_fn = open_clip.loss.ClipLoss()
    scale = torch.tensor(1 / shape.temperature, device=shape.device)

    def run() -> None:
        loss_fn(F.normalize(img, dim=1), F.normalize(txt, dim=1), scale).backward()
        _clear(img, txt)

    return run


def _qualcl_clip(impl: str) -> Callable[[Shape], Run]:
    def build(shape: Shape) -> Run:
        img, txt = _inputs(shape, grad=True)
        loss_fn = ClipLoss(init_logit_scale=1 / shape.temperature, impl=impl)

        def run() -> None:
            loss_fn(img, txt).backward()
            _clear(img, txt)

        return run

    return build


# --- top-K miner and batch-hard triplets ---------------------------------------------------------


def _mm_topk(shape: Shape) -> Run:
    q, c = _inputs(shape, grad=False)
    return lambda: torch.topk(F.normalize(q, dim=1) @ F.normalize(c, dim=1).T, shape.k, dim=1)


def _qualcl_topk(impl: str) -> Callable[[Shape], Run]:
    def build(shape: Shape) -> Run:
        q, c = _inputs(shape, grad=False)
        return lambda: kernels.topk_similarity(q, c, shape.k, impl=impl)

    return build


def _labels(n: int, device: str, classes: int = 64) -> torch.Tensor:
    return (torch.arange(n) % classes).to(device)


def _pml_batch_hard(shape: Shape) -> Run:
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.miners import BatchHardMiner

    q, _ = _inputs(shape, grad=False)
    labels = _labels(shape.n, shape.device)
    miner = BatchHardMiner(distance=CosineSimilarity())
    return lambda: miner(q, labels)


def _qualcl_batch_hard(shape: Shape) -> Run:
    q, _ = _inputs(shape, grad=False)
    labels = _labels(shape.n, shape.device)
    return lambda: kernels.batch_hard_triplets(q, labels)


# --- SimCLR NT-Xent and SupCon against pytorch-metric-learning ----------------------------------


def _pml_ntxent(shape: Shape) -> Run:
    from pytorch_metric_learning.losses import NTXentLoss

    z1, z2 = _inputs(shape, grad=True)
    labels = torch.arange(shape.n, device=shape.device).repeat(2)
    loss_fn = NTXentLoss(temperature=shape.temperature)

    def run() -> None:
        loss_fn(torch.cat([z1, z2]), labels).backward()
        _clear(z1, z2)

    return run


def _naive_ntxent(shape: Shape) -> Run:
    z1, z2 = _inputs(shape, grad=True)
    n = shape.n
    idx = torch.arange(2 * n, device=shape.device)

    def run() -> None:
        both = F.normalize(torch.cat([z1, z2]).float(), dim=1)
        logits = (both @ both.T / shape.temperature).fill_diagonal_(float("-inf"))
        F.cross_entropy(logits, (idx + n) % (2 * n)).backward()  # type: ignore[no-untyped-call]
        _clear(z1, z2)

    return run


def _qualcl_ntxent(shape: Shape) -> Run:
    z1, z2 = _inputs(shape, grad=True)
    n = shape.n
    idx = torch.arange(2 * n, device=shape.device)

    def run() -> None:
        both = torch.cat([z1, z2])
        kernels.fused_info_nce(
            both, both, positive_index=(idx + n) % (2 * n), exclude_index=idx, temperature=shape.temperature
        ).backward()  # type: ignore[no-untyped-call]
        _clear(z1, z2)

    return run


def _pml_supcon(shape: Shape) -> Run:
    from pytorch_metric_learning.losses import SupConLoss

    z, _ = _inputs(shape, grad=True)
    labels = _labels(shape.n, shape.device)
    loss_fn = SupConLoss(temperature=shape.temperature)

    def run() -> None:
        loss_fn(z, labels).backward()
        _clear(z)

    return run


def _qualcl_supcon(shape: Shape) -> Run:
    z, _ = _inputs(shape, grad=True)
    labels = _labels(shape.n, shape.device)
    rows = torch.arange(shape.n, device=shape.device)

    def run() -> None:
        kernels.fused_info_nce(
            z, z, labels=labels, candidate_labels=labels, exclude_index=rows, temperature=shape.temperature
        ).backward()  # type: ignore[no-untyped-call]
        _clear(z)

    return run


# --- CoMCL multi-level InfoNCE -------------------------------------------------------------------


def _multi_level(impl: str) -> Callable[[Shape], Run]:
    def build(shape: Shape) -> Run:
        z1, z2 = _inputs(replace(shape, m=shape.n), grad=True)
        levels = (torch.arange(shape.n) % 4).to(shape.device)
        loss_fn = MultiLevelInfoNCE(temperature=shape.temperature, impl=impl)

        def run() -> None:
            loss_fn(z1, z2, levels).backward()
            _clear(z1, z2)

        return run

    return build


CPU = Shape(8192, 8192, 256)
GPU = Shape(65536, 65536, 256, device="cuda", dtype="bfloat16")


def _case(
    group: str,
    name: str,
    label: str,
    role: str,
    build: Callable[[Shape], Run],
    note: str = "",
    devices: tuple[str, ...] = ("cpu", "cuda"),
) -> Case:
    return Case(group, name, label, role, build, note, devices)


AUTO = "qualcl `kernels.fused_info_nce` (auto: streaming torch on CPU, Triton on CUDA)"


GROUPS: tuple[Group, ...] = (
    Group(
        "info_nce",
        "InfoNCE forward + backward (one positive per row)",
        CPU,
        GPU,
        (
            _case("info_nce", "mm", "bare matmul fwd+bwd (3 GEMMs)", "floor", _mm_forward_backward),
            _case("info_nce", "naive", "naive torch `F.cross_entropy(q̂ k̂ᵀ/τ)`", "baseline", _naive_info_nce),
            _case("info_nce", "auto", AUTO, "qualcl", _qualcl_info_nce("auto")),
            _case(
                "info_nce",
                "torch",
                "qualcl `kernels.fused_info_nce` (streaming torch)",
                "qualcl",
                _qualcl_info_nce("torch"),
                devices=("cuda",),
            ),
            _case(
                "info_nce",
                "dense",
                "qualcl `kernels.fused_info_nce` (naive dense)",
                "qualcl",
                _qualcl_info_nce("naive"),
            ),
            _case("info_nce", "flex", FLEX, "peer", _flex_info_nce(), devices=("cuda",)),
        ),
        floor="mm",
        notes=(
            "`flex_attention` runs forward + backward on CUDA only: in torch 2.14 its backward raises "
            "`NotImplementedError: FlexAttention does not support backward on CPU`, and compiled CPU "
            "flex_attention refuses `lse`; its eager CPU forward is in the next table.",
        ),
    ),
    Group(
        "info_nce_forward",
        "InfoNCE forward only",
        CPU,
        GPU,
        (
            _case("info_nce_forward", "mm", "bare matmul fwd", "floor", _mm_forward),
            _case(
                "info_nce_forward",
                "naive",
                "naive torch `F.cross_entropy(q̂ k̂ᵀ/τ)`",
                "baseline",
                lambda s: _naive_info_nce(s, backward=False),
            ),
            _case("info_nce_forward", "auto", AUTO, "qualcl", _qualcl_info_nce("auto", backward=False)),
            _case("info_nce_forward", "flex", FLEX, "peer", _flex_info_nce(backward=False)),
        ),
        floor="mm",
    ),
    Group(
        "info_nce_top_k",
        "InfoNCE with top-K = 64 hard negatives, separate positive, forward + backward",
        CPU,
        GPU,
        (
            _case("info_nce_top_k", "naive", "`qualcl.functional.info_nce` (dense)", "baseline", _naive_info_nce_top_k),
            _case("info_nce_top_k", "auto", AUTO, "qualcl", _qualcl_info_nce_top_k),
        ),
    ),
    Group(
        "clip",
        "Symmetric CLIP loss forward + backward",
        CPU,
        replace(GPU, n=32768, m=32768, d=512),
        (
            _case("clip", "open_clip", "open_clip `ClipLoss`", "baseline", _open_clip),
            _case("clip", "auto", "qualcl `ClipLoss` (auto: fused kernel)", "qualcl", _qualcl_clip("auto")),
            _case("clip", "naive", "qualcl `ClipLoss(impl='naive')`", "qualcl", _qualcl_clip("naive")),
        ),
    ),
    Group(
        "multi_level",
        "CoMCL multi-level InfoNCE (4 levels, 3 pairs) forward + backward",
        CPU,
        GPU,
        (
            _case("multi_level", "naive", "`MultiLevelInfoNCE(impl='naive')`", "baseline", _multi_level("naive")),
            _case("multi_level", "auto", "`MultiLevelInfoNCE` (auto: fused kernel)", "qualcl", _multi_level("auto")),
        ),
    ),
    Group(
        "topk",
        "Top-K miner, K = 64 (cosine)",
        CPU,
        GPU,
        (
            _case("topk", "mm", "bare matmul fwd", "floor", _mm_forward),
            _case("topk", "mm_topk", "matmul + `torch.topk`", "baseline", _mm_topk),
            _case("topk", "auto", "qualcl `topk_similarity` (auto)", "qualcl", _qualcl_topk("auto")),
        ),
        floor="mm",
    ),
    Group(
        "topk_k8",
        "Top-K miner, K = 8 (cosine)",
        replace(CPU, k=8),
        replace(GPU, k=8),
        (
            _case("topk_k8", "mm", "bare matmul fwd", "floor", _mm_forward),
            _case("topk_k8", "mm_topk", "matmul + `torch.topk`", "baseline", _mm_topk),
            _case("topk_k8", "auto", "qualcl `topk_similarity` (auto)", "qualcl", _qualcl_topk("auto")),
        ),
        floor="mm",
    ),
    Group(
        "batch_hard",
        "Batch-hard triplet mining (64 classes, cosine)",
        replace(CPU, m=CPU.n),
        replace(GPU, n=16384, m=16384),
        (
            _case("batch_hard", "pml", "PML `BatchHardMiner`", "baseline", _pml_batch_hard),
            _case("batch_hard", "auto", "qualcl `batch_hard_triplets`", "qualcl", _qualcl_batch_hard),
        ),
    ),
    Group(
        "ntxent_256",
        "SimCLR NT-Xent forward + backward, 256 pairs (512 embeddings)",
        Shape(256, 256, 256),
        Shape(256, 256, 256, device="cuda", dtype="float32"),
        (
            _case("ntxent_256", "naive", "naive torch `F.cross_entropy`", "baseline", _naive_ntxent),
            _case("ntxent_256", "pml", "PML `NTXentLoss`", "peer", _pml_ntxent, "O(N³) pair mask"),
            _case("ntxent_256", "auto", "qualcl `kernels.fused_info_nce`", "qualcl", _qualcl_ntxent),
        ),
    ),
    Group(
        "ntxent_1024",
        "SimCLR NT-Xent forward + backward, 1024 pairs (2048 embeddings)",
        Shape(1024, 1024, 256),
        Shape(1024, 1024, 256, device="cuda", dtype="float32"),
        (
            _case("ntxent_1024", "naive", "naive torch `F.cross_entropy`", "baseline", _naive_ntxent),
            _case("ntxent_1024", "auto", "qualcl `kernels.fused_info_nce`", "qualcl", _qualcl_ntxent),
        ),
        notes=(
            "PML `NTXentLoss` is not run here: its [pos pairs × neg pairs] mask needs one 34.3 GB allocation at "
            "1024 pairs (its dense pair masks, pytorch-metric-learning 2.9).",
        ),
    ),
    Group(
        "supcon",
        "SupCon forward + backward (64 classes)",
        Shape(2048, 2048, 256),
        Shape(16384, 16384, 256, device="cuda", dtype="float32"),
        (
            _case("supcon", "pml", "PML `SupConLoss`", "baseline", _pml_supcon),
            _case("supcon", "auto", "qualcl `kernels.fused_info_nce` (labels)", "qualcl", _qualcl_supcon),
        ),
    ),
)

GROUP_BY_KEY = {group.key: group for group in GROUPS}
