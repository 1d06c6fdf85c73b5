"""The one run driver every recipe fills in: config → run folder → data → stages → metrics, card, resume.

A recipe is a :class:`Recipe` subclass that supplies its config dataclass and presets, and five
methods: ``load_data`` (the data bootstrap), ``setup`` (its models), ``stages`` (named training
stages, each a function that calls :meth:`RunContext.fit` with a LightningModule), ``evaluate``
(metrics, computed on predictions gathered from every rank by :meth:`RunContext.predict`) and
``model_card``. :func:`run_recipe` does the rest the same way for every recipe: the run folder (only
global rank 0 writes it), seeding, skipping finished stages and resuming an interrupted one from its
``last.ckpt``, weights in safetensors, ``metrics.json``/``.csv`` and ``MODEL_CARD.md``. See
``docs/recipes.md`` for how to add a recipe.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, NamedTuple, TypeVar

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from qualcl.distributed import gather_no_grad, is_distributed, rank, world_size
from qualcl.models import unfold_small_convs
from qualcl.recipes.ablation import strata_order
from qualcl.recipes.callbacks import HistoryWriter, load_best, resume_path
from qualcl.recipes.claims import standing
from qualcl.recipes.collapse import CollapseMonitor, Probe
from qualcl.recipes.config import DataConfig, RecipeConfig, RecipeSpec, check_config, config_to_dict
from qualcl.recipes.interrupt import GracefulInterrupt
from qualcl.recipes.modules import RecipeModule
from qualcl.recipes.plots import plot_history
from qualcl.recipes.resume import ResumableLoader
from qualcl.recipes.run_folder import ModelCard, RunFolder, prepare_run_folder
from qualcl.recipes.trainer import check_trainer, make_trainer

__all__ = [
    "Recipe",
    "RunContext",
    "Stage",
    "check_data",
    "eval_loader",
    "is_global_zero",
    "run_recipe",
    "stage_seed",
    "train_loader",
]

C = TypeVar("C", bound=RecipeConfig)
D = TypeVar("D")
S = TypeVar("S")
Loader = DataLoader[Any] | Callable[[], DataLoader[Any]]


def stage_seed(seed: int, stage: str) -> int:
    """The seed stage ``stage`` starts from: a fixed function of the run's seed and the stage's name.

    Examples:
        >>> stage_seed(0, "pretrain") == stage_seed(0, "pretrain") != stage_seed(1, "pretrain")
        True
    """
    return zlib.crc32(f"{seed}/{stage}".encode()) % (2**31 - 1)


def is_global_zero() -> bool:
    """Whether this process is global rank 0 (it writes the run folder).

    Inside a process group the group's rank decides; before one exists (a recipe's data bootstrap),
    the launcher's environment does: ``RANK`` (torchrun), ``SLURM_PROCID`` (``srun`` with several
    tasks), else Lightning's ``NODE_RANK`` and ``LOCAL_RANK`` (its own process launcher).
    """
    if is_distributed():
        return rank() == 0
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"]) == 0
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        return int(env["SLURM_PROCID"]) == 0
    return int(env.get("NODE_RANK", "0")) == 0 and int(env.get("LOCAL_RANK", "0")) == 0


def eval_loader(dataset: Dataset[Any], batch_size: int) -> Callable[[], DataLoader[Any]]:
    """A validation loader factory: in order, sharded across ranks, no padding (:class:`~qualcl.samplers.ShardSampler`).

    Each rank validates its own items; the module gathers the predictions of every rank before
    computing a metric (see ``GradingFineTuning.on_validation_epoch_end``).
    """
    from qualcl.samplers import ShardSampler

    def build() -> DataLoader[Any]:
        return DataLoader(dataset, batch_size=batch_size, sampler=ShardSampler(len(dataset)))  # type: ignore[arg-type]

    return build


def train_loader(
    dataset: Dataset[Any],
    batch_size: int,
    *,
    seed: int,
    drop_last: bool = True,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    name: str = "train.batch_size",
) -> Callable[[], DataLoader[Any]]:
    """A training loader factory: each epoch reshuffled from ``seed``, each rank its own shard.

    The loader is built when Lightning asks for it (after the process group exists), on a
    :class:`~qualcl.samplers.ShardedShuffleSampler`, so that one epoch across ``W`` ranks visits
    the items one process would, and a resumed epoch continues with the same order.

    Args:
        dataset: The training items.
        batch_size: Items per batch (per rank).
        seed: Seed of the shuffles.
        drop_last: Drop the last incomplete batch (contrastive losses want full batches).
        collate_fn: The loader's collate function, if not the default.
        name: The config key of ``batch_size``, for the error message.

    Raises:
        ValueError: With ``drop_last``, fewer items than one batch (the message names ``name``).
    """
    from qualcl.samplers import ShardedShuffleSampler

    n = len(dataset)  # type: ignore[arg-type]
    if drop_last and n < batch_size:
        raise ValueError(f"{n} training items are fewer than {name}={batch_size}: lower {name}")

    def build() -> DataLoader[Any]:
        sampler = ShardedShuffleSampler(n, seed=seed, drop_last=drop_last)
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last, collate_fn=collate_fn)

    return build


class Stage(NamedTuple):
    """A named training stage: ``run(ctx, data, state)`` trains (or reloads) part of ``state``."""

    name: str
    run: Callable[[Any, Any, Any], None]


def _build(loader: Loader) -> DataLoader[Any]:
    return loader if isinstance(loader, DataLoader) else loader()


class _TrainLoader(L.LightningDataModule):
    """Hands Lightning the stage's training loader, built when it asks (after the process group exists).

    The loader is made resumable (:class:`~qualcl.recipes.resume.ResumableLoader`): a run stopped in
    the middle of an epoch continues with the batch an uninterrupted run would see next.
    """

    def __init__(self, train: Loader, position: Callable[[], tuple[int, int]]) -> None:
        super().__init__()
        self._train = train
        self._position = position

    def train_dataloader(self) -> DataLoader[Any]:
        """The training loader."""
        loader = _build(self._train)
        return loader if isinstance(loader, ResumableLoader) else ResumableLoader(loader, self._position)


class _Loaders(_TrainLoader):
    """Training and validation loaders."""

    def __init__(self, train: Loader, val: Loader, position: Callable[[], tuple[int, int]]) -> None:
        super().__init__(train, position)
        self._val = val

    def val_dataloader(self) -> DataLoader[Any]:
        """The validation loader."""
        return _build(self._val)


class RunContext(Generic[C]):
    """What a recipe's stages and evaluation get from the driver.

    Attributes:
        config: The run's resolved config.
        run: The run folder (read-only on ranks other than 0).
        callbacks: Extra Lightning callbacks for every stage (tests, user hooks).
    """

    def __init__(self, config: C, out: str | Path, callbacks: Sequence[Callback] = ()) -> None:
        self.config = config
        self.run = RunFolder(out, writable=is_global_zero())
        self.callbacks = list(callbacks)
        self.started = time.perf_counter()
        #: What each stage trained (or reloaded) in this run recorded: ``{stage: stages.json entry}``.
        self.records: dict[str, dict[str, Any]] = {}

    @property
    def progress(self) -> bool:
        """Whether to show progress bars (rank 0 only)."""
        return self.config.trainer.progress and self.run.writable

    @property
    def device(self) -> torch.device:
        """The device evaluation runs on: this process's GPU when the run uses one, else the CPU."""
        accelerator = self.config.trainer.accelerator
        if accelerator != "cpu" and torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        return torch.device("cpu")

    # ------------------------------------------------------------------ data
    def synthetic_fundus(self, data: DataConfig) -> Path:
        """The embedded SynthFundus set of a ``data`` config: generated once into ``data.data_dir`` or the cache.

        By default the set lives in the dataset cache (:func:`qualcl.data.synthetic.cached_fundus_dataset`:
        ``$QUALCL_CACHE``, else ``~/.cache/qualcl``), shared by every run with the same data
        settings, so that a run folder holds results, not a copy of its inputs. Processes asking at
        the same time (the ranks of a DDP run) wait while the first one generates it.
        """
        from qualcl.data.synthetic import cached_fundus_dataset, ensure_fundus_dataset

        settings: dict[str, Any] = {
            "num_images": data.num_images,
            "size": data.image_size,
            "seed": data.seed,
            "lq_ratio": data.lq_ratio,
            "progress": self.progress,
            "extra_test": data.extra_test_images,
        }
        if data.data_dir is None:
            root = cached_fundus_dataset(**settings)
            self.say(f"synthetic data: {root}")
            return root
        folder = Path(str(data.data_dir))
        if not self.run.writable:  # rank 0 writes a named folder; the others wait for its last file
            deadline = time.monotonic() + 3600
            while not (folder / "ground_truth.json").is_file():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"rank 0 did not finish generating {folder} within an hour")
                time.sleep(1.0)
        return ensure_fundus_dataset(folder, **settings)

    def dataset_root(self, data: DataConfig) -> Path:
        """The folder of a ``data`` config: the embedded SynthFundus set (:meth:`synthetic_fundus`) or ``data_dir``."""
        if data.dataset == "synthetic":
            return self.synthetic_fundus(data)
        if data.data_dir is None:
            raise ValueError(f"--data DIR is required with --dataset {data.dataset}")
        return Path(str(data.data_dir))

    @property
    def image_progress(self) -> Callable[[Sequence[Path]], Sequence[Path]] | None:
        """A "reading images" progress bar around a list of image files, or ``None`` when bars are off."""
        if not self.progress:
            return None
        return lambda paths: self.progress_bar(paths, "reading images")  # type: ignore[no-any-return]

    def progress_bar(self, items: Sequence[Any], description: str) -> Any:
        """``tqdm`` over ``items`` when progress bars are on, else ``items``."""
        if not self.progress:
            return items
        from tqdm.auto import tqdm

        return tqdm(items, desc=description, leave=False)

    def say(self, line: str) -> None:
        """One line of the run's narrative on standard error (global rank 0 only): ``qualcl: <line>``."""
        if self.run.writable:
            print(f"qualcl: {line}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------------ training
    def fit(
        self,
        stage: str,
        module: RecipeModule,
        train: Loader,
        val: Loader | None = None,
        *,
        weights: Mapping[str, nn.Module],
        max_steps: int = -1,
        max_epochs: int | None = None,
        monitor: str | None = None,
        every_n_train_steps: int | None = None,
        check_val_every_n_epoch: int = 1,
        find_unused_parameters: bool = False,
        sync_batchnorm: bool = True,
        double_backward: bool = False,
        info: Mapping[str, Any] | None = None,
        collapse: Probe | None = None,
    ) -> dict[str, Any]:
        """Train ``module`` for stage ``stage`` — or, if an earlier run finished it, load its weights.

        An interrupted stage resumes from ``checkpoints/<stage>/last.ckpt``. After training, the best
        checkpoint (by ``monitor``, maximised) is loaded, every module of ``weights`` is saved as
        ``weights/<name>.safetensors`` and the stage is marked done with its timing.

        Args:
            stage: Stage name (checkpoint folder, history file, ``stages.json`` key).
            module: The LightningModule.
            train: The training loader, or a function building it (called once the process group
                exists, so rank-aware samplers see their rank). It is wrapped in a
                :class:`~qualcl.recipes.resume.ResumableLoader`, which calls ``set_epoch(epoch)`` on
                its sampler (or batch sampler) and dataset before each epoch's iteration.
            val: The validation loader (or a function), if any.
            weights: ``{file name: module}`` written when the stage ends, loaded when it is done.
            max_steps: Step budget (``-1``: by epochs).
            max_epochs: Epoch budget.
            monitor: Logged metric that selects the best checkpoint.
            every_n_train_steps: Refresh ``last.ckpt`` every this many steps (default every epoch).
            check_val_every_n_epoch: Validation period in epochs.
            find_unused_parameters: DDP: the stage leaves some parameters without gradient.
            sync_batchnorm: DDP: synchronise BatchNorm in this stage (if ``trainer.sync_batchnorm``, the
                default), so that a step's batch statistics are those of the global batch.
            double_backward: The stage differentiates twice through BatchNorm (a second-order meta
                step): synchronise it with qualcl's twice-differentiable layer on GPUs too.
            info: Extra entries for ``stages.json``.
            collapse: A pre-training stage's probe (:data:`~qualcl.recipes.collapse.Probe`): a
                :class:`~qualcl.recipes.collapse.CollapseMonitor` then writes the effective rank,
                uniformity and alignment of a fixed probe batch every 1/20 of the stage's steps
                (``history/<stage>_collapse.csv``, ``plots/<stage>_collapse.png``).

        Returns:
            What ``stages.json`` records for the stage (``seconds``, ``best_epoch``, ``info``).
        """
        run = self.run
        if run.stage_done(stage):
            for name, part in weights.items():
                run.load_weights(part, name)
            self.records[stage] = run.stage_info(stage)
            self.say(f"stage {stage}: finished in an earlier run, weights reloaded")
            return self.records[stage]
        if self.config.trainer.channels_last:
            module = module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if self.config.trainer.small_map_convs == "unfold":
            unfold_small_convs(module)
        callbacks: list[Callback] = [HistoryWriter(run, stage, "history_rows")]  # as the module declares it
        if collapse is not None:
            every = max(1, max_steps // 20) if max_steps > 0 else 10
            callbacks.append(CollapseMonitor(run, stage, collapse, every=every))
        trainer = make_trainer(
            run,
            stage,
            self.config.trainer,
            max_steps=max_steps,
            max_epochs=max_epochs,
            callbacks=[*callbacks, *self.callbacks],
            every_n_train_steps=every_n_train_steps,
            monitor=monitor,
            check_val_every_n_epoch=check_val_every_n_epoch,
            find_unused_parameters=find_unused_parameters,
            sync_batchnorm=sync_batchnorm,
            double_backward=double_backward,
        )
        start = time.perf_counter()

        def position() -> tuple[int, int]:
            # the epoch being (or about to be) trained and its batches done, as Lightning counts them: its
            # processed-epoch count, not current_epoch, which lags by one while a run resumed at an epoch's
            # end fetches the next epoch's first batch (and in on_train_epoch_end hooks)
            epochs, batches = (
                trainer.fit_loop.epoch_progress.current,
                trainer.fit_loop.epoch_loop.batch_progress.current,
            )
            return int(epochs.processed), int(batches.processed)  # type: ignore[attr-defined]

        loaders = _TrainLoader(train, position) if val is None else _Loaders(train, val, position)
        resume = resume_path(run, stage)
        count, unit = (max_steps, "step") if max_steps > 0 else (max_epochs or 0, "epoch")
        budget = f"{count} {unit}{'' if count == 1 else 's'}"
        self.say(f"stage {stage}: {budget}" + (", resuming from its last checkpoint" if resume else ""))
        try:
            trainer.fit(module, datamodule=loaders, ckpt_path=resume, weights_only=True)
        except SIGTERMException:
            # Lightning stops on SIGTERM by raising SystemExit(None): exit code 0, as if the run had finished
            print(f"qualcl: stage {stage!r} was stopped; run the same command again to resume", file=sys.stderr)
            raise SystemExit(128 + signal.SIGTERM) from None
        if not _budget_spent(trainer, max_steps, max_epochs):
            raise RuntimeError(
                f"stage {stage!r} stopped at epoch {trainer.current_epoch}, step {trainer.global_step} before its "
                "budget; its checkpoint is kept: run the same command again to resume"
            )
        best_epoch = load_best(run, stage, module) if monitor else None
        for name, part in weights.items():
            run.save_weights(part, name)
        record = {"seconds": round(time.perf_counter() - start, 1), "best_epoch": best_epoch, **(info or {})}
        if run.writable:
            plot_history(run.read_history(stage), module.history, run.path("plots", f"{stage}.png"), title=stage)
        run.mark_done(stage, **record)
        run.drop_checkpoints(stage)
        self.records[stage] = record
        return record

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict(
        self,
        forward: Callable[[Any], Mapping[str, Tensor]],
        dataset: Dataset[Any],
        *,
        batch_size: int,
        modules: Sequence[nn.Module] = (),
    ) -> dict[str, Tensor]:
        """Run ``forward(batch)`` over ``dataset`` sharded across ranks; every rank gets all outputs in order.

        Rank ``r`` of ``W`` takes items ``r, r + W, …``; the outputs (a dict of tensors, one row per
        item) are gathered from every rank (:func:`qualcl.distributed.gather_no_grad`) and put back
        in dataset order, so metrics are computed on the whole set, never averaged per rank.

        Args:
            forward: Maps a collated batch (on :attr:`device`) to ``{name: (B, ...) tensor}``.
            dataset: Items to predict.
            batch_size: Items per batch.
            modules: Modules ``forward`` uses: put in eval mode and moved to :attr:`device` for the call.

        Returns:
            ``{name: (len(dataset), ...) tensor}`` on the CPU.
        """
        n = len(dataset)  # type: ignore[arg-type]
        if n == 0:
            raise ValueError("nothing to predict: the dataset is empty")
        world, me = world_size(), rank()
        device = self.device
        modes = [m.training for m in modules]
        for m in modules:
            m.eval().to(device)
        try:
            mine = list(range(me, n, world))
            loader = DataLoader(Subset(dataset, mine or [0]), batch_size=batch_size, shuffle=False)
            outputs: dict[str, list[Tensor]] = {}
            for batch in loader:
                moved = _to_device(batch, device)
                for key, value in forward(moved).items():
                    outputs.setdefault(key, []).append(value.detach())
            local = {k: torch.cat(v)[: len(mine)] for k, v in outputs.items()}
        finally:
            for m, mode in zip(modules, modes, strict=True):
                m.train(mode)
        if world == 1:
            return {k: v.cpu() for k, v in local.items()}
        order = torch.cat([torch.arange(r, n, world) for r in range(world)])
        result = {}
        for key, value in local.items():
            gathered = gather_no_grad(value.contiguous()).cpu()
            placed = torch.empty_like(gathered)
            placed[order] = gathered
            result[key] = placed
        return result

    def barrier(self) -> None:
        """Wait for every rank (a no-op on one process)."""
        if is_distributed():
            dist.barrier()


def check_data(config: Any) -> None:
    """Refuse a real dataset without its folder: ``--data DIR is required with --dataset NAME``.

    ``config.data`` (when the config has one) names ``dataset`` and ``data_dir``; only the embedded
    ``"synthetic"`` set is generated when no folder is given.
    """
    data = getattr(config, "data", None)
    dataset = getattr(data, "dataset", "synthetic")
    if dataset != "synthetic" and getattr(data, "data_dir", None) is None:
        raise ValueError(f"--data DIR is required with --dataset {dataset}")


def _finite(value: Any) -> bool:
    """Whether ``value`` is a finite number (``None`` and NaN are not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _shown(cells: dict[str, Any], key: str) -> Any:
    """The summary's value of ``key`` in a stratum's ``cells``, ``None`` where the stratum has no images."""
    return None if cells.get("n", 1) == 0 else cells.get(key)


def _budget_spent(trainer: L.Trainer, max_steps: int, max_epochs: int | None) -> bool:
    """Whether ``fit`` returned because the stage's step or epoch budget was reached (not stopped early)."""
    if trainer.interrupted:
        return False
    if max_steps > 0 and trainer.global_step >= max_steps:
        return True
    return max_epochs is not None and trainer.current_epoch >= max_epochs


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch


class Recipe(ABC, Generic[C, D, S]):
    """A paper's end-to-end recipe, run by :func:`run_recipe`.

    Class attributes describe it (name, paper, config class, presets, datasets, command-line
    texts); the methods below are what a recipe writes. ``D`` is its data, ``S`` its models.
    """

    #: The recipe's :class:`~qualcl.recipes.config.RecipeSpec` (its torch-free ``config`` module's ``SPEC``,
    #: which the CLI reads before any import): ``name``, ``config_class``, ``presets``, ``datasets``,
    #: ``data_help`` and ``set_example`` are copied from it.
    spec: ClassVar[RecipeSpec[Any]]
    name: ClassVar[str]
    paper: ClassVar[str]
    config_class: ClassVar[type[Any]]
    presets: ClassVar[Mapping[str, Mapping[str, Any]]]
    datasets: ClassVar[tuple[str, ...]]
    data_help: ClassVar[str]
    set_example: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "spec" in cls.__dict__:
            for attribute in ("name", "config_class", "presets", "datasets", "data_help", "set_example"):
                setattr(cls, attribute, getattr(cls.spec, attribute))

    # ------------------------------------------------------------------ config
    def config(self, preset: str = "default", **arguments: Any) -> C:
        """The recipe's config, as :meth:`RecipeSpec.config` builds it from ``preset`` and its keyword arguments."""
        return self.spec.config(preset, **arguments)  # type: ignore[no-any-return]

    def check(self, config: C) -> None:
        """Reject a config the recipe cannot run (raise ``ValueError``) before anything is written."""

    def headline(self, metrics: dict[str, Any]) -> Any:
        """What ``qualcl run`` prints after a run: by default the test metrics' ``original`` / ``overall`` part."""
        headline = metrics.get("test", {})
        for key in ("original", "overall"):
            headline = headline.get(key, headline) if isinstance(headline, dict) else headline
        return headline

    def summary_sets(self, config: C, metrics: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
        """The test sets of the end-of-run summary: ``{test set: {stratum: {metric: value}}}``.

        By default every part of ``metrics["test"]`` that has an ``overall`` stratum (``original``,
        ``lq_70``, ...) is a test set; a recipe whose test metrics are laid out otherwise gives
        :meth:`ablation_cells` as its one test set.
        """
        test = metrics.get("test", {})
        sets = {
            name: {stratum: cells for stratum, cells in part.items() if isinstance(cells, dict)}
            for name, part in test.items()
            if isinstance(part, dict) and isinstance(part.get("overall"), dict)
        }
        return sets or {"test": self.ablation_cells(config, metrics)}

    def summary_metric(self, config: C) -> tuple[str, str]:
        """``(key, label)`` of the metric the end-of-run summary shows per test set.

        By default the first of :meth:`ablation_columns`; a recipe whose ablation columns name a
        test set as well as a metric (``original/metric``) gives the metric's key in
        :meth:`summary_sets`' cells instead.
        """
        return next(iter(self.ablation_columns(config).items()))

    def summary(self, config: C, metrics: dict[str, Any]) -> str:
        """The end-of-run summary ``qualcl run`` prints: one aligned table, strata as rows, "—" for an empty one.

        The headline metric is :meth:`summary_metric`. When the test sets of :meth:`summary_sets`
        hold it, the columns are those test sets; otherwise they are the ablation's metrics
        (:meth:`ablation_cells`, at most six columns with a value).
        """
        columns = self.ablation_columns(config)
        key, label = self.summary_metric(config)
        sets = self.summary_sets(config, metrics)
        if any(key in cells for part in sets.values() for cells in part.values()):
            title = f"{label} on the test set" + ("s" if len(sets) > 1 else "")
            table = {
                name: {stratum: _shown(cells, key) for stratum, cells in part.items()} for name, part in sets.items()
            }
        else:
            cells = self.ablation_cells(config, metrics)
            shown = [k for k in columns if any(_finite(c.get(k)) for c in cells.values())][:6] or [key]
            title = "test metrics"
            table = {columns[k]: {stratum: _shown(c, k) for stratum, c in cells.items()} for k in shown}
        strata = strata_order(s for column in table.values() for s in column)
        width = max(len(s) for s in [*strata, "stratum"])
        widths = [max(len(name), 6) for name in table]
        header = "".join(f"  {n:>{w}}" for n, w in zip(table, widths, strict=True))
        lines = [f"{title}:", "  " + "stratum".ljust(width) + header]
        for stratum in strata:
            row = []
            for column, w in zip(table.values(), widths, strict=True):
                value = column.get(stratum)
                text = f"{value:.3f}" if _finite(value) else "—"
                row.append(f"  {text:>{w}}")
            lines.append("  " + stratum.ljust(width) + "".join(row))
        return "\n".join(lines)

    # ------------------------------------------------------------------ ablation
    def ablation_columns(self, config: C) -> dict[str, str]:
        """The ablation table's metrics, ``{key of ablation_cells: heading}``; the first is also shown per stratum."""
        raise NotImplementedError(f"{self.name} declares ablations but no ablation_columns")

    def ablation_cells(self, config: C, metrics: dict[str, Any]) -> dict[str, dict[str, float]]:
        """``{stratum: {metric: value}}`` of one finished run's ``metrics.json`` for the ablation tables.

        By default the test metrics' ``original`` (or the test metrics themselves) by stratum:
        ``overall`` first, then each stratum in the order the run wrote them.
        """
        test = metrics.get("test", {})
        test = test.get("original", test)
        return {stratum: cells for stratum, cells in test.items() if isinstance(cells, dict)}

    def ablation_notes(self, config: C) -> str:
        """A sentence under the ablation table's heading (protocol, the paper's numbers): none by default."""
        return ""

    def ablation_plots(self, config: C, results: dict[str, dict[str, dict[str, list[float]]]], root: Path) -> None:
        """Plots of the ablation beyond the runner's dot plot (a sweep's curve, say), written into ``root``."""

    # ------------------------------------------------------------------ the run
    @abstractmethod
    def load_data(self, ctx: RunContext[C]) -> D:
        """Read (or generate) the run's data."""

    @abstractmethod
    def setup(self, ctx: RunContext[C], data: D) -> S:
        """Build the models, randomly initialised (or from local pretrained files)."""

    @abstractmethod
    def stages(self, config: C) -> Sequence[Stage]:
        """The training stages, in order."""

    @abstractmethod
    def evaluate(self, ctx: RunContext[C], data: D, state: S) -> dict[str, Any]:
        """Test metrics (and plots); the driver adds timing and writes ``metrics.json``."""

    @abstractmethod
    def model_card(self, ctx: RunContext[C], data: D, state: S, results: dict[str, Any]) -> ModelCard:
        """The run's model card."""

    def run(
        self, config: C, out: str | Path, *, callbacks: Sequence[Callback] = (), overwrite: bool = False
    ) -> dict[str, Any]:
        """Run end to end into folder ``out`` (see :func:`run_recipe`)."""
        return run_recipe(self, config, out, callbacks=callbacks, overwrite=overwrite)


def run_recipe(
    recipe: Recipe[C, D, S],
    config: C,
    out: str | Path,
    *,
    callbacks: Sequence[Callback] = (),
    overwrite: bool = False,
) -> dict[str, Any]:
    """Run ``recipe`` with ``config`` into the run folder ``out``; re-running resumes where it stopped.

    A run folder is resumed only with the same config (``trainer.progress`` and ``trainer.logger``
    may differ); another config, a file, an unwritable path or a folder with files qualcl did not
    write are refused before anything is written (:func:`~qualcl.recipes.run_folder.prepare_run_folder`),
    and so is a folder another process is running into (:meth:`RunFolder.exclusive`).
    ``overwrite`` deletes an earlier run's own files first.

    Order: checks (nothing is written before they pass) → ``config.yaml`` → seeding → data →
    models (a failure up to here removes the folder this call created: :meth:`RunFolder.discard`) →
    each stage, from a seed of its own (:func:`stage_seed`; finished stages reload their
    weights, an interrupted one resumes from its ``last.ckpt``) → evaluation →
    ``metrics.json``/``.csv`` → ``MODEL_CARD.md``.

    Args:
        recipe: The recipe.
        config: Its resolved config.
        out: Run folder.
        callbacks: Extra Lightning callbacks for every stage.
        overwrite: Start over instead of resuming (also with the same config): the earlier run's files go.

    Returns:
        The metrics written to ``metrics.json``: the recipe's, plus ``stages`` (seconds per stage)
        and ``seconds`` (the whole run).

    Raises:
        ValueError: The config, the machine or the folder cannot take the run (nothing was written).
        SystemExit: A stage was stopped by SIGTERM (code 143) or Ctrl-C (130; the first one stops the
            stage after its current step, as SIGTERM does: :class:`~qualcl.recipes.interrupt.GracefulInterrupt`);
            the run resumes exactly when re-run.
    """
    if not isinstance(config, recipe.config_class):
        raise TypeError(f"{recipe.name} needs a {recipe.config_class.__name__}, got {type(config).__name__}")
    check_config(config)  # a config built in Python skipped the bounds that config_from_dict checks
    check_trainer(config.trainer)
    check_data(config)
    recipe.check(config)
    if is_global_zero():
        prepare_run_folder(out, config_to_dict(config), overwrite=overwrite)
    interrupt = GracefulInterrupt()
    ctx: RunContext[C] = RunContext(config, out, [*callbacks, interrupt])
    with ctx.run.exclusive():  # a second process into this folder is refused while this one runs
        interrupt.install()
        try:
            return _run_stages(recipe, config, ctx)
        except SystemExit as stop:
            if interrupt.signal is not None and stop.code not in (0, None):  # Ctrl-C: the shell's code, 130
                raise SystemExit(128 + signal.SIGINT) from None
            raise
        except KeyboardInterrupt:
            print("qualcl: interrupted (Ctrl-C); run the same command again to resume", file=sys.stderr)
            raise SystemExit(128 + signal.SIGINT) from None
        finally:
            interrupt.uninstall()


def _run_stages(recipe: Recipe[C, D, S], config: C, ctx: RunContext[C]) -> dict[str, Any]:
    """The part of :func:`run_recipe` after the folder checks: start, stages, evaluation, results."""
    try:
        ctx.run.save_config(config, recipe.name)
        L.seed_everything(config.seed, workers=True, verbose=False)
        data = recipe.load_data(ctx)
        state = recipe.setup(ctx, data)
    except BaseException:
        # a failed start (a bad --data folder, a setting refused by a model) leaves no run behind:
        # the corrected command into the same --out must not be refused as "another config"
        ctx.run.discard()
        raise
    for stage in recipe.stages(config):
        # each stage starts from a seed of its own: its randomness (a new head's initialisation, say)
        # does not depend on whether the stages before it trained in this run or were reloaded
        L.seed_everything(stage_seed(config.seed, stage.name), workers=True, verbose=False)
        stage.run(ctx, data, state)
    results = recipe.evaluate(ctx, data, state)
    stages = {name: record.get("seconds") for name, record in ctx.records.items()}
    results = {**results, "stages": stages, "seconds": round(time.perf_counter() - ctx.started, 1)}
    ctx.run.write_metrics(results)
    card = recipe.model_card(ctx, data, state, results)
    if getattr(recipe, "spec", None) is not None and recipe.spec.claims:
        card.claims = standing(recipe.name, config_to_dict(config), config_to_dict(recipe.config_class()))
    ctx.run.write_model_card(card)
    ctx.barrier()
    return results
