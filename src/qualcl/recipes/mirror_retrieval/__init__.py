"""Mirror-retrieval recipe: fundus retrieval with mirror attention and a fine triplet loss (Fang et al., BSPC 2023).

The config classes, presets and ablation variants are in :mod:`.config`, the network in :mod:`.model`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qualcl.recipes._cli import lazy_exports

__all__ = ["MIRROR_RETRIEVAL", "mirror_retrieval_config", "run_ablation", "run_mirror_retrieval"]

if TYPE_CHECKING:
    from qualcl.recipes.mirror_retrieval.recipe import MIRROR_RETRIEVAL, run_ablation, run_mirror_retrieval

    #: ``MIRROR_RETRIEVAL.config(preset, *, dataset, data_dir, overrides, seed)``: defaults ← preset ← overrides.
    mirror_retrieval_config = MIRROR_RETRIEVAL.config
else:  # torch and Lightning are imported on first use (qualcl run NAME --help stays quick)
    __getattr__, __dir__ = lazy_exports(__name__)
