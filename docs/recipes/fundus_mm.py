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
# # Image–text self-supervision for fundus images with qualcl
#
# *Nguyen, Sun and Choo, "Self-Supervised Multi-Modal Learning for Fundus Image Analysis Using
# Contrastive and Generative Learning" (Sungkyunkwan University).*
#
# The paper pre-trains a ViT on fundus images and their texts with three objectives at once: a
# CLIP-style **contrastive** loss between image and text embeddings, **masked image modelling**
# (MAE: reconstruct the removed patches) and **masked caption reconstruction**, the two generative
# decoders reading image and text tokens that were fused by **cross-attention**. This notebook
# shows the primitives one by one, then runs the recipe at smoke size. Open it with
# `jupytext --to notebook docs/recipes/fundus_mm.py`, or run it as a script.

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

from qualcl.functional import mask_tokens, patchify, random_masking, unpatchify
from qualcl.heads import CaptionDecoder, CrossAttentionFusion, MAEDecoder
from qualcl.losses import CaptionLoss, ClipLoss, MaskedReconstructionLoss
from qualcl.models import CaptionTokenizer, TextEncoder, build_encoder

_ = torch.manual_seed(0)

# %% [markdown]
# ## 1. Masked image modelling
#
# `patchify` cuts images into MAE's patch layout; `random_masking` keeps exactly
# `round(L·(1 − r))` patches per image; the ViT encodes only those (`forward_masked`), and the
# MAE decoder fills in mask tokens and predicts every patch. The loss averages over the removed
# patches.

# %%
images = torch.rand(2, 3, 64, 64)
encoder = build_encoder("vit_tiny", image_size=64)
masking = random_masking(torch.zeros(2, encoder.num_patches, 1), 0.75, generator=torch.Generator().manual_seed(0))
tokens = encoder.forward_masked(images, masking.ids_keep)  # (2, 1 + 4, 192): class token + visible patches
decoder = MAEDecoder(encoder.num_patches, 16, 3, encoder_dim=192, decoder_dim=64, depth=1, num_heads=4)
pred = decoder(tokens, masking.ids_restore)
loss = MaskedReconstructionLoss(norm_pix_loss=True)(pred, patchify(images, 16), masking.mask)
print("visible tokens:", tuple(tokens.shape), "predicted patches:", tuple(pred.shape), "loss:", round(loss.item(), 3))
print("round trip:", torch.equal(unpatchify(patchify(images, 16), 16), images))

# %% [markdown]
# ## 2. Captions: tokenizer, text tower, masking
#
# `CaptionTokenizer` keeps open_clip's BPE but numbers only the tokens of the corpus, so that the
# embedding and the caption decoder's output layer stay small. `mask_tokens` is BERT's 80/10/10
# corruption; the labels are the original ids at the selected positions.

# %%
captions = [
    "left eye, moderate non-proliferative diabetic retinopathy with 6 microaneurysms; image quality usable",
    "right eye, no diabetic retinopathy; image quality good",
]
tok = CaptionTokenizer.fit(captions)
ids = tok.encode(captions)
print("vocabulary:", tok.vocab_size, "ids:", tuple(ids.shape), "decoded:", tok.decode(ids[1:]))
text = TextEncoder(tok.vocab_size, width=64, layers=1, heads=4, context_length=tok.context_length, output_dim=64)
pooled, text_tokens = text(ids)
corrupted = mask_tokens(ids, mask_id=tok.mask_id, vocab_size=tok.vocab_size, special_ids=tok.special_ids,
                        ratio=0.3, generator=torch.Generator().manual_seed(1))  # fmt: skip
print("corrupted:", tok.decode(corrupted.ids[:1]))

# %% [markdown]
# ## 3. Fusion, captioning and the contrastive loss
#
# `CrossAttentionFusion` lets image tokens attend to text tokens and back; padding never
# influences an output. The caption decoder predicts the masked words while cross-attending to the
# fused tokens; the contrastive loss works on the *un-fused* pooled embeddings.

# %%
image_tokens = torch.nn.Linear(192, 64)(tokens)
fused_image, fused_text = CrossAttentionFusion(64, 4)(image_tokens, text_tokens, text_padding_mask=ids == tok.pad_id)
caption_decoder = CaptionDecoder(tok.vocab_size, 64, 1, 4, context_length=tok.context_length, context_dim=64,
                                 mode="masked", pad_id=tok.pad_id)  # fmt: skip
logits = caption_decoder(corrupted.ids, torch.cat([fused_image, fused_text], 1))
labels = ids.masked_fill(~corrupted.selected, tok.pad_id)
print("caption loss:", round(CaptionLoss(pad_id=tok.pad_id)(logits, labels).item(), 3))
z_img = torch.nn.Linear(192, 64)(tokens[:, 0])
print("contrastive loss:", round(ClipLoss()(z_img, pooled).item(), 3))

# %% [markdown]
# In the recipe, as open_clip splits `CoCa` from its loss, `FundusMMNet` wires these parts and
# returns representations only (embeddings, predicted patches, caption logits and their targets);
# `build_objectives` makes the losses (with their weights and the learnt logit scale) in one place,
# and the training module adds them up.

# %%
from qualcl.recipes.fundus_mm import FundusMMNet, build_objectives, fundus_mm_config

config = fundus_mm_config("smoke")
net = FundusMMNet(config.model, tok, 64)
objectives = build_objectives(config.model, config.train, pad_id=tok.pad_id, gather=False)
out = net(images, ids, generator=torch.Generator().manual_seed(2))
terms = objectives(out)
total = objectives.total(terms)
print({name: round(value.item(), 3) for name, value in terms.items()}, "total:", round(total.item(), 3))

# %% [markdown]
# ## 4. The recipe at smoke size
#
# `qualcl run fundus-mm --preset smoke` does the same from the command line; `--preset default`
# pre-trains on the embedded synthetic set in minutes on two CPU cores, and `--dataset
# aptos|odir|fives --data DIR` runs on the real data (class-level captions). The evaluations are
# zero-shot grading from the class prompts, image↔text recall@k, few-shot (linear probe and a
# prompt-initialised head) and fine-tuning, each per quality stratum and at raised low-quality
# ratios.

# %%
import contextlib
import sys

from qualcl.recipes.fundus_mm import run_fundus_mm

out_dir = Path(tempfile.mkdtemp()) / "fundus-mm-smoke"
with contextlib.redirect_stderr(sys.stdout):  # the run's "qualcl: ..." lines (standard error) as output
    results = run_fundus_mm(fundus_mm_config("smoke"), out_dir)
zero = results["test"]["zero_shot"]
print(json.dumps({s: round(v["overall"]["accuracy"], 3) for s, v in zero.items()}, indent=2))
print(json.dumps({k: round(v, 3) for k, v in results["test"]["recall"].items()}))

# %% [markdown]
# The run's plots (at smoke size they show the pipeline, not a trained model):

# %%
from IPython.display import Image, display

for plot in sorted((out_dir / "plots").glob("*.png")):
    print(plot.name)
    display(Image(filename=str(plot), width=640))
