# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     name: python3
# ---

# %% [markdown]
# # CoMCL with qualcl
#
# *Hou et al., "A Clinical-oriented Multi-level Contrastive Learning Method for Disease Diagnosis in
# Low-quality Medical Images", MICCAI 2024.*
#
# CoMCL pre-trains an encoder on lesion and healthy **patches** of high- and low-quality images with
# a contrastive loss whose negatives are chosen by level, then fine-tunes it for DR grading. This
# notebook walks through the primitives the recipe wires together, then runs the recipe at smoke
# size. Open it with `jupytext --to notebook docs/recipes/comcl.py`, or run it as a script.

# %% tags=["remove-input"]
# Set-up for the docs build, its input hidden on the site: this kernel has no ipywidgets (tqdm's
# notebook bars warn and fall back to text ones), and the synthetic data goes to a relative cache
# folder, so no path of the machine that built the site is printed.
import os
import tempfile
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")
os.chdir(tempfile.mkdtemp())
os.environ["QUALCL_CACHE"] = "qualcl-cache"

# %%
import json
import tempfile
from pathlib import Path

import torch

from qualcl.data.levels import LEVEL_NAMES, split_levels
from qualcl.losses import MultiLevelInfoNCE
from qualcl.samplers import (
    CosineCountSchedule,
    LesionPatchSampler,
    LevelBalancedBatchSampler,
    SelfPacedHardNegativeMiner,
)

_ = torch.manual_seed(0)

# %% [markdown]
# ## 1. Four levels from disease and quality labels
#
# Lesion = DR grade ≥ 1, healthy = grade 0; low quality = EyeQ's Usable or Reject.

# %%
grade = torch.tensor([0, 0, 2, 3, 1, 0, 4, 0])
quality = torch.tensor([0, 2, 0, 1, 2, 0, 0, 1])  # 0 Good, 1 Usable, 2 Reject
levels = split_levels(grade, quality, "eyeq")
print([LEVEL_NAMES[i] for i in levels])

# %% [markdown]
# ## 2. Patches: two windows around the same lesion box form a positive pair

# %%
sampler = LesionPatchSampler(patch_size=32)
boxes = torch.tensor([[40, 50, 46, 57]])  # (x1, y1, x2, y2) of a haemorrhage
(x1, y1), (x2, y2) = sampler.sample(boxes, (128, 128), generator=torch.Generator().manual_seed(1))
print("window 1 at", (x1, y1), "window 2 at", (x2, y2), "both contain", boxes[0].tolist())

# %% [markdown]
# ## 3. Balanced batches: every batch holds `b` patches of each level

# %%
batches = list(LevelBalancedBatchSampler(torch.arange(4).repeat(6), per_level=2, seed=0))
print(len(batches), "batches; first:", batches[0])

# %% [markdown]
# ## 4. The multi-level loss with self-paced hard-negative mining
#
# For each pair `(m, n)` — `(L, LQ_L)`, `(L, H)`, `(LQ_L, LQ_H)` — anchors of level `m` are
# contrasted with their other view against negatives of level `n` only. The miner keeps each
# anchor's `K_t` most similar negatives (`K_t` shrinks along a cosine) and keeps the anchors whose
# restricted loss is among the easiest `ρ_t` (rising to all).

# %%
schedule = CosineCountSchedule(None, max_steps=100)
print("K_t for 16 negatives at t = 0, 50, 90:", [schedule(t, total=16) for t in (0, 50, 90)])
miner = SelfPacedHardNegativeMiner(schedule, threshold="quantile")
loss_fn = MultiLevelInfoNCE(temperature=0.07, miner=miner)
batch_levels = torch.arange(4).repeat_interleave(16)
# embeddings with structure, as a trained encoder's: a fundus background every patch shares, a lesion
# component that L and LQ_L share (as do H and LQ_H), per-patch detail; the second view adds noise
background, lesion = torch.randn(1, 128), torch.randn(2, 128)
z1 = background + 0.3 * lesion[torch.tensor([0, 0, 1, 1])[batch_levels]] + 0.5 * torch.randn(64, 128)
z1.requires_grad_()
z2 = z1.detach() + 0.5 * torch.randn(64, 128)
out = loss_fn(z1, z2, batch_levels, step=50, output_dict=True)
print("loss:", round(out.loss.item(), 3), {k: round(v.item(), 3) for k, v in out.pair_losses.items()})
print("counts:", out.counts)
print("miner:", miner.last_stats)

# %% [markdown]
# ## 5. The recipe at smoke size
#
# `qualcl run comcl --preset smoke` does the same from the command line; `--preset default` is the
# README's main job and `--ablation` runs the paper's Table 2–3 variants over three seeds.

# %%
import contextlib
import sys

from qualcl.recipes.comcl import comcl_config, run_comcl

out_dir = Path(tempfile.mkdtemp()) / "comcl-smoke"
with contextlib.redirect_stderr(sys.stdout):  # the run's "qualcl: ..." lines (standard error) as output
    metrics = run_comcl(comcl_config("smoke", overrides=["probe=true"]), out_dir)  # probe: section 6
print(json.dumps(metrics["test"]["original"]["overall"], indent=2))

# %% [markdown]
# The run's plots (at smoke size they show the pipeline, not a trained model):

# %%
from IPython.display import Image, display

for plot in sorted((out_dir / "plots").glob("*.png")):
    print(plot.name)
    display(Image(filename=str(plot), width=640))

# %% [markdown]
# ## 6. Did pre-training put anything into the features?
#
# Fine-tuned scores vary a lot between seeds at this scale. A linear probe on the *frozen*
# pre-trained encoder is deterministic given the encoder; `feature_geometry` shows whether the
# features collapsed onto the four levels (Eq. 1 has no same-level negatives). The ablation
# (`qualcl run comcl --ablation`) reports both for every run: its variants set `probe=true`, as the
# run above does, which writes them into the run's `metrics.json`; results in `docs/comcl.md`.
# (`qualcl.recipes.comcl.probe.probe_run(folder, train, test)` probes a finished run afterwards.)

# %%
diagnostics = metrics["probe"]
print("grade probe:", {k: round(v, 3) for k, v in diagnostics["grade"]["overall"].items()})
print("quality probe:", {k: round(v, 3) for k, v in diagnostics["low_quality"].items()})
print("geometry:", {k: round(v, 3) for k, v in diagnostics["geometry"].items()})
