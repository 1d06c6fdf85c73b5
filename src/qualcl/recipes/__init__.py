"""Paper recipes: each fills in the shared run skeleton (:mod:`qualcl.recipes.driver`).

A recipe brings its config, LightningModules and stages. ``RECIPES`` maps the names accepted by
``qualcl run NAME`` to where the recipe and its torch-free spec live (:class:`RecipeEntry`).
"""

from __future__ import annotations

from qualcl.recipes._cli import RecipeEntry

__all__ = ["RECIPES", "RecipeEntry"]

RECIPES: dict[str, RecipeEntry] = {
    "comcl": RecipeEntry(
        "qualcl.recipes.comcl.recipe",
        "COMCL",
        "CoMCL (MICCAI 2024): multi-level contrastive pre-training with self-paced hard negatives, "
        "then DR grading (or chest X-ray diagnosis) evaluated per quality level",
        spec="qualcl.recipes.comcl.config:SPEC",
    ),
    "comcl-detector": RecipeEntry(
        "qualcl.recipes.comcl.detector_run",
        "DETECTOR",
        "the lesion detector CoMCL takes lesion patches from (torchvision Faster R-CNN on lesion masks)",
        spec="qualcl.recipes.comcl.config:DETECTOR_SPEC",
    ),
    "mkcnet": RecipeEntry(
        "qualcl.recipes.mkcnet.recipe",
        "MKCNET",
        "MKCNet (CVPR 2023): Task Net + meta-learned knowledge co-embedding (second-order meta step), "
        "diagnosis AUC / ACC / F1 per quality level",
        spec="qualcl.recipes.mkcnet.config:SPEC",
    ),
    "mirror-retrieval": RecipeEntry(
        "qualcl.recipes.mirror_retrieval.recipe",
        "MIRROR_RETRIEVAL",
        "Mirror-attention fundus retrieval (BSPC 2023): GeM descriptors of mirror-attention branches, fine "
        "triplet (circle) loss, P@k / mAP@k / NDCG@k per grade and per quality level",
        spec="qualcl.recipes.mirror_retrieval.config:SPEC",
    ),
    "fundus-mm": RecipeEntry(
        "qualcl.recipes.fundus_mm.recipe",
        "FUNDUS_MM",
        "Image-text fundus self-supervision (contrastive + masked image + caption objectives, cross-attention "
        "fusion): zero-shot, few-shot, fine-tuning and image-text recall per quality stratum",
        spec="qualcl.recipes.fundus_mm.config:SPEC",
    ),
    "local-discrimination": RecipeEntry(
        "qualcl.recipes.local_discrimination.recipe",
        "LOCAL_DISCRIMINATION",
        "Unsupervised local discrimination (TPAMI 2023): patch + region discrimination of pixel embeddings, "
        "then segmentation transfer (Dice per quality level), one-shot landmarks and shape-guided segmentation",
        spec="qualcl.recipes.local_discrimination.config:SPEC",
    ),
}
