"""Downstream evaluations of the image–text recipe: cross-modal recall and the few-shot heads."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["few_shot_indices", "prompt_head_classify", "prompt_head_fit", "text_recall"]


def text_recall(
    image_embeddings: Tensor, text_embeddings: Tensor, captions: Sequence[str], ks: Sequence[int]
) -> dict[str, float]:
    """Image→text and text→image recall@k, a hit being any item with the same caption text.

    With per-image captions the positive is the image's own caption (and any identical one);
    with class-level captions every same-class item counts, so recall measures class retrieval.

    Args:
        image_embeddings: ``(N, D)`` normalised.
        text_embeddings: ``(N, D)`` normalised, row ``i`` the caption of image ``i``.
        captions: The ``N`` caption strings.
        ks: Cut-offs.

    Returns:
        ``{"i2t_r@k": …, "t2i_r@k": …}`` for each ``k`` (capped at ``N``).

    Examples:
        >>> import torch
        >>> e = torch.eye(3)
        >>> text_recall(e, e, ["a", "b", "c"], [1])
        {'i2t_r@1': 1.0, 't2i_r@1': 1.0}
    """
    n = len(captions)
    if image_embeddings.shape[0] != n or text_embeddings.shape[0] != n:
        raise ValueError(f"{n} captions for {image_embeddings.shape[0]} images and {text_embeddings.shape[0]} texts")
    ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
    key = torch.tensor([ids[c] for c in captions])
    same = key[:, None] == key[None, :]
    sims = image_embeddings.float() @ text_embeddings.float().T
    out: dict[str, float] = {}
    for k in ks:
        for name, scores in (("i2t", sims), ("t2i", sims.T)):  # ``same`` is symmetric: it serves both directions
            hits = same.gather(1, scores.topk(min(int(k), n), dim=1).indices)
            out[f"{name}_r@{k}"] = float(hits.any(dim=1).double().mean())
    return out


def few_shot_indices(labels: Tensor, shots: int, num_classes: int, seed: int) -> Tensor:
    """``shots`` random rows of each class (all of a class that has fewer), seeded.

    Examples:
        >>> import torch
        >>> few_shot_indices(torch.tensor([0, 0, 0, 1, 1, 2]), 2, 3, seed=0).numel()
        5
    """
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for c in range(num_classes):
        rows = torch.nonzero(labels == c).flatten()
        chosen.append(rows[torch.randperm(rows.numel(), generator=generator)[:shots]])
    return torch.cat(chosen).sort().values


def prompt_head_fit(
    embeddings: Tensor, labels: Tensor, class_embeddings: Tensor, *, scale: float, epochs: int = 200, lr: float = 1e-2
) -> Tensor:
    """A cosine classifier initialised with the class prompts' embeddings, tuned on the few shots.

    ``logits = scale · normalize(x) · normalize(W)ᵀ`` for the ``(K, D)`` shot embeddings ``x`` (classes
    ``labels``), ``W₀`` = the ``(C, D)`` class text embeddings (so epoch 0 is the zero-shot classifier);
    full-batch Adam on cross-entropy.

    Returns:
        ``(C, D)`` unit class vectors (classify with :func:`prompt_head_classify`).
    """
    weight = class_embeddings.detach().clone().float().requires_grad_()
    x = F.normalize(embeddings.float(), dim=-1)
    optimizer = torch.optim.Adam([weight], lr=lr)
    with torch.enable_grad():
        for _ in range(epochs):
            loss = F.cross_entropy(scale * x @ F.normalize(weight, dim=-1).T, labels)
            optimizer.zero_grad()
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
    return F.normalize(weight.detach(), dim=-1)


def prompt_head_classify(weight: Tensor, test_embeddings: Tensor) -> Tensor:
    """``(N_test,)`` class ids of the fitted head ``weight`` (:func:`prompt_head_fit`)."""
    with torch.no_grad():
        return (F.normalize(test_embeddings.float(), dim=-1) @ weight.T).argmax(dim=1)
