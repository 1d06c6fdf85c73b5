"""How finished MKCNet runs decide: predicted class shares, and macro F1 with two decision corrections.

The MKCNet claims (docs/results/claims.md) compare macro F1 of the argmax decisions; this reloads finished runs
(their weights, the same data), predicts the validation and test sets once more and reports, per run, the share
of test images given each class, the true shares, and accuracy / macro F1 after

- the logit adjustment ``argmax(log p − log π)`` with ``π`` the training class prior (Menon et al., "Long-tail
  learning via logit adjustment", ICLR 2021), and
- per-class biases ``argmax(log p + b)`` fitted on the validation set to its macro F1 (``b_0 = 0``; coordinate
  ascent over a grid of ``b_c`` in [−4, 4], three sweeps), then applied to the test set.

Usage (``QUALCL_CACHE`` as when the runs were made; each folder is read and re-evaluated, not changed):

    python -m benchmarks.mkcnet_decisions RUN_FOLDER [RUN_FOLDER ...] > decisions.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import yaml

from qualcl.metrics import diagnosis_metrics
from qualcl.recipes.config import config_from_dict
from qualcl.recipes.driver import RunContext
from qualcl.recipes.mkcnet.config import MkcnetConfig
from qualcl.recipes.mkcnet.recipe import MKCNET

GRID = torch.linspace(-4.0, 4.0, 81)


def macro_f1(decisions: torch.Tensor, target: torch.Tensor, classes: int) -> torch.Tensor:
    """Macro F1 of each row of ``(G, N)`` decisions against ``(N,)`` targets (a class never predicted nor true: 0)."""
    f1 = []
    for c in range(classes):
        predicted, true = decisions == c, target == c
        tp = (predicted & true).sum(1).double()
        f1.append(2 * tp / (predicted.sum(1) + true.sum()).clamp_min(1))
    return torch.stack(f1).mean(0)


def fitted_bias(log_probs: torch.Tensor, target: torch.Tensor, sweeps: int = 3) -> torch.Tensor:
    """``(C,)`` biases (``b_0 = 0``) on ``(N, C)`` log-probabilities that maximise macro F1 by coordinate ascent."""
    classes = log_probs.shape[1]
    bias = torch.zeros(classes, dtype=log_probs.dtype)
    for _ in range(sweeps):
        for c in range(1, classes):
            trial = bias.expand(len(GRID), classes).clone()
            trial[:, c] = GRID
            scores = macro_f1((log_probs[None] + trial[:, None]).argmax(2), target, classes)
            best = torch.nonzero(scores == scores.max()).flatten()
            bias[c] = GRID[best[GRID[best].abs().argmin()]]  # of equal scores, the smallest correction
    return bias


def decisions(folder: str | Path) -> dict[str, object]:
    """The test decisions of the finished MKCNet run in ``folder``: plain, prior-adjusted, validation-fitted."""
    config = config_from_dict(MkcnetConfig, yaml.safe_load(Path(folder, "config.yaml").read_text()))
    ctx = RunContext(config, folder, [])
    data = MKCNET.load_data(ctx)
    state = MKCNET.setup(ctx, data)
    for stage in MKCNET.stages(config):
        stage.run(ctx, data, state)  # finished: reloads the weights

    def predict(split: str) -> torch.Tensor:
        out = ctx.predict(
            lambda batch: {"probs": torch.softmax(state.task(batch[0]).diagnosis.float(), 1)},
            data.dataset(split),
            batch_size=64,
            modules=[state],
        )
        return out["probs"]

    probs = predict("test")
    target, classes = data.test.label, probs.shape[1]
    prior = torch.bincount(data.train.label, minlength=classes).double() / len(data.train.label)
    adjusted = torch.softmax(probs.double().log() - prior.log(), 1).float()
    bias = fitted_bias(predict("val").double().log(), data.val.label)
    fitted = torch.softmax(probs.double().log() + bias, 1).float()

    def shares(labels: torch.Tensor) -> list[float]:
        return [round(x, 3) for x in (torch.bincount(labels, minlength=classes).double() / len(labels)).tolist()]

    plain, adj, fit = (diagnosis_metrics(p, target) for p in (probs, adjusted, fitted))
    return {
        "run": str(folder),
        "auc": round(plain["auc"], 4),
        "accuracy": round(plain["accuracy"], 4),
        "macro_f1": round(plain["macro_f1"], 4),
        "accuracy_adjusted": round(adj["accuracy"], 4),
        "macro_f1_adjusted": round(adj["macro_f1"], 4),
        "accuracy_val_fitted": round(fit["accuracy"], 4),
        "macro_f1_val_fitted": round(fit["macro_f1"], 4),
        "val_fitted_bias": [round(x, 2) for x in bias.tolist()],
        "true_share": shares(target),
        "predicted_share": shares(probs.argmax(1)),
        "predicted_share_adjusted": shares(adjusted.argmax(1)),
        "predicted_share_val_fitted": shares(fitted.argmax(1)),
    }


def main(argv: list[str] | None = None) -> None:
    """One JSON line of :func:`decisions` per run folder named on the command line."""
    for run in sys.argv[1:] if argv is None else argv:
        print(json.dumps(decisions(run)), flush=True)


if __name__ == "__main__":
    main()
