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
# # Unsupervised local discrimination with qualcl
#
# *Chen et al., "Unsupervised Local Discrimination for Medical Images", IEEE TPAMI 45(12), 2023.*
#
# Medical images share one anatomy: vessels, optic disc and macula appear in every fundus
# photograph. Local discrimination learns a **pixel embedding** (every pixel a unit vector) without
# labels from two views of the same images: each patch cell must match the same cell in the other
# view and differ from every other cell (**patch discrimination**), a mixup image's cells must match
# the mixed embeddings of its two sources (**mixup consistency**), and a **clustering** branch
# splits each image into `K` soft regions whose features must be classified to their own cluster's
# batch prototype (**region discrimination**). The embedding then serves segmentation with few
# labels, one-shot landmark localisation, and — with a shape prior — segmentation without labels.
# This notebook shows the primitives, then runs the recipe at smoke size. Open it with
# `jupytext --to notebook docs/recipes/local_discrimination.py`, or run it as a script.

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

from qualcl.data import LocalDiscriminationViews, realign_grid
from qualcl.evaluation import landmark_template, localise_landmarks
from qualcl.functional import assignment_entropy, grid_items, patch_grid
from qualcl.heads import ClusteringHead, PixelEmbeddingHead
from qualcl.losses import MixupConsistencyLoss, PatchDiscriminationLoss, RegionDiscriminationLoss

_ = torch.manual_seed(0)

# %% [markdown]
# ## 1. Views with recorded turns
#
# Each item draws two images, four photometric views and a mixup image. The second views are
# turned by 180° and `k` quarter turns; `realign_grid` undoes that on the patch grids, so cell
# `(r, c)` of both views covers the same part of the image.

# %%
images = torch.randint(0, 256, (6, 3, 64, 64), dtype=torch.uint8)
views = LocalDiscriminationViews(images, size=64, length=4, seed=0)
batch = views.assemble(views.collate([views[0], views[1]]))
print("images per step:", tuple(batch.images.shape), "(x1_1, x2_1, x1_2, x2_2, mixup) × B")
print("recorded turns:", batch.flip.tolist(), batch.rot.tolist())

# %% [markdown]
# ## 2. The three objectives
#
# `PatchDiscriminationLoss` is the invariant-and-spreading criterion with gradients through the
# anchor rows only (as the code); it streams over column blocks, so `256·B` cells never need the
# dense similarity matrix (`benchmarks/patch_discrimination.py`).

# %%
features = torch.randn(4 * 2, 32, 64, 64)  # stand-in decoder output for the 4B views
with torch.no_grad():
    embeddings = PixelEmbeddingHead(32, dim=16)(features)
    assignments = ClusteringHead(32, num_clusters=8)(features)
    grids = patch_grid(embeddings, size=8)
    b = 2
    turned = realign_grid(grids[2 * b :], batch.flip.T.reshape(-1), batch.rot.T.reshape(-1))
    grids = torch.cat([grids[: 2 * b], turned])
    print("patch discrimination:", float(PatchDiscriminationLoss()(grid_items(grids))))
    print("mixup consistency:", float(MixupConsistencyLoss()(grid_items(grids[:b]), grid_items(grids[b : 2 * b]))))
    print("region discrimination:", float(RegionDiscriminationLoss()(embeddings, assignments)))
    print("assignment entropy (bits):", float(assignment_entropy(assignments)))

# %% [markdown]
# ## 3. One-shot landmarks (qualcl's design)
#
# The paper's "center-sensitive one-shot landmark localization" is not public; qualcl's version
# compares centre-weighted embeddings: the template at the labelled image's landmark, the
# prediction at the most similar pixel of the target. A target that contains the labelled
# neighbourhood is localised exactly:

# %%
source, target = torch.randn(1, 8, 32, 32), torch.randn(1, 8, 32, 32)
target[..., 14:25, 3:14] = source[..., 4:15, 10:21]  # the neighbourhood of (x=15, y=9) planted at (x=8, y=19)
template = landmark_template(source, torch.tensor([[15.0, 9.0]]), sigma=1.5)[0]
print("predicted:", localise_landmarks(template, target, sigma=1.5).points.tolist())

# %% [markdown]
# ## 4. The recipe at smoke size
#
# `qualcl run local-discrimination --preset smoke` does the same from the command line;
# `--preset default` pre-trains and transfers in minutes on two CPU cores, and `--dataset
# drive|stare|chase|hrf|idrid|drishti --data DIR` runs on the real segmentation sets.

# %%
import contextlib
import sys

from qualcl.recipes.local_discrimination import local_discrimination_config, run_local_discrimination

out_dir = Path(tempfile.mkdtemp()) / "local-discrimination-smoke"
with contextlib.redirect_stderr(sys.stdout):  # the run's "qualcl: ..." lines (standard error) as output
    results = run_local_discrimination(local_discrimination_config("smoke"), out_dir)
dice = {
    f"{task} ({phase})": round(strata["overall"]["dice"], 3)
    for task, phases in results["test"]["segmentation"].items()
    for phase, strata in phases.items()
}
print(json.dumps(dice, indent=2))

# %% [markdown]
# The run's plots (at smoke size they show the pipeline, not a trained model):

# %%
from IPython.display import Image, display

for plot in sorted((out_dir / "plots").glob("*.png")):
    print(plot.name)
    display(Image(filename=str(plot), width=640))
