"""SigLipLoss and its streaming kernel: a float64 loop, open_clip, gradcheck, block sizes, DDP, errors."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from gloo import run_on_ranks
from losscases import split_rows
from qualcl.distributed import rank
from qualcl.kernels import triton_available
from qualcl.kernels.siglip import fused_siglip, naive_siglip
from qualcl.losses.siglip import SigLipLoss

open_clip_loss = pytest.importorskip("open_clip.loss")
KERNEL = sys.modules["qualcl.kernels.siglip"]


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _features(seed: int, n: int, d: int, m: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    return F.normalize(_randn(seed, n, d), dim=1), F.normalize(_randn(seed + 1, n if m is None else m, d), dim=1)


def loop_reference(image, text, scale: float, bias: float | None, offset: int = 0) -> list[float]:
    """Per-image losses by a plain float64 loop: ``-sum_j log sigmoid(t_ij x_ij)``."""
    out = []
    for i in range(image.shape[0]):
        total = 0.0
        for j in range(text.shape[0]):
            x = scale * sum(float(a) * float(b) for a, b in zip(image[i], text[j], strict=True)) + (bias or 0.0)
            t = 1.0 if j == i + offset else -1.0
            total += math.log1p(math.exp(-t * x)) if -t * x < 30 else -t * x  # -log sigmoid(t x)
        out.append(total)
    return out


shapes = st.tuples(st.integers(1, 7), st.integers(0, 4), st.integers(1, 5), st.integers(0, 2**31 - 1))


@settings(max_examples=30, deadline=None)
@given(shapes, st.sampled_from(["naive", "torch"]), st.booleans())
def test_equals_a_float64_loop(shape, impl, with_bias):
    n, extra, d, seed = shape
    offset = extra // 2
    image, text = _features(seed, n, d, n + extra)
    scale, bias = 7.5, (-4.0 if with_bias else None)
    got = fused_siglip(image, text, scale, bias, offset=offset, reduction="none", impl=impl, chunk_size=2)
    want = torch.tensor(loop_reference(image, text, scale, bias, offset), dtype=torch.float64)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("impl", ["naive", "torch", "auto"])
def test_equals_open_clip_values_and_gradients(impl, with_bias):
    image, text = _features(0, 12, 6)
    results = []
    for ours in (True, False):
        img, txt = image.clone().requires_grad_(), text.clone().requires_grad_()
        scale = torch.tensor(9.0, dtype=torch.float64, requires_grad=True)
        bias = torch.tensor(-6.0, dtype=torch.float64, requires_grad=True) if with_bias else None
        if ours:
            loss_fn = SigLipLoss(normalize=False, learnable=False, impl=impl, chunk_size=5, column_chunk_size=4)
            loss = loss_fn(img, txt, scale, bias)
        else:
            loss = open_clip_loss.SigLipLoss()(img, txt, scale, bias)
        leaves = [img, txt, scale] + ([bias] if bias is not None else [])
        results.append((loss, *torch.autograd.grad(loss, leaves)))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want)


def test_module_parameters_are_the_papers_and_learn():
    loss_fn = SigLipLoss()
    assert isinstance(loss_fn.log_logit_scale, torch.nn.Parameter) and isinstance(
        loss_fn.logit_bias, torch.nn.Parameter
    )
    torch.testing.assert_close(loss_fn.current_logit_scale(), torch.tensor(10.0))
    torch.testing.assert_close(loss_fn.logit_bias.detach(), torch.tensor(-10.0))
    image, text = _features(3, 6, 4)
    loss = loss_fn(image, text)
    want = open_clip_loss.SigLipLoss()(image, text, torch.tensor(10.0, dtype=torch.float64), -10.0)
    torch.testing.assert_close(loss, want.to(loss.dtype))
    loss.backward()
    assert loss_fn.log_logit_scale.grad is not None and loss_fn.logit_bias.grad is not None
    # gradients of the parameters: d/d log s = s * d/ds
    s = torch.tensor(10.0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-10.0, dtype=torch.float64, requires_grad=True)
    ds, db = torch.autograd.grad(open_clip_loss.SigLipLoss()(image, text, s, b), (s, b))
    torch.testing.assert_close(loss_fn.log_logit_scale.grad.double(), 10.0 * ds)
    torch.testing.assert_close(loss_fn.logit_bias.grad.double(), db)
    fixed = SigLipLoss(learnable=False, init_logit_bias=None)
    assert not list(fixed.parameters()) and fixed.logit_bias is None
    assert "log_logit_scale" in dict(fixed.named_buffers())


def test_passed_scale_and_bias_replace_the_modules_and_output_dict():
    image, text = _features(4, 5, 3)
    loss_fn = SigLipLoss(learnable=False, normalize=False)
    got = loss_fn(image, text, torch.tensor(2.0, dtype=torch.float64), 0.5, output_dict=True)
    want = open_clip_loss.SigLipLoss()(image, text, 2.0, 0.5, output_dict=True)
    assert set(got) == {"contrastive_loss"}
    torch.testing.assert_close(got["contrastive_loss"], want["contrastive_loss"])


def test_normalize_is_l2_normalisation_inside():
    raw_i, raw_t = _randn(5, 6, 4) * 3, _randn(6, 6, 4) * 0.2
    a = SigLipLoss()(raw_i, raw_t)
    b = SigLipLoss(normalize=False)(F.normalize(raw_i, dim=1), F.normalize(raw_t, dim=1))
    torch.testing.assert_close(a, b)


def test_half_inputs_compute_in_float32():
    image, text = _features(7, 8, 4)
    loss = SigLipLoss()(image.half(), text.half())
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, SigLipLoss()(image.half().float(), text.half().float()))


def test_gradcheck_streaming_and_dense():
    image, text = _features(8, 5, 3, 7)
    s = torch.tensor(3.0, dtype=torch.float64)
    b = torch.tensor(-1.0, dtype=torch.float64)
    leaves = tuple(t.clone().requires_grad_() for t in (image, text, s, b))
    for impl, chunk in (("torch", 2), ("torch", None), ("naive", None)):

        def f(i, t, ss, bb, impl=impl, chunk=chunk):
            return fused_siglip(
                i, t, ss, bb, offset=2, reduction="none", impl=impl, chunk_size=chunk, column_chunk_size=chunk
            )

        assert torch.autograd.gradcheck(f, leaves)
    # through the module, normalisation and weights included
    w = torch.rand(5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    loss_fn = SigLipLoss(impl="torch", chunk_size=3, column_chunk_size=2)
    assert torch.autograd.gradcheck(lambda i, t, ss, bb: loss_fn(i, t[:5], ss, bb, weights=w), leaves)


@settings(max_examples=25, deadline=None)
@given(
    st.integers(1, 9),
    st.integers(0, 5),
    st.integers(1, 12),
    st.integers(1, 12),
    st.booleans(),
    st.integers(0, 2**31 - 1),
)
def test_every_block_size_equals_dense(n, extra, rows, cols, with_bias, seed):
    image, text = _features(seed, n, 4, n + extra)
    offset = extra // 2
    w = torch.rand(n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) + 0.1
    results = []
    for impl in ("torch", "naive"):
        leaves = [image.clone().requires_grad_(), text.clone().requires_grad_()]
        leaves.append(torch.tensor(5.0, dtype=torch.float64, requires_grad=True))
        leaves.append(torch.tensor(-2.5, dtype=torch.float64, requires_grad=True) if with_bias else None)
        loss = fused_siglip(
            *leaves, offset=offset, weights=w, impl=impl, chunk_size=rows, column_chunk_size=cols, reduction="sum"
        )
        present = [t for t in leaves if t is not None]
        results.append((loss, *torch.autograd.grad(loss, present)))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want)


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 10), st.integers(0, 2**31 - 1), st.sampled_from(["naive", "torch"]))
def test_permuting_the_pairs_leaves_the_value_unchanged(n, seed, impl):
    image, text = _features(seed, n, 5)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    loss_fn = SigLipLoss(impl=impl, chunk_size=3, column_chunk_size=2)
    torch.testing.assert_close(loss_fn(image[perm], text[perm]), loss_fn(image, text))
    per_image = SigLipLoss(impl=impl, reduction="none", chunk_size=3)
    torch.testing.assert_close(per_image(image[perm], text[perm]), per_image(image, text)[perm])


def test_streaming_never_builds_more_than_a_block(monkeypatch):
    shapes: list[tuple[int, ...]] = []
    block = KERNEL._block_logits

    def recording(scaled, text, bias, buffer):
        assert buffer.numel() <= 8 * 16
        out = block(scaled, text, bias, buffer)
        shapes.append(tuple(out.shape))
        return out

    monkeypatch.setattr(KERNEL, "_block_logits", recording)
    image, text = _features(9, 40, 4)
    img = image.clone().requires_grad_()
    # a scalar reduction: one pass, the forward computes the gradient too
    fused_siglip(img, text, 4.0, -1.0, impl="torch", chunk_size=8, column_chunk_size=16).backward()
    assert shapes and max(r * c for r, c in shapes) <= 8 * 16
    assert len(shapes) == 5 * 3
    # per-image losses under an arbitrary upstream gradient: backward recomputes every block
    shapes.clear()
    losses = fused_siglip(img, text, 4.0, -1.0, reduction="none", impl="torch", chunk_size=8, column_chunk_size=16)
    losses.backward(torch.linspace(0.0, 1.0, 40, dtype=torch.float64))
    assert max(r * c for r, c in shapes) <= 8 * 16 and len(shapes) == 2 * 5 * 3


@pytest.mark.parametrize("hint", [None, True, "weights", "wrong"])
def test_forward_computed_gradients_equal_recomputed_ones(hint):
    image, text = _features(14, 9, 4, 12)
    w = torch.rand(9, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w[3] = 0.0
    gradient_hint = {"weights": w, "wrong": w.flip(0), True: True, None: None}[hint]
    results = []
    for impl in ("torch", "naive"):
        leaves = [image.clone().requires_grad_(), text.clone().requires_grad_()]
        leaves += [torch.tensor(3.0, dtype=torch.float64, requires_grad=True)]
        leaves += [torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)]
        losses = fused_siglip(
            *leaves,
            offset=2,
            reduction="none",
            impl=impl,
            chunk_size=4,
            column_chunk_size=5,
            gradient_hint=gradient_hint,
        )
        loss = (losses * w).sum() / w.sum()  # what a weighted mean sends back: w / sum(w)
        results.append((loss, *torch.autograd.grad(loss, leaves)))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want)


def test_the_custom_op_and_the_eager_path_agree(monkeypatch):
    image, text = _features(10, 9, 4, 11)
    s = torch.tensor(6.0, dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)
    results = []
    for through_op in (False, True):
        monkeypatch.setattr(KERNEL, "through_custom_op", lambda through_op=through_op: through_op)
        img, txt = image.clone().requires_grad_(), text.clone().requires_grad_()
        loss = fused_siglip(img, txt, s, b, offset=1, impl="torch", chunk_size=4, column_chunk_size=5)
        results.append((loss, *torch.autograd.grad(loss, (img, txt, s, b))))
    for a, c in zip(*results, strict=True):
        assert torch.equal(a, c)


def test_opcheck():
    image, text = _features(11, 6, 4, 9)
    w = torch.rand(6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    for bias, hint, offset, rows, cols, cache in (
        (torch.tensor(-2.0, dtype=torch.float64), None, 3, 4, 5, [False, False, False]),
        (torch.tensor(-2.0, dtype=torch.float64), w, 1, 4, 5, [True, True, True]),
        (None, None, 0, 6, 9, [True, False, False]),
    ):
        args = (
            image.clone().requires_grad_(),
            text.clone().requires_grad_(),
            torch.tensor(4.0, dtype=torch.float64, requires_grad=True),
            None if bias is None else bias.clone().requires_grad_(),
            hint,
            offset,
            rows,
            cols,
            cache,
            "torch",
        )
        torch.library.opcheck(torch.ops.qualcl.siglip.default, args)


def test_reference_path_is_dense_open_clip():
    image, text = _features(12, 4, 3)
    s, b = torch.tensor(5.0, dtype=torch.float64), torch.tensor(-1.0, dtype=torch.float64)
    torch.testing.assert_close(
        naive_siglip(image, text, s, b).sum() / 4, open_clip_loss.SigLipLoss()(image, text, s, b)
    )


def test_bad_input_is_refused_with_the_argument_name():
    image, text = _features(13, 4, 3)
    loss_fn = SigLipLoss()
    with pytest.raises(ValueError, match="text_features must have 4 rows"):
        loss_fn(image, text[:3])
    with pytest.raises(ValueError, match="text_features must have D = 3"):
        loss_fn(image, _randn(0, 4, 5))
    with pytest.raises(TypeError, match="image_features must be a floating-point tensor"):
        loss_fn(torch.ones(4, 3, dtype=torch.long), text)
    with pytest.raises(ValueError, match="image_features has 1 all-zero row"):
        loss_fn(torch.cat([torch.zeros(1, 3, dtype=torch.float64), image[1:]]), text)
    with pytest.raises(ValueError, match="text_features contains 4 non-finite"):
        loss_fn(image, torch.where(torch.arange(3) == 1, float("inf"), text))
    with pytest.raises(ValueError, match="logit_scale must be > 0"):
        loss_fn(image, text, torch.tensor(-1.0))
    with pytest.raises(ValueError, match="logit_scale must be a float or a one-element"):
        loss_fn(image, text, torch.ones(2))
    with pytest.raises(ValueError, match="logit_bias must be a finite number"):
        loss_fn(image, text, 1.0, float("nan"))
    with pytest.raises(TypeError, match="logit_bias must be a float"):
        loss_fn(image, text, 1.0, "0")
    with pytest.raises(ValueError, match="impl must be one of"):
        SigLipLoss(impl="fast")
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1"):
        SigLipLoss(chunk_size=0)
    with pytest.raises(ValueError, match="init_logit_scale must be a finite number > 0"):
        SigLipLoss(init_logit_scale=0.0)
    with pytest.raises(ValueError, match="init_logit_bias must be a finite number"):
        SigLipLoss(init_logit_bias=float("inf"))
    with pytest.raises(ValueError, match="offset \\+ N must be <= M"):
        fused_siglip(image, text, 1.0, offset=1)


# ---------------------------------------------------------------------------------------- Triton
TRITON_CHECK = """
import sys
import torch, torch.nn.functional as F
from qualcl.kernels.siglip import fused_siglip
device = torch.device(sys.argv[1])
g = torch.Generator().manual_seed(0)
cases = [(5, 7, 3, 1, -2.0, "none", torch.float32), (19, 19, 20, 0, None, "mean", torch.float32),
         (17, 40, 33, 9, 1.5, "sum", torch.float32), (9, 12, 16, 2, -1.0, "mean", torch.float16)]
if device.type == "cuda":
    cases += [(300, 700, 256, 100, -10.0, "mean", torch.bfloat16), (300, 700, 1000, 0, 2.0, "none", torch.float32)]
for n, m, d, offset, bias, reduction, dtype in cases:
    image = F.normalize(torch.randn(n, d, generator=g), dim=1).to(dtype)
    text = F.normalize(torch.randn(m, d, generator=g), dim=1).to(dtype)
    up = torch.rand(n, generator=g) if reduction == "none" else None
    out = []
    for impl, dev in (("triton", device), ("naive", torch.device("cpu"))):
        leaves = [image.to(dev).requires_grad_(), text.to(dev).requires_grad_()]
        leaves += [torch.tensor(6.0, device=dev, requires_grad=True)]
        b = None if bias is None else torch.tensor(bias, device=dev, requires_grad=True)
        loss = fused_siglip(*leaves, b, offset=offset, reduction=reduction, impl=impl)
        total = (loss * up.to(dev)).sum() if up is not None else loss
        present = leaves + ([b] if b is not None else [])
        out.append([t.detach().float().cpu() for t in (loss, *torch.autograd.grad(total, present))])
    tol = 2e-5 if dtype == torch.float32 and device.type == "cpu" else 2e-2
    for a, c in zip(*out, strict=True):
        torch.testing.assert_close(a, c, rtol=tol, atol=tol)
print("ok")
"""


def _triton_check(device: str, interpret: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"  # must be set before triton is imported: a fresh process
    return subprocess.run(
        [sys.executable, "-c", TRITON_CHECK, device], env=env, capture_output=True, text=True, timeout=600
    )


@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
def test_triton_kernels_in_the_interpreter():
    result = _triton_check("cpu", interpret=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(not (triton_available() and torch.cuda.is_available()), reason="needs triton and a CUDA GPU")
def test_triton_kernels_on_cuda():
    result = _triton_check("cuda", interpret=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_triton_refuses_what_it_cannot_run():
    image, text = _features(15, 4, 3)
    with pytest.raises(ValueError, match="impl='triton'"):
        fused_siglip(image, text, 1.0, impl="triton")  # CPU without the interpreter, or float64


# ------------------------------------------------------------------------------------------ DDP
WORLD = 2


def _ddp_work() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Learnable scale and bias, unequal ranks: value, feature and parameter gradients vs one process."""
    image, text = _randn(20, 11, 6), _randn(21, 11, 6)
    w = torch.rand(11, dtype=torch.float64, generator=torch.Generator().manual_seed(22)) + 0.2
    part = split_rows(11, rank())
    out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for impl in ("naive", "torch"):

        def build(gather: bool, impl: str = impl) -> SigLipLoss:
            return SigLipLoss(gather_distributed=gather, impl=impl, chunk_size=2, column_chunk_size=3).double()

        local = build(True)
        img, txt = image[part].clone().requires_grad_(), text[part].clone().requires_grad_()
        value = local(img, txt, weights=w[part])
        value.backward()
        single = build(False)
        full_i, full_t = image.clone().requires_grad_(), text.clone().requires_grad_()
        want = single(full_i, full_t, weights=w)
        want.backward()
        mean = value.detach().clone()
        dist.all_reduce(mean)
        out[f"{impl} value"] = (mean / WORLD, want.detach())
        out[f"{impl} image grad"] = (img.grad / WORLD, full_i.grad[part])
        out[f"{impl} text grad"] = (txt.grad / WORLD, full_t.grad[part])
        for name, p in local.named_parameters():
            averaged = p.grad.clone()
            dist.all_reduce(averaged)  # what DDP does, then divides by the world size
            out[f"{impl} {name} grad"] = (averaged / WORLD, dict(single.named_parameters())[name].grad)
    return out


@pytest.mark.distributed
def test_two_gloo_ranks_equal_one_process_with_learnable_scale_and_bias(tmp_path):
    for r, results in enumerate(run_on_ranks(_ddp_work, WORLD, tmp_path)):
        assert any("log_logit_scale" in k for k in results) and any("logit_bias" in k for k in results)
        for what, (got, want) in results.items():
            torch.testing.assert_close(got, want, msg=lambda m, r=r, what=what: f"rank {r}, {what}: {m}")
