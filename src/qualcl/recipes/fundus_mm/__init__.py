"""Image–text self-supervision for fundus images: contrastive, masked-image and caption objectives with fusion."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qualcl.recipes._cli import lazy_exports
from qualcl.recipes.fundus_mm.config import ABLATIONS, FundusMMConfig

__all__ = [
    "ABLATIONS",
    "FUNDUS_MM",
    "FundusMMConfig",
    "FundusMMNet",
    "ImageTextPretraining",
    "build_objectives",
    "fundus_mm_config",
    "run_ablation",
    "run_fundus_mm",
]

if TYPE_CHECKING:
    from qualcl.recipes.fundus_mm.model import FundusMMNet
    from qualcl.recipes.fundus_mm.modules import ImageTextPretraining, build_objectives
    from qualcl.recipes.fundus_mm.recipe import FUNDUS_MM, run_ablation

    #: ``FUNDUS_MM.config(preset, *, dataset, data_dir, overrides, seed)``: defaults ← preset ← overrides.
    fundus_mm_config = FUNDUS_MM.config
    #: ``FUNDUS_MM.run(config, out, *, callbacks, overwrite)``: the run end to end into ``out``; re-running resumes.
    run_fundus_mm = FUNDUS_MM.run
else:  # torch and Lightning are imported on first use (qualcl run fundus-mm --help stays quick)
    __getattr__, __dir__ = lazy_exports(__name__)
