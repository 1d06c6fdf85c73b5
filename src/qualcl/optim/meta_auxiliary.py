"""``MetaAuxiliaryOptimizer``: the MAXL / MKCNet "learning to learn" step for an auxiliary-label generator."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.parallel import DataParallel, DistributedDataParallel

from qualcl._validation import check_choice, check_nonnegative, check_positive
from qualcl.distributed import all_reduce_sum, is_distributed, world_size

__all__ = ["MetaAuxiliaryOptimizer", "MetaMode", "TaskForward"]

MetaMode = Literal["second_order", "first_order", "finite_difference"]
"""How :class:`MetaAuxiliaryOptimizer` differentiates through the pseudo update."""

TaskForward = Callable[..., Any]
"""``task_forward(*args, **kwargs)``: runs the task model's ``forward`` at a given set of weights."""

LossFn = Callable[[TaskForward], Tensor]

_MODES: tuple[str, ...] = get_args(MetaMode)


def _unwrap(model: nn.Module) -> nn.Module:
    while isinstance(model, (DistributedDataParallel, DataParallel)):
        model = model.module
    return model


def _check_rate(name: str, value: object) -> float:
    return check_nonnegative(name, value)


def _zeros_if_none(grads: tuple[Tensor | None, ...], like: list[Tensor]) -> list[Tensor]:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, like, strict=True)]


def _grad(output: Tensor, inputs: list[Tensor], *, create_graph: bool = False) -> list[Tensor]:
    """``d output / d inputs`` with zeros for inputs the output does not depend on."""
    if not output.requires_grad:
        return [torch.zeros_like(p) for p in inputs]
    grads = torch.autograd.grad(output, inputs, create_graph=create_graph, allow_unused=True)
    return _zeros_if_none(grads, inputs)


def _reaches(output: Tensor, params: list[Tensor]) -> bool:
    """Whether ``output``'s autograd graph leads to any of ``params`` (so that its gradient can be non-zero)."""
    if output.grad_fn is None:
        return output.requires_grad and any(output is p for p in params)
    wanted = {id(p) for p in params}
    seen: set[int] = set()
    stack = [output.grad_fn]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        variable = getattr(node, "variable", None)  # AccumulateGrad: a leaf tensor
        if variable is not None and id(variable) in wanted:
            return True
        stack.extend(child for child, _ in node.next_functions if child is not None)
    return False


def _norm(tensors: list[Tensor]) -> Tensor:
    if not tensors:
        return torch.zeros(())
    norms = torch.stack([torch.linalg.vector_norm(t.detach()).float() for t in tensors])
    total: Tensor = torch.linalg.vector_norm(norms)
    return total


def _mean_over_ranks(tensors: list[Tensor]) -> list[Tensor]:
    """Average ``tensors`` over every process (one flat all-reduce per dtype and device), with gradients.

    The forward is ``(1/W) Σ_r x_r``; the backward sums every rank's upstream gradient and divides it
    by ``W`` (:func:`qualcl.distributed.all_reduce_sum`, itself differentiable), so a gradient that
    is averaged here stays twice differentiable w.r.t. ``φ`` on every rank. The identity on one process.
    """
    if not is_distributed():
        return list(tensors)
    world = world_size()
    out: list[Tensor] = list(tensors)
    buckets: dict[tuple[torch.dtype, torch.device], list[int]] = {}
    for i, t in enumerate(tensors):
        buckets.setdefault((t.dtype, t.device), []).append(i)
    for indices in buckets.values():
        flat = all_reduce_sum(torch.cat([tensors[i].reshape(-1) for i in indices])) / world
        start = 0
        for i in indices:
            out[i] = flat[start : start + tensors[i].numel()].view_as(tensors[i])
            start += tensors[i].numel()
    return out


class MetaAuxiliaryOptimizer:
    r"""One meta-auxiliary ("learning to learn") step for the model that generates auxiliary targets.

    A task model ``f_θ`` is trained on an inner loss that contains auxiliary targets produced by a
    meta model ``g_φ`` (MAXL's label generator, MKCNet's Meta Learner). The meta model is trained so
    that one step of the task model on those targets lowers an outer loss:

    .. math::
        \tilde\theta(\phi) = \theta - \alpha\big(\nabla_\theta L_{inner}(\theta, \phi) + \lambda\,\theta\big),
        \qquad
        \phi \leftarrow \mathrm{opt}\Big(\frac{d}{d\phi} L_{outer}\big(\tilde\theta(\phi), \phi\big)\Big)

    with ``α = inner_lr`` (in MKCNet the Task Net's current learning rate) and ``λ = weight_decay``
    (MKCNet puts the SGD weight decay, 5e-4, inside the pseudo step; the paper's Eq. 3 and MAXL do
    not, which is ``weight_decay=0``). By the chain rule the meta gradient has two parts,

    .. math::
        \frac{dL_{outer}}{d\phi} =
        \underbrace{\partial_\phi L_{outer}(\tilde\theta, \phi)}_{\text{direct}}
        \; - \; \alpha\, \underbrace{\nabla^2_{\phi\theta} L_{inner}(\theta, \phi)\;
        \nabla_{\tilde\theta} L_{outer}(\tilde\theta, \phi)}_{\text{mixed second-order term}}

    (the direct part is e.g. MKCNet's entropy regulariser on ``y_ω``; the mixed term is how the
    auxiliary targets change the task model's step). ``mode`` chooses how it is computed:

    - ``"second_order"`` (MAXL, MKCNet default): exact. ``∇θ L_inner`` is taken with
      ``create_graph=True`` and ``L_outer`` is back-propagated through ``θ̃`` into ``φ``.
    - ``"finite_difference"`` (DARTS; the official ``FirstOrder_MKCNet`` / MAXL "first order"
      scripts): the direct part exactly, the mixed term by a central difference
      ``(∇φ L_inner(θ + εd) − ∇φ L_inner(θ − εd)) / 2ε`` with ``d = ∇θ̃ L_outer`` and
      ``ε = fd_radius / ‖d‖``. No double backward; error ``O(ε²)``; costs two extra inner passes.
    - ``"first_order"``: the direct part only. ``θ̃`` is treated as a constant, i.e. the
      dependence of ``θ̃`` on ``φ`` through ``∇θ L_inner`` is ignored, which drops the whole mixed
      term ``−α ∇²_{φθ} L_inner · ∇θ̃ L_outer`` (there is no first-order piece of it: ``φ`` reaches
      ``θ̃`` only through a gradient). It is DARTS' "first-order approximation" (``ξ = 0``), the
      cheapest baseline; note it is *not* what the MKCNet/MAXL code calls "first order" — that is
      ``"finite_difference"``. If the outer loss does not depend on ``φ`` directly, the meta
      gradient is zero in this mode.

    The step uses :func:`torch.func.functional_call` on the real module, so the pseudo-updated
    model is the same function as the trained one (the official code re-implements a functional
    forward that differs in the GAB/MAB, see ``docs/mkcnet.md``, "Decisions"). It leaves ``θ``, the task
    model's gradients and its buffers unchanged: every ``task_forward`` call runs on fresh copies of
    the buffers, so BatchNorm running statistics are not touched by the pseudo step (BatchNorm
    still uses batch statistics when the module is in training mode — the step does not change
    ``train()``/``eval()``). It overwrites ``.grad`` of every trainable meta-model parameter with
    the meta gradient (stale gradients, e.g. from a task step where ``y_ω`` was not detached, are
    discarded) and calls ``meta_optimizer.step()``; ``.grad`` is left in place for inspection.

    **Distributed: exact under DDP.** DDP does not support double backward (pytorch #47562,
    #63929), so the step never runs through a ``DistributedDataParallel`` wrapper: ``task_model``
    and ``meta_model`` may be passed wrapped or not, the step works on ``.module`` (see
    :attr:`task_module`, :attr:`meta_module`). When a process group with more than one process is
    initialised (``sync_meta_grads=None``) or when ``sync_meta_grads=True``, every gradient the
    step takes is the one DDP would take, the mean over ranks of each rank's gradient of its own
    loss:

    - ``∇θ L_inner``, averaged with an autograd-aware all-reduce (its backward sums every rank's
      upstream gradient, divided by ``W``), so every rank pseudo-updates ``θ`` to the same ``θ̃``
      and, in ``"second_order"`` mode, ``θ̃`` stays differentiable w.r.t. the ``φ`` of every rank;
    - the finite difference's direction ``d = ∇θ̃ L_outer`` (one ``ε`` on every rank);
    - the meta gradient, averaged once by the step (a DDP wrapper of the meta model plays no part:
      nothing is back-propagated through it), before ``meta_optimizer.step()``.

    Every rank therefore takes the same step, and it equals one process calling :meth:`step` on the
    concatenated batch (up to rounding: tested in float64 to ~1e-10 relative) in every mode, for
    any per-rank batch sizes, under the condition that makes DDP's gradient averaging exact: the
    mean over ranks of the closures' losses is the one-process loss, as a function of ``θ`` and
    ``φ``. That holds when

    - per-sample terms take their mean over the samples of every rank, as qualcl's losses do with
      ``gather_distributed=True`` (``W ×`` local sum / global count). Per-rank means
      (``torch.nn.functional.cross_entropy``, ``gather_distributed=False``) satisfy it only when
      every rank holds the same number of samples;
    - batch-global terms are computed over the rows of every rank, e.g. MKCNet's entropy of the
      batch-averaged targets from :func:`qualcl.distributed.all_reduce_sum` of the per-rank sums
      and counts (:func:`~qualcl.functional.batch_entropy` of one rank's rows is not);
    - BatchNorm layers in training mode (in either model) are synchronised:
      :class:`qualcl.distributed.SyncBatchNorm` (``convert_sync_batchnorm(model, backend="qualcl")``,
      any device) is twice differentiable and is supported in every mode, ``"second_order"``
      included. :class:`torch.nn.SyncBatchNorm` (CUDA) is not twice differentiable (its backward
      all-reduces outside autograd): ``"first_order"`` and ``"finite_difference"`` only. Plain
      BatchNorm normalises each rank with its own statistics, and the step then is not exact.

    ``tests/optim/test_meta_auxiliary_ddp.py`` checks this on two gloo processes holding 3/8 and
    5/8 of a float64 batch, with and without SyncBatchNorm. Every rank must call :meth:`step`
    together, and its closures must run the same collectives in the same order; a rank that raises
    (a non-finite loss) leaves the others waiting. Inside the loss closures call the *unwrapped*
    meta model (``opt.meta_module``), never its DDP wrapper. With ``sync_meta_grads=False`` under a
    process group each rank steps on its own batch alone (the replicas of ``φ`` drift apart).
    ``torch.compile`` of the step is not supported (pytorch #183603).

    **An optimizer wrapper.** It is not a :class:`torch.optim.Optimizer` subclass, as its
    :meth:`step` takes two loss closures, but it has what loops, schedulers and checkpoints use of
    one: :attr:`param_groups` and :attr:`state` (the meta optimizer's), :meth:`zero_grad`, and
    :meth:`state_dict` / :meth:`load_state_dict` (the meta optimizer's state and the step's
    settings; a restored optimizer takes the same next step).

    Args:
        task_model: The task network ``f_θ`` (optionally DDP/DataParallel-wrapped). Its trainable
            parameters are ``θ``; frozen ones (``requires_grad=False``) are used as they are.
        meta_model: The auxiliary-target generator ``g_φ`` (optionally wrapped); its trainable
            parameters are ``φ``.
        meta_optimizer: Optimizer over (a subset of) the meta model's parameters.
        inner_lr: ``α`` of the pseudo update, ``>= 0``, or a zero-argument callable returning it at
            each step, e.g. ``lambda: task_optimizer.param_groups[0]["lr"]`` to follow a scheduler.
        weight_decay: ``λ`` of the pseudo update, ``>= 0``.
        mode: ``"second_order"``, ``"first_order"`` or ``"finite_difference"`` (see above).
        fd_radius: Step length ``ε ‖d‖`` of the finite difference (DARTS and MKCNet: 0.01).
        sync_meta_grads: Average the inner gradient, the finite-difference direction, the meta
            gradient and the logged losses over ranks (see "Distributed"); ``None`` (default) does
            so whenever a process group with more than one process is initialised.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> task, meta = nn.Linear(4, 6), nn.Linear(4, 6)
        >>> meta_optimizer = torch.optim.SGD(meta.parameters(), lr=1e-3)
        >>> opt = MetaAuxiliaryOptimizer(task, meta, meta_optimizer, inner_lr=0.01)
        >>> x, y = torch.randn(8, 4), torch.randint(0, 6, (8,))
        >>> def inner(forward):  # task loss on the meta model's soft targets
        ...     return -(torch.softmax(meta(x), 1) * torch.log_softmax(forward(x), 1)).sum(1).mean()
        >>> def outer(forward):  # primary loss at the pseudo-updated weights
        ...     return nn.functional.cross_entropy(forward(x), y)
        >>> sorted(opt.step(inner, outer))
        ['inner_grad_norm', 'inner_loss', 'inner_lr', 'meta_grad_norm', 'outer_loss']

    Reference:
        Liu, Davison and Johns, "Self-Supervised Generalisation with Meta Auxiliary Learning" (MAXL),
        NeurIPS 2019; Che et al., "Image Quality-aware Diagnosis via Meta-knowledge Co-embedding"
        (MKCNet), CVPR 2023, Eqs. 3–4; Liu, Simonyan and Yang, "DARTS", ICLR 2019 (finite difference).
    """

    def __init__(
        self,
        task_model: nn.Module,
        meta_model: nn.Module,
        meta_optimizer: torch.optim.Optimizer,
        inner_lr: float | Callable[[], float],
        weight_decay: float = 0.0,
        mode: MetaMode = "second_order",
        *,
        fd_radius: float = 0.01,
        sync_meta_grads: bool | None = None,
    ) -> None:
        if not isinstance(task_model, nn.Module):
            raise TypeError(f"task_model must be a torch.nn.Module, got {type(task_model).__name__}")
        if not isinstance(meta_model, nn.Module):
            raise TypeError(f"meta_model must be a torch.nn.Module, got {type(meta_model).__name__}")
        if not isinstance(meta_optimizer, torch.optim.Optimizer):
            got = type(meta_optimizer).__name__
            raise TypeError(f"meta_optimizer must be a torch.optim.Optimizer, got {got}")
        check_choice("mode", mode, _MODES)
        if not callable(inner_lr):
            _check_rate("inner_lr", inner_lr)
        self._task = _unwrap(task_model)
        self._meta = _unwrap(meta_model)
        self._theta = [(n, p) for n, p in self._task.named_parameters() if p.requires_grad]
        self._phi: list[Tensor] = [p for p in self._meta.parameters() if p.requires_grad]
        if not self._theta:
            raise ValueError("task_model has no trainable parameters (requires_grad=True)")
        if not self._phi:
            raise ValueError("meta_model has no trainable parameters (requires_grad=True)")
        phi_ids = {id(p) for p in self._phi}
        if any(id(p) in phi_ids for _, p in self._theta):
            raise ValueError("task_model and meta_model share trainable parameters; θ and φ must be disjoint")
        foreign = [p for g in meta_optimizer.param_groups for p in g["params"] if id(p) not in phi_ids]
        if foreign:
            raise ValueError(
                f"meta_optimizer holds {len(foreign)} parameter(s) that are not trainable parameters of "
                "meta_model; it must optimise the meta model only"
            )
        if sync_meta_grads is not None and not isinstance(sync_meta_grads, bool):
            raise TypeError(f"sync_meta_grads must be a bool or None, got {type(sync_meta_grads).__name__}")
        self.meta_optimizer = meta_optimizer
        self.inner_lr: float | Callable[[], float] = inner_lr
        self.weight_decay = _check_rate("weight_decay", weight_decay)
        self.mode: MetaMode = mode
        self.fd_radius = check_positive("fd_radius", fd_radius)
        self.sync_meta_grads = sync_meta_grads

    @property
    def task_module(self) -> nn.Module:
        """The task model with any DDP/DataParallel wrapper removed (what the step runs on)."""
        return self._task

    @property
    def meta_module(self) -> nn.Module:
        """The meta model with any DDP/DataParallel wrapper removed; call this one in the loss closures."""
        return self._meta

    # ------------------------------------------------------------------ the torch.optim.Optimizer surface
    # A wrapper, not a subclass: its step takes two loss closures, not one. What a training loop or a
    # checkpoint expects of an optimizer is delegated to the meta optimizer it wraps.
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The meta optimizer's parameter groups (``lr`` and the rest: what a scheduler changes)."""
        groups: list[dict[str, Any]] = self.meta_optimizer.param_groups
        return groups

    @property
    def state(self) -> Any:
        """The meta optimizer's per-parameter state (e.g. Adam's moments)."""
        return self.meta_optimizer.state

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the meta model's gradients (as ``torch.optim.Optimizer.zero_grad``)."""
        self.meta_optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        """What resumes the meta step exactly: the meta optimizer's state and the step's settings.

        ``inner_lr`` is stored when it is a number; a callable (a scheduler's rate) is restored by
        the caller with the scheduler.
        """
        settings = {"weight_decay": self.weight_decay, "mode": self.mode, "fd_radius": self.fd_radius}
        if not callable(self.inner_lr):
            settings["inner_lr"] = self.inner_lr
        return {"meta_optimizer": self.meta_optimizer.state_dict(), "settings": settings}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output.

        Raises:
            ValueError: ``state_dict`` is not one, or was saved with another ``mode`` (the step
                would silently differentiate differently).
        """
        if not isinstance(state_dict, dict) or set(state_dict) != {"meta_optimizer", "settings"}:
            raise ValueError("state_dict must come from MetaAuxiliaryOptimizer.state_dict()")
        settings = state_dict["settings"]
        if settings.get("mode") != self.mode:
            raise ValueError(
                f"state_dict was saved with mode={settings.get('mode')!r}, this optimizer has {self.mode!r}"
            )
        self.meta_optimizer.load_state_dict(state_dict["meta_optimizer"])
        self.weight_decay = _check_rate("weight_decay", settings["weight_decay"])
        self.fd_radius = check_positive("fd_radius", settings["fd_radius"])
        if "inner_lr" in settings and not callable(self.inner_lr):
            self.inner_lr = _check_rate("inner_lr", settings["inner_lr"])

    def _synchronised(self) -> bool:
        return bool(self.sync_meta_grads) or (self.sync_meta_grads is None and is_distributed())

    def current_inner_lr(self) -> float:
        """Return ``α`` for the next step (calling ``inner_lr`` if it is callable) after checking it."""
        value = self.inner_lr() if callable(self.inner_lr) else self.inner_lr
        return _check_rate("inner_lr", value)

    def _forward_at(self, weights: list[Tensor]) -> TaskForward:
        names = [n for n, _ in self._theta]
        frozen = {n: p for n, p in self._task.named_parameters() if not p.requires_grad}
        buffers = dict(self._task.named_buffers())

        def task_forward(*args: Any, **kwargs: Any) -> Any:
            state: dict[str, Tensor] = {**frozen, **{n: b.clone() for n, b in buffers.items()}}
            state.update(zip(names, weights, strict=True))
            return functional_call(self._task, state, args, kwargs, tie_weights=True, strict=False)

        return task_forward

    @staticmethod
    def _loss(fn: LossFn, forward: TaskForward, name: str) -> Tensor:
        if not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
        loss = fn(forward)
        if not isinstance(loss, Tensor):
            raise TypeError(f"{name} must return a scalar torch.Tensor, got {type(loss).__name__}")
        if loss.numel() != 1 or not loss.is_floating_point():
            got = f"shape {tuple(loss.shape)} and dtype {loss.dtype}"
            raise ValueError(f"{name} must return a floating scalar tensor, got {got}")
        loss = loss.reshape(())
        if not bool(torch.isfinite(loss.detach())):
            raise ValueError(f"{name} returned a non-finite loss ({loss.item()}); no step was taken")
        return loss

    def _meta_buffers(self) -> list[tuple[Tensor, Tensor]]:
        return [(b, b.detach().clone()) for b in self._meta.buffers()]

    def step(self, inner_loss_fn: LossFn, outer_loss_fn: LossFn) -> dict[str, Tensor]:
        """Compute the meta gradient of ``φ`` (of every rank's batch if distributed) and step ``meta_optimizer``.

        Args:
            inner_loss_fn: ``inner_loss_fn(task_forward) -> L_inner``. ``task_forward(*args, **kwargs)``
                runs the task model's ``forward`` at the current weights ``θ``. ``L_inner`` must depend
                on the meta model's output (the auxiliary targets, not detached) for ``φ`` to learn
                anything beyond the direct part.
            outer_loss_fn: ``outer_loss_fn(task_forward) -> L_outer``, where ``task_forward`` runs at the
                pseudo-updated weights ``θ̃``. It may add terms in the meta model's output directly
                (MKCNet: ``-w · batch_entropy(y_ω)``).

        Returns:
            Detached scalar tensors for logging: ``inner_loss`` (``L_inner`` at ``θ``),
            ``outer_loss`` (``L_outer`` at ``θ̃``), ``inner_grad_norm`` (``‖∇θ L_inner‖``),
            ``meta_grad_norm`` (``‖dL_outer/dφ‖``) and ``inner_lr`` (``α``). When the step is
            synchronised (see "Distributed") all of them are the same on every rank: the losses
            are averaged over ranks and the norms are those of the averaged gradients.

        Raises:
            ValueError: If a closure returns a non-scalar or non-finite loss, ``inner_lr`` is invalid,
                the meta gradient is not finite, or (modes ``"second_order"`` and ``"finite_difference"``)
                neither loss depends on ``φ`` — auxiliary targets that were detached would give a zero
                meta gradient; ``φ`` and the optimizer state are then left untouched.

        Warns:
            UserWarning: ``L_inner`` does not depend on ``φ`` while ``L_outer`` does directly (the meta
                gradient is only the direct part), or, in ``"first_order"`` mode, ``L_outer`` has no
                direct term (the meta gradient is zero by that mode's definition).
                (Under DDP a rank that raises before the all-reduce leaves the other ranks waiting.)
        """
        lr = self.current_inner_lr()
        wd = self.weight_decay
        theta: list[Tensor] = [p for _, p in self._theta]
        second = self.mode == "second_order"
        sync = self._synchronised()

        inner = self._loss(inner_loss_fn, self._forward_at(theta), "inner_loss_fn")
        grads = _grad(inner, theta, create_graph=second)
        if sync:  # DDP's gradient: the mean over ranks, differentiable w.r.t. every rank's φ (second order)
            grads = _mean_over_ranks(grads)
        if second:
            theta_tilde = [p - lr * (g + wd * p) for p, g in zip(theta, grads, strict=True)]
        else:
            with torch.no_grad():
                theta_tilde = [p - lr * (g + wd * p) for p, g in zip(theta, grads, strict=True)]
        if self.mode == "finite_difference":
            theta_tilde = [t.requires_grad_() for t in theta_tilde]
        outer = self._loss(outer_loss_fn, self._forward_at(theta_tilde), "outer_loss_fn")

        self._check_meta_path(inner, outer)
        if self.mode == "finite_difference":
            n = len(theta_tilde)
            both = _grad(outer, theta_tilde + self._phi)
            direction, meta = both[:n], both[n:]
            if sync:  # d = ∇θ̃ of the whole batch's outer loss, hence one ε on every rank
                direction = _mean_over_ranks(direction)
            meta = self._add_mixed_term(meta, inner_loss_fn, theta, direction, lr)
        else:
            meta = _grad(outer, self._phi)

        meta = [m.detach() for m in meta]
        inner_value, outer_value = inner.detach(), outer.detach()
        if sync:  # each rank's part of dL/dφ (every path through the other ranks included): their mean
            *meta, inner_value, outer_value = _mean_over_ranks([*meta, inner_value, outer_value])
        meta_norm = _norm(meta)
        if not bool(torch.isfinite(meta_norm)):
            raise ValueError("the meta gradient is not finite; meta_optimizer was not stepped")
        for p, m in zip(self._phi, meta, strict=True):
            p.grad = m
        self.meta_optimizer.step()
        device = inner.device
        return {
            "inner_loss": inner_value,
            "outer_loss": outer_value,
            "inner_grad_norm": _norm(grads).to(device),
            "meta_grad_norm": meta_norm.to(device),
            "inner_lr": torch.tensor(lr, device=device),
        }

    def _check_meta_path(self, inner: Tensor, outer: Tensor) -> None:
        """Refuse (or warn about) a step whose meta gradient has no path to ``φ``.

        The meta gradient reaches ``φ`` through the inner loss (the mixed term; not in
        ``"first_order"``) or through the outer loss directly. Auxiliary targets that are detached
        (``.detach()``, ``torch.no_grad()``, a ``.item()`` round trip) cut the first path.
        """
        if torch.compiler.is_compiling():
            return
        via_inner = self.mode != "first_order" and _reaches(inner, self._phi)
        if self.mode == "second_order":
            # θ̃ carries the inner gradient's graph: outer reaches φ through it only if inner does
            direct = _reaches(outer, self._phi) if not via_inner else True
        else:
            direct = _reaches(outer, self._phi)
        hint = (
            "are the auxiliary targets detached (.detach(), torch.no_grad(), .item()), or computed by "
            "another model than meta_model?"
        )
        if self.mode != "first_order" and not via_inner and not direct:
            raise ValueError(
                "neither inner_loss_fn nor outer_loss_fn depends on meta_model's trainable parameters, so the "
                f"meta gradient would be zero: {hint} meta_optimizer was not stepped"
            )
        if self.mode != "first_order" and not via_inner:
            warnings.warn(
                "inner_loss_fn does not depend on meta_model's trainable parameters: the meta gradient is only "
                f"outer_loss_fn's direct part ({hint})",
                UserWarning,
                stacklevel=3,
            )
        if self.mode == "first_order" and not direct:
            warnings.warn(
                "outer_loss_fn does not depend on meta_model's trainable parameters directly, and mode='first_order' "
                "drops the path through inner_loss_fn: the meta gradient is zero and meta_optimizer steps on zeros",
                UserWarning,
                stacklevel=3,
            )

    def _add_mixed_term(
        self, direct: list[Tensor], inner_loss_fn: LossFn, theta: list[Tensor], d: list[Tensor], lr: float
    ) -> list[Tensor]:
        """``direct − α (∇φ L_inner(θ + εd) − ∇φ L_inner(θ − εd)) / 2ε``, the DARTS finite difference."""
        d_norm = float(_norm(d))
        if not math.isfinite(d_norm):
            raise ValueError("the gradient of outer_loss_fn at the pseudo-updated weights is not finite")
        if lr == 0 or d_norm == 0:
            return direct
        eps = self.fd_radius / d_norm
        # The two extra inner passes must not move the meta model's running statistics: keep the
        # buffer updates identical to those of the exact (second-order) step.
        saved = self._meta_buffers()
        try:
            with torch.no_grad():
                plus = [p + eps * v for p, v in zip(theta, d, strict=True)]
                minus = [p - eps * v for p, v in zip(theta, d, strict=True)]
            g_plus = _grad(self._loss(inner_loss_fn, self._forward_at(plus), "inner_loss_fn"), self._phi)
            g_minus = _grad(self._loss(inner_loss_fn, self._forward_at(minus), "inner_loss_fn"), self._phi)
        finally:
            with torch.no_grad():
                for live, copy in saved:
                    live.copy_(copy)
        scale = lr / (2 * eps)
        return [m - scale * (gp - gm) for m, gp, gm in zip(direct, g_plus, g_minus, strict=True)]
