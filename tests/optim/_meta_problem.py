"""A tiny float64 MKCNet-like problem shared by the meta-optimizer tests, with a naive reference."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qualcl.functional import batch_entropy, focal_loss
from qualcl.heads import JointEncodingMask

N_D, N_Q, L = 2, 2, 2
K = N_D * N_Q * L
D_IN, HIDDEN = 3, 4
ENTROPY_WEIGHT = 0.3
H = 1e-6  # central-difference step


class TinyTask(nn.Module):
    """Linear → BatchNorm → tanh, then a diagnosis head and an auxiliary (co-embedding) head."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(D_IN, HIDDEN)
        self.bn = nn.BatchNorm1d(HIDDEN, momentum=0.5)
        self.main = nn.Linear(HIDDEN, N_D)
        self.aux = nn.Linear(HIDDEN, K)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = torch.tanh(self.bn(self.fc(x)))
        return self.main(z), self.aux(z)


class TinyMeta(nn.Module):
    """Meta learner: a linear map to K logits (optionally with a BatchNorm, to test its buffers)."""

    def __init__(self, batch_norm: bool = False) -> None:
        super().__init__()
        self.fc = nn.Linear(D_IN, K)
        self.bn = nn.BatchNorm1d(K, momentum=0.5) if batch_norm else None

    def forward(self, x: Tensor) -> Tensor:
        o = self.fc(x)
        return self.bn(o) if self.bn is not None else o


def models(seed: int = 0, meta_bn: bool = False) -> tuple[TinyTask, TinyMeta]:
    torch.manual_seed(seed)
    task, meta = TinyTask().double(), TinyMeta(meta_bn).double()
    with torch.no_grad():  # make BN affine parameters non-trivial
        task.bn.weight.uniform_(0.5, 1.5)
        task.bn.bias.uniform_(-0.5, 0.5)
    return task, meta


def batch(seed: int = 1, n: int = 8) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D_IN, generator=g, dtype=torch.float64)
    y_d = torch.randint(0, N_D, (n,), generator=g)
    y_q = torch.randint(0, N_Q, (n,), generator=g)
    return x, y_d, y_q


def closures(
    meta: nn.Module, x: Tensor, y_d: Tensor, y_q: Tensor, *, direct: bool = True, aux: bool = True
) -> tuple[Callable[..., Tensor], Callable[..., Tensor]]:
    """MKCNet's losses: inner = L_D + L_Ω / L (soft focal), outer = L_D − w · H(mean y_ω)."""
    mask = JointEncodingMask(N_D, N_Q, L)
    joint = mask.encode(y_d, y_q)

    def inner(forward: Callable[..., tuple[Tensor, Tensor]]) -> Tensor:
        main, aux_logits = forward(x)
        loss = F.cross_entropy(main, y_d)
        if aux:
            loss = loss + focal_loss(aux_logits, mask.masked_softmax(meta(x), joint), gamma=2.0) / L
        return loss

    def outer(forward: Callable[..., tuple[Tensor, Tensor]]) -> Tensor:
        main, _ = forward(x)
        loss = F.cross_entropy(main, y_d)
        if direct:
            loss = loss - ENTROPY_WEIGHT * batch_entropy(mask.masked_softmax(meta(x), joint))
        return loss

    return inner, outer


# ---------------------------------------------------------------- naive reference (manual forward)


def _task_apply(p: dict[str, Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    h = x @ p["fc.weight"].T + p["fc.bias"]
    mean, var = h.mean(0), h.var(0, unbiased=False)
    h = (h - mean) / torch.sqrt(var + 1e-5) * p["bn.weight"] + p["bn.bias"]
    z = torch.tanh(h)
    return z @ p["main.weight"].T + p["main.bias"], z @ p["aux.weight"].T + p["aux.bias"]


def _meta_targets(w: Tensor, b: Tensor, x: Tensor, y_d: Tensor, y_q: Tensor) -> Tensor:
    """y_ω row by row: exp(o) on the slice of j = y_q·N_d + y_d, zero elsewhere, normalised."""
    o = x @ w.T + b
    rows = []
    for i in range(x.shape[0]):
        j = int(y_q[i]) * N_D + int(y_d[i])
        on_slice = torch.tensor([1.0 if k // L == j else 0.0 for k in range(K)], dtype=torch.float64)
        e = torch.exp(o[i]) * on_slice
        rows.append(e / e.sum())
    return torch.stack(rows)


def reference_losses(
    theta: dict[str, Tensor],
    phi: tuple[Tensor, Tensor],
    x: Tensor,
    y_d: Tensor,
    y_q: Tensor,
    *,
    direct: bool = True,
    aux: bool = True,
) -> tuple[Callable[[dict[str, Tensor]], Tensor], Callable[[dict[str, Tensor]], Tensor]]:
    """Naive inner(θ) and outer(θ̃) for fixed φ (focal loss written out, entropy of the batch mean)."""
    y_w = _meta_targets(phi[0], phi[1], x, y_d, y_q)

    def ce(logits: Tensor) -> Tensor:
        return -(torch.log_softmax(logits, 1)[torch.arange(len(y_d)), y_d]).mean()

    def inner(t: dict[str, Tensor]) -> Tensor:
        main, aux_logits = _task_apply(t, x)
        loss = ce(main)
        if aux:
            log_p = torch.log_softmax(aux_logits, 1)
            loss = loss + (-(y_w * (1 - log_p.exp()) ** 2 * log_p).sum(1)).mean() / L
        return loss

    def outer(t: dict[str, Tensor]) -> Tensor:
        main, _ = _task_apply(t, x)
        loss = ce(main)
        if direct:
            mean = y_w.mean(0)
            loss = loss + ENTROPY_WEIGHT * (mean * torch.log(mean + 1e-20)).sum()
        return loss

    return inner, outer


def pseudo_update(
    theta: dict[str, Tensor],
    inner: Callable[[dict[str, Tensor]], Tensor],
    lr: float,
    wd: float,
    trainable: set[str],
) -> dict[str, Tensor]:
    """θ̃ = θ − α(∇θ L_inner + wd·θ) on the trainable entries (values only)."""
    t = {n: v.detach().clone().requires_grad_(n in trainable) for n, v in theta.items()}
    names = sorted(trainable)
    grads = torch.autograd.grad(inner(t), [t[n] for n in names], allow_unused=True)
    out = {n: v.detach() for n, v in t.items()}
    for n, g in zip(names, grads, strict=True):
        out[n] = out[n] - lr * ((0.0 if g is None else g) + wd * out[n])
    return out


def reference_outer_at_pseudo_update(
    task: nn.Module,
    phi: tuple[Tensor, Tensor],
    x: Tensor,
    y_d: Tensor,
    y_q: Tensor,
    lr: float,
    wd: float,
    **kw: bool,
) -> Tensor:
    """L_outer(θ̃(φ), φ), evaluated from scratch with the naive reference."""
    theta = {n: p.detach() for n, p in task.named_parameters()}
    trainable = {n for n, p in task.named_parameters() if p.requires_grad}
    inner, outer = reference_losses(theta, phi, x, y_d, y_q, **kw)
    return outer(pseudo_update(theta, inner, lr, wd, trainable)).detach()


def central_differences(fn: Callable[[tuple[Tensor, Tensor]], Tensor], phi: tuple[Tensor, Tensor]):
    """Central finite differences of a scalar function of the meta parameters (float64)."""
    grads = []
    for which in range(2):
        g = torch.zeros_like(phi[which])
        flat = g.view(-1)
        for k in range(flat.numel()):
            shifted = []
            for sign in (1.0, -1.0):
                p = [phi[0].detach().clone(), phi[1].detach().clone()]
                p[which].view(-1)[k] += sign * H
                shifted.append(fn((p[0], p[1])))
            flat[k] = (shifted[0] - shifted[1]) / (2 * H)
        grads.append(g)
    return grads
