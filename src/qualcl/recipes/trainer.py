"""The Lightning ``Trainer`` every recipe stage runs on: devices, DDP, precision, loggers, checkpoints, bars."""

from __future__ import annotations

import importlib.util
import logging
import re
import warnings
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, OnExceptionCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import Logger
from lightning.pytorch.plugins import LayerSync
from torch import nn

from qualcl.recipes.callbacks import RandomStates, ResumedEpochStart
from qualcl.recipes.config import TrainerConfig
from qualcl.recipes.run_folder import RunFolder

__all__ = [
    "BANNERS",
    "LOGGER_PACKAGES",
    "BatchNormSync",
    "BoundaryCheckpoint",
    "EpochProgressBar",
    "StepProgressBar",
    "check_logger",
    "check_trainer",
    "make_logger",
    "make_trainer",
]

# Lightning's advice that does not apply: in-memory datasets need no workers; resume is explicit (and
# a resumed stage's checkpoint folder is not empty); the validation metrics are computed on
# predictions gathered from every rank, so they need no sync_dist.
for _message in (
    ".*Checkpoint directory .* exists and is not empty.*",
    ".*does not have many workers.*",
    ".*LeafSpec.*",
    r".*fit\(ckpt_path=.*",
    ".*smaller than the logging interval.*",
    r".*sync_dist=True.*when logging on epoch level in distributed.*",
    ".*overridden `on_after_batch_transfer` in `LightningModule` but have passed in a `LightningDataModule`.*",
):
    warnings.filterwarnings("ignore", message=_message)


#: What Lightning logs at every stage that a run does not need: its device banners, a product tip,
#: the dataloader-length estimate and the "stopped: max_steps reached" note. The driver prints one line
#: per stage instead (:meth:`~qualcl.recipes.driver.RunContext.fit`).
BANNERS = re.compile(
    r"litlogger|^(GPU|TPU|HPU|IPU) available|^LOCAL_RANK: \d+ - CUDA_VISIBLE_DEVICES|"
    r"^Loading `train_dataloader` to estimate|^`Trainer.fit` stopped: `max_(steps|epochs)=|"
    r"^Restoring states from the checkpoint path|^Restored all states from the checkpoint"
)


class _DropAdverts(logging.Filter):
    """Drops Lightning's per-stage banners (:data:`BANNERS`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return BANNERS.search(record.getMessage()) is None


for _name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
    logging.getLogger(_name).addFilter(_DropAdverts())

#: The package each optional logger needs.
LOGGER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_logger(kind: str) -> None:
    """Raise ``ValueError`` naming the package when logger ``kind`` cannot be used here."""
    package = LOGGER_PACKAGES.get(kind)
    if package is None:
        return
    if kind == "tensorboard" and importlib.util.find_spec("tensorboardX") is not None:
        return
    if importlib.util.find_spec(package) is None:
        message = f"--logger {kind} needs the {package!r} package, which is not installed: pip install {package}"
        raise ValueError(message)


def check_trainer(config: TrainerConfig) -> None:
    """Reject settings this machine cannot run, naming the option, before a run writes anything."""
    import torch

    check_logger(config.logger)
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if config.accelerator == "gpu" and gpus == 0:
        raise ValueError("--accelerator gpu: this machine has no CUDA GPU (use --accelerator cpu or auto)")
    on_gpu = config.accelerator != "cpu" and gpus > 0
    if on_gpu and config.num_nodes == 1 and config.devices > gpus:
        raise ValueError(f"--devices {config.devices}: this machine has {gpus} GPU(s)")
    if config.precision == "16-mixed" and not on_gpu:
        raise ValueError("--precision 16-mixed needs a GPU; on CPUs use --precision bf16-mixed or 32")


def make_logger(kind: str, run: RunFolder, stage: str) -> Logger | bool:
    """Lightning logger ``kind`` writing into the run folder (``False`` for ``"none"``).

    ``csv``: ``logs/<stage>/version_<k>/metrics.csv``; ``tensorboard``: ``tensorboard/<stage>/version_<k>/``
    (a resumed stage logs into a new version, the interrupted attempt's logs stay); ``mlflow``: a
    file store ``mlruns/`` (experiment ``qualcl``, run named after the folder and stage); ``wandb``:
    project ``qualcl``, files under the run folder (``WANDB_MODE=offline`` keeps it local).
    """
    check_logger(kind)
    if kind == "none":
        return False
    root = str(run.root)
    name = f"{run.root.name}-{stage}"
    if kind == "csv":
        from lightning.pytorch.loggers import CSVLogger

        return CSVLogger(str(run.root / "logs"), name=stage)
    if kind == "tensorboard":
        from lightning.pytorch.loggers import TensorBoardLogger

        return TensorBoardLogger(str(run.root / "tensorboard"), name=stage)
    if kind == "mlflow":
        from lightning.pytorch.loggers import MLFlowLogger

        return MLFlowLogger(experiment_name="qualcl", run_name=name, tracking_uri=(run.root / "mlruns").as_uri())
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        return WandbLogger(project="qualcl", name=name, save_dir=root)
    raise ValueError(f"unknown logger {kind!r}; choose csv, tensorboard, wandb, mlflow or none")


class _Metrics:
    """A progress bar's numbers without Lightning's logger version (``v_num``: a run folder has one logger)."""

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        """The logged metrics the bar shows, ``v_num`` left out."""
        metrics: dict[str, Any] = super().get_metrics(trainer, pl_module)  # type: ignore[misc]
        metrics.pop("v_num", None)
        return metrics


class EpochProgressBar(_Metrics, TQDMProgressBar):
    """The bar of an epoch-budgeted stage: labelled with the stage, its loss and metrics, no logger version."""

    def __init__(self, stage: str) -> None:
        super().__init__()
        self.stage = stage

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        """Label the epoch's bar with the stage: ``finetune, epoch 3/12``."""
        super().on_train_epoch_start(trainer, *args)
        if self.train_progress_bar is not None:
            epoch = f"{trainer.current_epoch + 1}/{trainer.max_epochs}"
            self.train_progress_bar.set_description(f"{self.stage}, epoch {epoch}")


class StepProgressBar(_Metrics, TQDMProgressBar):
    """One bar over all ``max_steps`` of a step-budgeted stage (not "Epoch k" bars with an unknown total)."""

    def __init__(self, stage: str) -> None:
        super().__init__()
        self.stage = stage

    @property
    def train_description(self) -> str:
        """The bar's label: the stage."""
        return f"{self.stage} (steps)"

    def on_train_start(self, trainer: L.Trainer, *args: Any) -> None:
        """Open the bar at the resumed step."""
        self.train_progress_bar = self.init_train_tqdm()
        self.train_progress_bar.reset(total=trainer.max_steps)
        self.train_progress_bar.initial = trainer.global_step
        self.train_progress_bar.n = trainer.global_step

    def on_train_epoch_start(self, trainer: L.Trainer, *args: Any) -> None:
        """Keep counting across epochs."""

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        """Show the optimisation step."""
        bar = self.train_progress_bar
        if bar is not None and not bar.disable:
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))
            bar.refresh()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Nothing to close between epochs."""


class BoundaryCheckpoint(OnExceptionCheckpoint):
    """Lightning's ``last.ckpt`` on an exception, saved only at a batch boundary.

    An exception inside a step or a validation pass (a second Ctrl-C, an out-of-memory error in the
    backward pass) leaves half of it applied: BatchNorm statistics moved, running sums, history rows
    or validation outputs grown, perhaps the optimiser stepped, while Lightning would replay it on
    resume. Then nothing is saved and the stage resumes from its last checkpoint saved at a boundary
    (every ``every_n_train_steps`` steps or epoch end): the steps since are lost, the run stays exact.
    """

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        """Save ``last.ckpt`` (a full checkpoint) unless a training batch or a validation pass is in flight."""
        batches = trainer.fit_loop.epoch_loop.batch_progress.current
        if batches.started == batches.completed and not trainer.validating:  # type: ignore[attr-defined]
            trainer.save_checkpoint(self.ckpt_path, weights_only=False)  # said, so Lightning prints no notice


def _on_gpu(config: TrainerConfig) -> bool:
    """Whether the run's accelerator is a CUDA GPU (torch's SyncBatchNorm runs only there)."""
    import torch

    return config.accelerator != "cpu" and torch.cuda.is_available()


class BatchNormSync(LayerSync):
    """Lightning's layer-sync plugin with :func:`qualcl.distributed.convert_sync_batchnorm`: CPU/gloo runs too.

    Lightning converts the module when fitting starts (before it moves it to its device) and
    reverts it when fitting ends, so the recipe's models hold their own BatchNorm classes again.

    Args:
        backend: ``"torch"`` (:class:`torch.nn.SyncBatchNorm`, CUDA only) or ``"qualcl"``
            (:class:`qualcl.distributed.SyncBatchNorm`: any device, twice differentiable).
    """

    def __init__(self, backend: str) -> None:
        if backend not in ("torch", "qualcl"):
            raise ValueError(f"backend must be 'torch' or 'qualcl', got {backend!r}")
        self.backend = backend

    def apply(self, model: nn.Module) -> nn.Module:
        """Synchronise every BatchNorm layer of ``model``."""
        from qualcl.distributed import convert_sync_batchnorm

        return convert_sync_batchnorm(model, backend="torch" if self.backend == "torch" else "qualcl")

    def revert(self, model: nn.Module) -> nn.Module:
        """Give every converted layer its original BatchNorm class back."""
        from qualcl.distributed import revert_sync_batchnorm

        return revert_sync_batchnorm(model)


def batchnorm_sync(config: TrainerConfig, *, requested: bool, double_backward: bool = False) -> BatchNormSync | None:
    """The plugin that synchronises BatchNorm in a stage, or ``None`` when it should not.

    BatchNorm is synchronised when the stage ``requested`` it, ``trainer.sync_batchnorm`` is on and
    the run uses DDP: with torch's layer on GPUs, else (CPUs, or a stage that differentiates twice
    through BatchNorm, ``double_backward``) with qualcl's.
    """
    if not (requested and config.sync_batchnorm and config.distributed):
        return None
    return BatchNormSync("torch" if _on_gpu(config) and not double_backward else "qualcl")


def make_trainer(
    run: RunFolder,
    stage: str,
    config: TrainerConfig,
    *,
    max_steps: int = -1,
    max_epochs: int | None = None,
    callbacks: list[Callback] | None = None,
    every_n_train_steps: int | None = None,
    monitor: str | None = None,
    check_val_every_n_epoch: int = 1,
    find_unused_parameters: bool = False,
    sync_batchnorm: bool = True,
    double_backward: bool = False,
) -> L.Trainer:
    """A Lightning trainer for one stage, writing resumable checkpoints into ``checkpoints/<stage>``.

    ``last.ckpt`` is refreshed every ``every_n_train_steps`` steps (or every epoch) and on an
    exception at a batch boundary (SIGTERM, a first Ctrl-C; :class:`BoundaryCheckpoint`), so a re-run
    continues from there; with ``monitor`` the
    best epoch is kept as ``best.ckpt``. ``config`` chooses accelerator, devices, nodes, strategy
    (DDP with ``find_unused_parameters`` when the stage leaves parameters without gradient, e.g. a
    second optimiser's model), precision and logger. Samplers are the recipes' own rank-aware ones,
    so Lightning's ``DistributedSampler`` replacement is off. Under DDP, BatchNorm is synchronised
    across processes unless the stage (``sync_batchnorm=False``) or ``trainer.sync_batchnorm`` turns
    it off (:func:`batchnorm_sync`; ``double_backward``: the stage differentiates twice through it).
    """
    directory = run.checkpoint_dir(stage)
    checkpoint = ModelCheckpoint(
        dirpath=directory,
        filename="best",
        save_last=True,
        monitor=monitor,
        mode="max",
        save_top_k=1 if monitor else 0,
        every_n_train_steps=every_n_train_steps,
    )
    strategy: Any = "auto"
    if config.distributed:
        from lightning.pytorch.strategies import DDPStrategy

        strategy = DDPStrategy(find_unused_parameters=find_unused_parameters)
    bars: list[Callback] = []
    if config.progress:  # one style of bar for every stage: the stage's name, its numbers, nothing else
        bars.append(StepProgressBar(stage) if max_steps > 0 else EpochProgressBar(stage))
    layer_sync = batchnorm_sync(config, requested=sync_batchnorm, double_backward=double_backward)
    resume = [ResumedEpochStart(), RandomStates()]  # what an exact resume needs beside the checkpoint
    return L.Trainer(
        default_root_dir=str(run.root),
        max_steps=max_steps,
        max_epochs=max_epochs,
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=strategy,
        precision=config.precision,  # type: ignore[arg-type]
        plugins=[layer_sync] if layer_sync is not None else None,
        use_distributed_sampler=False,
        logger=make_logger(config.logger, run, stage),
        log_every_n_steps=10,
        enable_progress_bar=config.progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=check_val_every_n_epoch,
        callbacks=[checkpoint, BoundaryCheckpoint(directory, filename="last"), *resume, *bars, *(callbacks or [])],
        deterministic=False,
    )
