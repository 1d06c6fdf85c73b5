"""A sixth recipe on the shared skeleton (``docs/recipes.md``): SimCLR, then DR grading per quality level."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from qualcl.data.augment import ColorJitterSpec, apply_color_jitter, item_generator
from qualcl.data.loading import load_fundus_table, patient_split
from qualcl.data.readers import read_eyeq
from qualcl.data.table import ImageTable
from qualcl.heads import ProjectionHead
from qualcl.losses import NTXentLoss
from qualcl.metrics import stratified_grading_metrics
from qualcl.models import Encoder, build_encoder
from qualcl.recipes._cli import RecipeEntry, main_recipe
from qualcl.recipes.config import DataConfig, RecipeConfig, RecipeSpec, Variant
from qualcl.recipes.driver import Recipe, RunContext, Stage, eval_loader, train_loader
from qualcl.recipes.modules import GradingFineTuning, History, RecipeModule, gathering
from qualcl.recipes.run_folder import ModelCard, strata_table


@dataclass
class SimCLRData(DataConfig):
    """The shared fields; the datasets this recipe reads (their one list); the validation share of patients."""

    dataset: Literal["synthetic", "eyeq"] = "synthetic"
    val_fraction: float = 0.2


@dataclass
class SimCLRConfig(RecipeConfig):
    """The data; SimCLR's AdamW steps (0: none), batch, rate, temperature; then ``full`` or ``linear`` fine-tuning."""

    data: SimCLRData = field(default_factory=SimCLRData)
    encoder: Literal["vgg16_bn_tiny", "resnet18"] = "vgg16_bn_tiny"
    steps: int = 300
    batch_size: int = 64
    lr: float = 1e-3
    temperature: float = 0.2
    finetune: Literal["full", "linear"] = "full"
    epochs: int = 8


SMOKE = dict(data=dict(num_images=64, image_size=48), steps=4, batch_size=8, epochs=1, trainer=dict(progress=False))
ABLATIONS = {"scratch": Variant("no pre-training", ("steps=0",)), "simclr": Variant("SimCLR pre-training")}
SPEC = RecipeSpec("simclr", SimCLRConfig, {"default": {}, "smoke": SMOKE}, ablations=ABLATIONS)
JITTER = ColorJitterSpec(0.4, 0.4, 0.4, 0.1, grayscale=0.2)
Ctx = RunContext[SimCLRConfig]
Data = dict[str, ImageTable]


def augment(images: Tensor, draws: list[torch.Generator]) -> Tensor:
    """A view of each image: a crop of 60-100 % of the side resized back, a dihedral turn, ColorJitter, greying."""
    size, views = images.shape[-1], []
    for image, g in zip(images, draws, strict=True):
        u = torch.rand(5, generator=g).tolist()
        side = int(size * (0.6 + 0.4 * u[0]))
        top, left = int(u[1] * (size - side)), int(u[2] * (size - side))
        crop = torch.nn.functional.interpolate(image[None, :, top : top + side, left : left + side], size)
        views.append(torch.rot90(crop, int(4 * u[3]), (2, 3)).flip([-1] if u[4] < 0.5 else []))
    return apply_color_jitter(torch.cat(views), torch.stack([JITTER.sample(g) for g in draws]))


def graded(table: ImageTable) -> TensorDataset:
    """``(image in [0, 1], grade, quality)`` items, as :class:`GradingFineTuning` reads them."""
    return TensorDataset(table.images.float() / 255, table.label, table.quality)


class SimCLRPretraining(RecipeModule):
    """NT-Xent between the projections of two views of each image, drawn from ``(seed, epoch, image)``."""

    history = History(every="step", curves={"loss": "NT-Xent"}, title="SimCLR pre-training")

    def __init__(self, encoder: Encoder, loss: NTXentLoss, cfg: SimCLRConfig, dim: int = 64) -> None:
        super().__init__()
        self.encoder, self.loss, self.cfg = encoder, loss, cfg
        self.head = ProjectionHead((encoder.num_features, encoder.num_features, dim))

    def training_step(self, batch: list[Tensor], batch_idx: int) -> Tensor:
        draws = [item_generator(self.cfg.seed, self.current_epoch, i) for i in batch[1].tolist()]  # resumable
        views = augment(batch[0].float().div(255).repeat(2, 1, 1, 1), draws * 2)  # both views: one BatchNorm batch
        loss: Tensor = self.loss(*self.head(self.encoder(views)).chunk(2))
        self.record(loss=loss)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.parameters(), lr=self.cfg.lr)


class SimCLRRecipe(Recipe[SimCLRConfig, Data, GradingFineTuning]):
    """SimCLR pre-training of a CNN encoder, then DR grading: QWK and accuracy overall and per quality level."""

    spec, paper = SPEC, "Chen et al., SimCLR, ICML 2020"

    def load_data(self, ctx: Ctx) -> Data:
        d, root = ctx.config.data, ctx.dataset_root(ctx.config.data)
        train = load_fundus_table(read_eyeq(root, "train"), d.image_size, None, ctx.image_progress)
        test = load_fundus_table(read_eyeq(root, "test"), d.image_size, None, ctx.image_progress)
        keep, held = patient_split(train.patient or [], d.val_fraction, d.seed)
        return {"train": train.subset(keep), "val": train.subset(held), "test": test}

    def setup(self, ctx: Ctx, data: Data) -> GradingFineTuning:
        c = ctx.config
        return GradingFineTuning(build_encoder(c.encoder), 5, lr=c.lr, weight_decay=1e-4, epochs=c.epochs)

    def stages(self, config: SimCLRConfig) -> list[Stage]:
        return [Stage("pretrain", self.pretrain)] * (config.steps > 0) + [Stage("finetune", self.finetune)]

    def pretrain(self, ctx: Ctx, data: Data, grader: GradingFineTuning) -> None:
        c, images = ctx.config, data["train"].images
        loss = NTXentLoss(c.temperature, gather_distributed=gathering(c.trainer))  # exact under DDP
        module = SimCLRPretraining(grader.encoder, loss, c)
        train = train_loader(TensorDataset(images, torch.arange(len(images))), c.batch_size, seed=c.seed)
        ctx.fit("pretrain", module, train, weights=dict(encoder=module.encoder, head=module.head), max_steps=c.steps)

    def finetune(self, ctx: Ctx, data: Data, grader: GradingFineTuning) -> None:
        c = ctx.config
        grader.encoder.requires_grad_(c.finetune == "full")  # "linear": the classifier alone learns
        train = train_loader(graded(data["train"]), c.batch_size, seed=c.seed)
        val = eval_loader(graded(data["val"]), c.batch_size)
        ctx.fit("finetune", grader, train, val, weights={"grader": grader}, max_epochs=c.epochs, monitor="val/kappa")

    def evaluate(self, ctx: Ctx, data: Data, grader: GradingFineTuning) -> dict[str, Any]:
        test = data["test"]
        preds = ctx.predict(lambda b: {"p": grader(b[0]).argmax(1)}, graded(test), batch_size=64, modules=[grader])
        return {"test": stratified_grading_metrics(preds["p"], test.label, 5, test.quality, test.quality_names)}

    def ablation_columns(self, config: SimCLRConfig) -> dict[str, str]:
        return {"qwk": "QWK", "accuracy": "accuracy"}

    def model_card(self, ctx: Ctx, data: Data, grader: GradingFineTuning, results: dict[str, Any]) -> ModelCard:
        c, test = ctx.config, results["test"]
        s = f"`{c.encoder}`, {c.steps} SimCLR steps, then {c.finetune} fine-tuning (preset {c.preset})."
        table = strata_table({"test": test}, self.ablation_columns(c))
        plots = [f"{stage.name}.png" for stage in self.stages(c)]  # ctx.fit draws them from each module's History
        return ModelCard("SimCLR, then DR grading", self.paper, s, {"QWK": test["overall"]["qwk"]}, table, plots)


SIMCLR = SimCLRRecipe()

if __name__ == "__main__":  # qualcl run's options: --preset smoke --out DIR, --set KEY=VALUE, --ablation, ...
    sys.exit(main_recipe(RecipeEntry(__name__, "SIMCLR", "SimCLR", spec="__main__:SPEC"), "simclr", sys.argv[1:]))
