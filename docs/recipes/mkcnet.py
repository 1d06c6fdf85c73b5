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
# # MKCNet with qualcl
#
# *Che, Chen and Chen, "Image Quality-aware Diagnosis via Meta-knowledge Co-embedding", CVPR 2023.*
#
# MKCNet diagnoses disease from images of mixed quality by learning a **knowledge co-embedding**:
# besides the diagnosis and the quality heads, a third head of the Task Net is trained towards
# auxiliary targets that a separate **Meta Learner** produces, and the Meta Learner is trained so
# that one step of the Task Net on those targets improves diagnosis and quality ("learning to
# learn", as MAXL). This notebook walks through the primitives the recipe wires together, then runs
# it at smoke size. Open it with `jupytext --to notebook docs/recipes/mkcnet.py`, or run it as a script.

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
import copy
import json
import tempfile
from pathlib import Path

import torch

from qualcl.functional import batch_entropy, focal_loss
from qualcl.heads import JointEncodingMask
from qualcl.optim import MetaAuxiliaryOptimizer
from qualcl.recipes.mkcnet import ModelConfig, build_meta_learner, build_task_net

_ = torch.manual_seed(0)

# %% [markdown]
# ## 1. Joint labels and the masked auxiliary target
#
# With `N_d` diagnoses and `N_q` quality levels, the joint label is `j = y_q · N_d + y_d`. The Meta
# Learner outputs `K = L · N_d · N_q` logits read as one slice of length `L` per joint label; the
# masked softmax puts all the probability on the sample's slice. With `L = 1` it is the one-hot
# joint label; `L > 1` leaves the Meta Learner freedom *within* the slice.

# %%
mask = JointEncodingMask(num_diagnosis=3, num_quality=3, slice_length=2)
diagnosis, quality = torch.tensor([0, 2, 1]), torch.tensor([0, 0, 2])
print("joint labels:", mask.encode(diagnosis, quality).tolist())
target = mask(torch.randn(3, mask.num_outputs), diagnosis, quality)
print("mass per slice of sample 1:", target[1].view(9, 2).sum(1).round(decimals=3).tolist())

# %% [markdown]
# ## 2. Task Net and Meta Learner
#
# The Task Net shares a backbone between three global attention blocks (CBAM → pool → linear),
# giving `f^d`, `f^ω` and `f^q`; the meta-knowledge assistance block gates `f^ω` and concatenates it
# with `f^d`. The Meta Learner has its own backbone. The official code uses VGG-16-BN on 256-px
# images; a ResNet-10 on 48-px images keeps this notebook fast.

# %%
config = ModelConfig(backbone="resnet10", feature_dim=32, slice_length=2)
task = build_task_net(config, channels=3, num_diagnosis=3, num_quality=3)
meta = build_meta_learner(config, channels=3, num_diagnosis=3, num_quality=3)
images = torch.randn(4, 3, 48, 48)
d, q = torch.tensor([0, 1, 2, 1]), torch.tensor([0, 1, 2, 0])
out = task(images)
print({name: tuple(value.shape) for name, value in out._asdict().items()})
print("Meta Learner target:", tuple(meta(images, d, q).shape))

# %% [markdown]
# ## 3. One meta-auxiliary step
#
# `MetaAuxiliaryOptimizer` evaluates the inner loss `L_D + L_Q + L_Ω / L` at the Task Net's
# weights θ, forms θ̃ = θ − α(∇θ L_inner + wd · θ) with the graph kept (second order), and steps
# the Meta Learner on `d/dφ [L_D(θ̃) + L_Q(θ̃) − w_ent · H(mean y_ω)]`. The Task Net — weights and
# BatchNorm statistics — is left as it was.

# %%
meta_optimizer = torch.optim.SGD(meta.parameters(), lr=1e-3)
step = MetaAuxiliaryOptimizer(task, meta, meta_optimizer, inner_lr=0.01, weight_decay=5e-4)


def inner(forward):
    o, y = forward(images), meta(images, d, q)
    return focal_loss(o.diagnosis, d) + focal_loss(o.quality, q) + focal_loss(o.co_embedding, y) / 2


def outer(forward):
    o, y = forward(images), meta(images, d, q)
    return focal_loss(o.diagnosis, d) + focal_loss(o.quality, q) - 0.2 * batch_entropy(y)


before = copy.deepcopy(task.state_dict())
stats = step.step(inner, outer)
print({k: round(float(v), 4) for k, v in stats.items()})
print("Task Net unchanged:", all(torch.equal(v, task.state_dict()[k]) for k, v in before.items()))

# %% [markdown]
# ## 4. The recipe at smoke size
#
# `qualcl run mkcnet --preset smoke` does the same from the command line; `--preset default` runs
# in minutes on two CPU cores, `--dataset eyeq|deepdrid|drac|cxr-iqad|ct-iqad --data DIR` on the
# real data, and `--ablation` the paper's Fig. 4–6 variants and the LQ-ratio sweep over three seeds.

# %%
import contextlib
import sys

from qualcl.recipes.mkcnet import mkcnet_config, run_mkcnet

out_dir = Path(tempfile.mkdtemp()) / "mkcnet-smoke"
with contextlib.redirect_stderr(sys.stdout):  # the run's "qualcl: ..." lines (standard error) as output
    metrics = run_mkcnet(mkcnet_config("smoke"), out_dir)
print(json.dumps({k: v["auc"] for k, v in metrics["test"].items()}, indent=2))

# %% [markdown]
# The run's plots (at smoke size they show the pipeline, not a trained model):

# %%
from IPython.display import Image, display

for plot in sorted((out_dir / "plots").glob("*.png")):
    print(plot.name)
    display(Image(filename=str(plot), width=640))
