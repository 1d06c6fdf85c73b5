"""How finished MKCNet runs decide: predicted class shares, and macro F1 with the train-prior logit adjustment.

The MKCNet claims (docs/results/claims.md) compare macro F1 of the argmax decisions; this reloads finished runs
(their weights, the same data), predicts the test set once more and reports, per run, the share of test images
given each class, the true shares, and accuracy / macro F1 after the logit adjustment ``argmax(log p − log π)``
with ``π`` the training class prior (Menon et al., "Long-tail learning via logit adjustment", ICLR 2021).

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


def decisions(folder: str | Path) -> dict[str, object]:
    """The test decisions of the finished MKCNet run in ``folder``, plain and prior-adjusted."""
    config = config_from_dict(MkcnetConfig, yaml.safe_load(Path(folder, "config.yaml").read_text()))
    ctx = RunContext(config, folder, [])
    data = MKCNET.load_data(ctx)
    state = MKCNET.setup(ctx, data)
    for stage in MKCNET.stages(config):
        stage.run(ctx, data, state)  # finished: reloads the weights
    out = ctx.predict(
        lambda batch: {"probs": torch.softmax(state.task(batch[0]).diagnosis.float(), 1)},
        data.dataset("test"),
        batch_size=64,
        modules=[state],
    )
    probs, target, classes = out["probs"], data.test.label, out["probs"].shape[1]
    prior = torch.bincount(data.train.label, minlength=classes).double() / len(data.train.label)
    adjusted = torch.softmax(probs.double().log() - prior.log(), 1).float()

    def shares(labels: torch.Tensor) -> list[float]:
        return [round(x, 3) for x in (torch.bincount(labels, minlength=classes).double() / len(labels)).tolist()]

    plain, adj = diagnosis_metrics(probs, target), diagnosis_metrics(adjusted, target)
    return {
        "run": str(folder),
        "auc": round(plain["auc"], 4),
        "accuracy": round(plain["accuracy"], 4),
        "macro_f1": round(plain["macro_f1"], 4),
        "accuracy_adjusted": round(adj["accuracy"], 4),
        "macro_f1_adjusted": round(adj["macro_f1"], 4),
        "true_share": shares(target),
        "predicted_share": shares(probs.argmax(1)),
        "predicted_share_adjusted": shares(adjusted.argmax(1)),
    }


if __name__ == "__main__":
    for run in sys.argv[1:]:
        print(json.dumps(decisions(run)), flush=True)
