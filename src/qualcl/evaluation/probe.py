"""Linear probe on frozen features: multinomial logistic regression fitted in float64 with L-BFGS.

Fine-tuning results mix what pre-training learned with what fine-tuning re-learns, and at CPU
scale they vary a lot between seeds. A linear probe of the frozen, standardised features, fitted to
convergence, is deterministic given the encoder, so it isolates the representation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from qualcl._validation import check_class_ids, check_features, check_int, check_nonnegative

__all__ = ["LinearProbe", "linear_probe"]


class LinearProbe:
    """Multinomial logistic regression on standardised features, fitted with full-batch L-BFGS.

    Minimises ``mean_i CE(W x_i + b, y_i) + weight_decay · ||W||²`` (the bias is not penalised), the
    objective of scikit-learn's multinomial ``LogisticRegression(C=1 / (2 · weight_decay · N))`` for
    three or more classes (for two, sklearn's single logit ``w`` matches ``C=1 / (weight_decay · N)``).
    Features are standardised with the training mean and (biased) standard deviation. The start is
    zero, so the fit is deterministic.

    Args:
        num_classes: Number of classes ``C``.
        weight_decay: L2 penalty on ``W``.
        max_iter: L-BFGS iterations.

    Examples:
        >>> import torch
        >>> x = torch.tensor([[0.0], [1.0], [10.0], [11.0]], dtype=torch.float64)
        >>> probe = LinearProbe(2).fit(x, torch.tensor([0, 0, 1, 1]))
        >>> probe.predict(torch.tensor([[0.5], [10.5]], dtype=torch.float64)).tolist()
        [0, 1]

    Reference:
        Alain and Bengio, "Understanding intermediate layers using linear classifier probes", 2016;
        the linear-evaluation protocol of SimCLR (Chen et al., 2020).
    """

    def __init__(self, num_classes: int, *, weight_decay: float = 1e-3, max_iter: int = 500) -> None:
        num_classes = check_int("num_classes", num_classes, minimum=2)
        weight_decay = check_nonnegative("weight_decay", weight_decay)
        max_iter = check_int("max_iter", max_iter, minimum=1)
        self.num_classes = num_classes
        self.weight_decay = float(weight_decay)
        self.max_iter = int(max_iter)
        self.mean: Tensor | None = None
        self.std: Tensor | None = None
        self.weight: Tensor | None = None
        self.bias: Tensor | None = None

    def _standardise(self, features: Tensor) -> Tensor:
        if self.mean is None or self.std is None:
            raise RuntimeError("call fit() first")
        check_features("features", features, dim=self.mean.shape[0])
        return (features.double() - self.mean) / self.std

    def fit(self, features: Tensor, labels: Tensor) -> LinearProbe:
        """Fit on ``(N, D)`` features and ``(N,)`` class ids in ``[0, num_classes)``; returns ``self``."""
        check_features("features", features)
        y = check_class_ids("labels", labels, self.num_classes, n=features.shape[0])
        x = features.double()
        self.mean = x.mean(dim=0)
        self.std = x.std(dim=0, unbiased=False).clamp_min(1e-12)
        x = self._standardise(x)
        weight = torch.zeros(x.shape[1], self.num_classes, dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(self.num_classes, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [weight, bias],
            lr=1.0,
            max_iter=self.max_iter,
            tolerance_grad=1e-10,
            tolerance_change=1e-12,
            line_search_fn="strong_wolfe",
        )

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = F.cross_entropy(x @ weight + bias, y) + self.weight_decay * weight.pow(2).sum()
            loss.backward()  # type: ignore[no-untyped-call]
            return loss

        optimizer.step(closure)  # type: ignore[no-untyped-call]
        self.weight, self.bias = weight.detach(), bias.detach()
        return self

    def logits(self, features: Tensor) -> Tensor:
        """``(N, C)`` float64 logits of ``(N, D)`` features."""
        if self.weight is None or self.bias is None:
            raise RuntimeError("call fit() first")
        return self._standardise(features) @ self.weight + self.bias

    def predict(self, features: Tensor) -> Tensor:
        """``(N,)`` predicted class ids."""
        return self.logits(features).argmax(dim=1)


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    *,
    weight_decay: float = 1e-3,
) -> Tensor:
    """Fit a :class:`LinearProbe` on ``(N_train, D)`` features and predict ``(N_test,)`` class ids.

    Examples:
        >>> import torch
        >>> train = torch.tensor([[0.0], [1.0], [5.0], [6.0]])
        >>> linear_probe(train, torch.tensor([0, 0, 1, 1]), torch.tensor([[5.5]]), 2).tolist()
        [1]
    """
    probe = LinearProbe(num_classes, weight_decay=weight_decay).fit(train_features, train_labels)
    return probe.predict(test_features)
