"""Recipe configs: nested dataclasses that round-trip to YAML, one preset mechanism, dotted overrides.

Every recipe config derives from :class:`RecipeConfig` (``preset``, ``seed`` and the shared
:class:`TrainerConfig`). Field types are checked when a config is built: ``Literal`` fields accept
only their listed values, so a wrong ``--set train.meta_batch=...`` fails at once and names the
allowed values (and the closest one, for a typo); ``__post_init__`` methods check what depends on
several fields. Neither this module nor a recipe's ``config`` module imports torch
(:class:`RecipeSpec`).
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, Union

import yaml

__all__ = [
    "CNN_ENCODERS",
    "FULL_RESOLUTION_ENCODERS",
    "Claim",
    "DataConfig",
    "RecipeConfig",
    "RecipeSpec",
    "TrainerConfig",
    "Variant",
    "apply_overrides",
    "bounded",
    "check_cnn_encoder",
    "check_config",
    "config_from_dict",
    "config_to_dict",
    "dataset_choices",
    "did_you_mean",
    "load_config",
    "merge",
    "parse_overrides",
    "resolve_config",
    "save_config",
]

C = TypeVar("C")
T = TypeVar("T")

#: The ``"cnn"`` encoders of :data:`qualcl.models.ENCODERS`, in its order: configs check their
#: encoder names against this copy, so that building a config does not import torch (a test keeps
#: the two equal).
CNN_ENCODERS: tuple[str, ...] = tuple(
    "resnet10 resnet10_tiny resnet18 resnet34 resnet50 vgg16_bn vgg16_bn_tiny vgg16_bn_micro unet unet_small".split()
)
#: The :data:`CNN_ENCODERS` whose first pyramid map has the input's resolution (``pyramid_reductions[0] == 1``):
#: what a pixel-level decoder that ends at full size needs (a test keeps it equal to the encoders' own).
FULL_RESOLUTION_ENCODERS: tuple[str, ...] = tuple("vgg16_bn vgg16_bn_tiny vgg16_bn_micro unet unet_small".split())


def did_you_mean(word: object, options: Iterable[object]) -> str:
    """``" (did you mean 'x'?)"`` for the option closest to a mistyped ``word``, or ``""`` when none is close.

    Examples:
        >>> did_you_mean("stpes", ["steps", "lr"])
        " (did you mean 'steps'?)"
        >>> did_you_mean("bf16", ["32", "bf16-mixed"])
        " (did you mean 'bf16-mixed'?)"
        >>> did_you_mean("zzz", ["steps", "lr"])
        ''
    """
    names = [str(option) for option in options]
    close = difflib.get_close_matches(str(word), names, n=1, cutoff=0.6)
    if not close:  # an abbreviation: "bf16" for "bf16-mixed"
        close = [name for name in names if str(word) and name.startswith(str(word))]
    return f" (did you mean {close[0]!r}?)" if len(close) == 1 else ""


def check_cnn_encoder(name: str, where: str) -> None:
    """Raise ``ValueError`` unless ``name`` is one of the :data:`CNN_ENCODERS` (``where`` names the field)."""
    if name not in CNN_ENCODERS:
        raise ValueError(
            f"{where} must be one of the CNN encoders {list(CNN_ENCODERS)}, got {name!r}"
            + did_you_mean(name, CNN_ENCODERS)
        )


def bounded(default: T, rule: str, *, multiple_of: int | None = None) -> T:
    """A config field with its own bounds, refused at its key when the config is built.

    Args:
        default: The field's default.
        rule: ``">= 32"``, ``"> 0"`` or an interval ``"in (0, 1)"`` / ``"in [0, 1)"`` (brackets:
            closed ends); it replaces the field name's entry in :data:`FIELD_BOUNDS`.
        multiple_of: The value must also be a multiple of this.

    Examples:
        >>> @dataclass
        ... class Data:
        ...     image_size: int = bounded(64, ">= 32", multiple_of=16)
        >>> config_from_dict(Data, {"image_size": 40})
        Traceback (most recent call last):
        ValueError: config.image_size must be >= 32 and a multiple of 16, got 40
    """
    _parse_rule(rule)  # a malformed rule fails where it is written
    return field(default=default, metadata={"bounds": rule, "multiple_of": multiple_of})


def _parse_rule(rule: str) -> tuple[float, float, tuple[bool, bool]]:
    """``">= 1"`` → ``(1, inf, (True, False))``; ``"in (0, 1]"`` → ``(0, 1, (False, True))``."""
    text = rule.strip()
    if text.startswith((">=", ">")):
        return float(text.lstrip(">=").strip()), math.inf, (text.startswith(">="), False)
    if text.startswith("in ") and text[3] in "([" and text[-1] in ")]":
        low, high = (float(part) for part in text[4:-1].split(","))
        return low, high, (text[3] == "[", text[-1] == "]")
    raise ValueError(f"bounds rule must look like '>= 1', '> 0' or 'in [0, 1)', got {rule!r}")


@dataclass
class TrainerConfig:
    """How a run executes: devices, distribution, precision, logging. Shared by every recipe.

    The values map onto Lightning's ``Trainer`` (``accelerator``, ``devices``, ``num_nodes``,
    ``strategy``, ``precision``); under ``torchrun`` or SLURM, Lightning's cluster environments take
    the ranks from the launcher (see ``docs/recipes.md``, "Scale-out").

    Attributes:
        accelerator: ``"auto"`` (a GPU when there is one), ``"cpu"`` or ``"gpu"``.
        devices: Devices per node (processes per node under DDP).
        num_nodes: Nodes.
        strategy: ``"auto"`` (DDP when ``devices × num_nodes > 1``) or ``"ddp"``.
        precision: ``"32"``, ``"bf16-mixed"`` or ``"16-mixed"`` (Lightning's mixed precision; the
            losses keep their log-sum-exp in float32).
        logger: ``"csv"`` (``logs/<stage>/metrics.csv`` in the run folder), ``"tensorboard"``,
            ``"wandb"``, ``"mlflow"`` (a local ``mlruns/`` store) or ``"none"``.
        sync_batchnorm: Under DDP, synchronise BatchNorm statistics across processes in every stage
            (so that a step equals one process on the whole batch): torch's ``SyncBatchNorm`` on
            GPUs, :class:`qualcl.distributed.SyncBatchNorm` on CPUs (gloo).
        channels_last: Train convolutional encoders in channels-last memory format.
        small_map_convs: ``"native"`` or ``"unfold"``: on the CPU, run convolutions whose input maps
            have at most 9 pixels as unfold + matmul (:class:`qualcl.models.UnfoldConv2d`; the same
            function, a backward several times faster there, other rounding).
        progress: Show progress bars.
    """

    accelerator: Literal["auto", "cpu", "gpu"] = "auto"
    devices: int = 1
    num_nodes: int = 1
    strategy: Literal["auto", "ddp"] = "auto"
    precision: Literal["32", "bf16-mixed", "16-mixed"] = "32"
    logger: Literal["csv", "tensorboard", "wandb", "mlflow", "none"] = "csv"
    sync_batchnorm: bool = True
    channels_last: bool = False
    small_map_convs: Literal["native", "unfold"] = "native"
    progress: bool = True

    @property
    def world_size(self) -> int:
        """Processes of the run: ``devices × num_nodes``."""
        return self.devices * self.num_nodes

    @property
    def distributed(self) -> bool:
        """Whether the run uses DDP."""
        return self.strategy == "ddp" or self.world_size > 1


@dataclass
class DataConfig:
    """The data fields every recipe's ``data`` section starts with.

    A recipe derives its own section from it, re-declaring ``dataset`` as a ``Literal`` of the
    datasets it reads (the one declaration of them: ``--dataset``'s choices and
    :attr:`RecipeSpec.datasets` come from it) and any default it changes, and adding its own fields.

    Attributes:
        dataset: ``"synthetic"`` (the embedded SynthFundus set, generated once into the run folder or
            ``data_dir``) or a real dataset the recipe reads from ``data_dir``.
        data_dir: Dataset folder (required for a real dataset: ``--data DIR``).
        num_images: Synthetic images to generate.
        image_size: Side of the network input, in pixels.
        lq_ratio: Synthetic low-quality fraction (EyeQ's training set: 0.336).
        seed: Seed of the data (synthetic generation, splits): fixed across training seeds.
        extra_test_images: Synthetic test-only images added to the test split (training set unchanged).
    """

    dataset: str = "synthetic"
    data_dir: str | None = None
    num_images: int = 1200
    image_size: int = bounded(64, ">= 8")
    lq_ratio: float = 0.336
    seed: int = 0
    extra_test_images: int = bounded(0, ">= 0")

    def __post_init__(self) -> None:
        """Where a recipe's section checks what depends on several of its fields (bounds: :func:`bounded`)."""


def dataset_choices(config_class: type[Any]) -> tuple[str, ...]:
    """The datasets a recipe reads: the ``Literal`` of its ``data.dataset`` field.

    Examples:
        >>> from qualcl.recipes.mirror_retrieval.config import MirrorRetrievalConfig
        >>> dataset_choices(MirrorRetrievalConfig)
        ('synthetic', 'eyepacs', 'eyeq')
    """
    data = typing.get_type_hints(config_class).get("data")
    kind = typing.get_type_hints(data).get("dataset") if data is not None else None
    if typing.get_origin(kind) is not Literal:
        raise TypeError(f"{config_class.__name__}.data.dataset must be a Literal of dataset names, got {kind!r}")
    return tuple(str(name) for name in typing.get_args(kind))


@dataclass(frozen=True)
class Variant:
    """One ablation variant, declared beside the presets: the paper's label and its ``--set`` overrides.

    Attributes:
        label: What the paper (or the table) calls it.
        overrides: ``key.sub=value`` strings applied to the base config, as ``--set`` applies them.

    Examples:
        >>> Variant("+ mirror attention", ("model.attention=intended",)).overrides
        ('model.attention=intended',)
    """

    label: str
    overrides: tuple[str, ...] = ()


@dataclass(frozen=True)
class Claim:
    """A paper's claim as one paired comparison of two ablation variants, written down before it is measured.

    ``qualcl run NAME --ablation`` pairs the two variants' runs by seed (same data, split and
    initialisation) and reports the mean difference of ``metric`` with its 95 % interval and a verdict
    (:func:`qualcl.evaluation.paired_difference`).

    Attributes:
        statement: The claim in one sentence, as the paper makes it.
        variant: The ablation variant the paper says is better.
        reference: The variant it is compared with.
        metric: A key of the recipe's ``ablation_columns``.
        stratum: Where it is measured: ``"overall"`` or a quality level.
        higher_is_better: ``False`` for an error (the difference is then ``reference - variant``).

    Examples:
        >>> Claim("CoMCL beats basic CL", "comcl", "basic_cl", "qwk").stratum
        'overall'
    """

    statement: str
    variant: str
    reference: str
    metric: str
    stratum: str = "overall"
    higher_is_better: bool = True


@dataclass
class RecipeConfig:
    """Fields every recipe config starts with.

    Attributes:
        preset: Name of the preset the config was built from.
        seed: Training seed (initialisation, sampling, augmentation).
        trainer: :class:`TrainerConfig`.
    """

    preset: str = "default"
    seed: int = 0
    trainer: TrainerConfig = field(default_factory=TrainerConfig)


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain ``dict`` of a (nested) dataclass config; tuples become lists."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"config must be a dataclass instance, got {type(config).__name__}")

    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        return value

    result: dict[str, Any] = plain(config)
    return result


def _coerce(kind: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(kind)
    if origin is Literal:
        allowed = typing.get_args(kind)
        if value in allowed and type(value) is type(allowed[allowed.index(value)]):
            return value
        if not isinstance(value, bool) and str(value) in allowed:  # --set trainer.precision=32 parses as int
            return str(value)
        raise ValueError(f"{where} must be one of {list(allowed)}, got {value!r}" + did_you_mean(value, allowed))
    if origin in (Union, types.UnionType):
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        if value is None:
            return None
        return _coerce(options[0], value, where) if len(options) == 1 else value
    if dataclasses.is_dataclass(kind) and isinstance(kind, type):
        if not isinstance(value, dict):
            raise ValueError(f"{where} must be a mapping for {kind.__name__}, got {value!r}")
        return config_from_dict(kind, value, _where=where)
    if origin in (tuple, list):
        args = typing.get_args(kind)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where} must be a list, got {value!r}")
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):  # list[T], tuple[T, ...]
            items = [_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
            return items if origin is list else tuple(items)
        if len(args) != len(value):
            raise ValueError(f"{where} must have {len(args)} items, got {value!r}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind in (int, float, str, bool) and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
        raise ValueError(f"{where} must be {kind.__name__}, got {value!r}")
    return value


#: Bounds by field name, the same in every section of every recipe config: a value outside them is
#: refused when the config is built, at its key (``config.train.lr must be > 0, got -0.1``), not deep
#: inside an optimiser or a layer. A recipe's ``__post_init__`` adds what depends on its own fields.
FIELD_BOUNDS: dict[str, str] = {
    **dict.fromkeys(
        (
            "lr meta_lr finetune_lr temperature region_temperature gem_p gamma lr_gamma "
            "discriminator_lr_ratio landmark_sigma"
        ).split(),
        "> 0",
    ),
    **dict.fromkeys(
        (
            "batch_size num_images devices num_nodes k clusters grid patch_size per_level halve_every lr_step "
            "val_every steps_per_epoch embed_dim few_shot_seeds slice_length"
        ).split(),
        ">= 1",
    ),
    **dict.fromkeys(
        (
            "weight_decay meta_weight_decay epochs finetune_epochs frozen_epochs probe_epochs stage1_epochs "
            "stage2_epochs warmup_epochs steps margin triplet_margin focal_gamma mask_eps seed labelled "
            "rotation"
        ).split(),
        ">= 0",
    ),
    **dict.fromkeys(
        "lq_ratio momentum train_lq_fraction crop_scale mask_ratio text_mask_ratio detector_min_score".split(),
        "in [0, 1]",
    ),
}


def _check_bounds(name: str, value: Any, where: str, own: Mapping[str, Any]) -> None:
    """Refuse a non-finite float, and a value outside its bounds (``own``, else :data:`FIELD_BOUNDS`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, got {value}")
    rule = own.get("bounds") or FIELD_BOUNDS.get(name) or (">= 0" if name.endswith("_weight") else None)
    if rule is None:
        return
    low, high, (closed_low, closed_high) = _parse_rule(rule)
    inside = (value >= low if closed_low else value > low) and (value <= high if closed_high else value < high)
    step = own.get("multiple_of")
    if not inside or (step and value % step):
        rule += f" and a multiple of {step}" if step else ""
        raise ValueError(f"{where} must be {rule}, got {value}")


def config_from_dict(cls: type[C], data: Mapping[str, Any], *, _where: str = "config") -> C:
    """Build dataclass ``cls`` from a mapping; unknown keys, wrong types and bad values raise ``ValueError``."""
    if not (dataclasses.is_dataclass(cls) and isinstance(cls, type)):
        raise TypeError(f"cls must be a dataclass type, got {cls!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        hint = did_you_mean(unknown[0], names) if len(unknown) == 1 else ""
        raise ValueError(f"{_where}: unknown key(s) {unknown}{hint}; known keys: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{_where}.{k}") for k, v in data.items()}
    own = {f.name: f.metadata for f in dataclasses.fields(cls)}
    for base in cls.__mro__[1:]:  # a field re-declared with another default keeps its base's bounds
        if dataclasses.is_dataclass(base):
            own |= {f.name: f.metadata for f in dataclasses.fields(base) if f.metadata and not own.get(f.name)}
    for key, value in kwargs.items():
        _check_bounds(key, value, f"{_where}.{key}", own[key])
    try:
        return cls(**kwargs)
    except ValueError as error:
        raise ValueError(f"{_where}: {error}") from None


def check_config(config: C) -> C:
    """Refuse ``config`` where :func:`config_from_dict` would have: bounds, types, allowed values, at their key.

    A config built in Python (``dataclasses.replace``, a constructor) skips those checks; this
    rebuilds it from its plain ``dict`` so that a run refuses it before anything is written.

    Args:
        config: A recipe's (nested dataclass) config.

    Returns:
        The rebuilt config, equal to ``config``.

    Raises:
        ValueError: A value breaks its field's rule, named by its dotted key (``config.finetune.epochs``).

    Examples:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Train:
        ...     epochs: int = 1
        >>> check_config(Train(epochs=-3))
        Traceback (most recent call last):
        ValueError: config.epochs must be >= 0, got -3
    """
    return config_from_dict(type(config), config_to_dict(config))


def save_config(config: Any, path: str | Path) -> Path:
    """Write ``config`` as YAML; returns the path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    return target


def load_config(cls: type[C], path: str | Path) -> C:
    """Read a YAML file written by :func:`save_config` back into ``cls``."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a YAML mapping at the top level")
    return config_from_dict(cls, data)


def merge(base: dict[str, Any], changes: Mapping[str, Any], *, where: str = "config") -> dict[str, Any]:
    """Merge nested ``changes`` into ``base`` in place (mappings recursively, other values replaced)."""
    for key, value in changes.items():
        if key not in base:
            raise ValueError(f"{where}: unknown key {key!r}{did_you_mean(key, base)}; known: {sorted(base)}")
        if isinstance(value, Mapping) and isinstance(base[key], dict):
            merge(base[key], value, where=f"{where}.{key}")
        else:
            base[key] = copy.deepcopy(value)
    return base


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` → ``{"a": {"b": 1}, "c": "x"}`` (values parsed as YAML, safe tags only)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, equals, text = item.partition("=")
        parts = key.strip().split(".")
        if not equals or not all(parts):
            raise ValueError(f"override {item!r} must look like key.sub=value")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f"override {item!r}: the value is not valid YAML ({type(error).__name__})") from None
        node = nested
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"override {item!r} conflicts with an earlier override of {part!r}")
            node = child
        node[parts[-1]] = value
    return nested


def apply_overrides(config: C, overrides: Sequence[str]) -> C:
    """Return a copy of ``config`` with ``key.sub=value`` overrides (values parsed as YAML).

    Examples:
        >>> from dataclasses import dataclass
        >>> @dataclass
        ... class Cfg:
        ...     lr: float = 0.1
        ...     epochs: int = 1
        >>> apply_overrides(Cfg(), ["lr=0.01", "epochs=3"])
        Cfg(lr=0.01, epochs=3)
    """
    data = config_to_dict(config)
    changes = parse_overrides(overrides)
    for item in overrides:  # name the offending override, not just the key
        *sections, last = item.split("=", 1)[0].strip().split(".")
        node: Any = data
        for part in sections:
            if not isinstance(node.get(part), dict):
                known = [k for k, v in node.items() if isinstance(v, dict)]
                raise ValueError(
                    f"override {item!r}: {part!r} is not a section of the config{did_you_mean(part, known)}"
                )
            node = node[part]
        if last not in node:
            raise ValueError(
                f"override {item!r}: unknown key {last!r}{did_you_mean(last, node)}; known: {sorted(node)}"
            )
    return config_from_dict(type(config), merge(data, changes))


def resolve_config(
    cls: type[C],
    presets: Mapping[str, Mapping[str, Any]],
    preset: str = "default",
    *,
    dataset_settings: Any = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    overrides: Sequence[str] = (),
    seed: int | None = None,
) -> C:
    """The one way a recipe config is built: defaults ← preset ← dataset settings ← arguments ← ``--set``.

    Args:
        cls: The recipe's config dataclass; its defaults are the ``default`` preset.
        presets: ``{name: nested overrides of the defaults}``.
        preset: Preset name.
        dataset_settings: ``(dataset, preset) -> nested overrides`` a dataset implies (e.g. its number of
            classes), or ``None``.
        dataset: ``data.dataset`` (default: the preset's, or a ``--set data.dataset=...``).
        data_dir: ``data.data_dir``.
        overrides: ``key.sub=value`` strings, applied last (they win over everything else).
        seed: The training seed, if given.

    Raises:
        ValueError: Unknown preset, key or value; the message names it and what is allowed.
    """
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}{did_you_mean(preset, presets)}; choose one of {sorted(presets)}")
    data = config_to_dict(cls())
    merge(data, presets[preset])
    data["preset"] = preset
    changes = parse_overrides(overrides)
    if dataset is None:
        dataset = changes.get("data", {}).get("dataset") if isinstance(changes.get("data"), dict) else None
    if dataset is not None and "data" in data:
        data["data"]["dataset"] = dataset
    if dataset_settings is not None and "data" in data:
        merge(data, dataset_settings(str(data["data"]["dataset"]), preset))
    if data_dir is not None:
        data["data"]["data_dir"] = data_dir
    merge(data, changes)
    if seed is not None:
        data["seed"] = seed
    return config_from_dict(cls, data)


@dataclass(frozen=True)
class RecipeSpec(Generic[C]):
    """What ``qualcl run NAME`` needs before it trains: the options, their help, and the config.

    A recipe's ``config`` module defines one (its ``SPEC``), importing neither torch nor Lightning,
    so that ``qualcl run NAME --help`` and every option or config error answer at once; the
    recipe's :class:`~qualcl.recipes.driver.Recipe` (imported only when the run starts) carries the
    same attributes, and a test keeps the two equal.

    Attributes:
        name: The recipe's name (``qualcl run NAME``; the default run folder ``runs/NAME``).
        config_class: Its config dataclass (a :class:`RecipeConfig`).
        presets: ``{preset: nested overrides of config_class's defaults}``.
        datasets: The values of ``--dataset`` (default: the ``Literal`` of ``data.dataset``,
            :func:`dataset_choices`).
        data_help: Help of ``--data``.
        set_example: An example for the help of ``--set``.
        dataset_settings: ``(dataset, preset) -> nested overrides`` a dataset implies, or ``None``.
        ablations: ``{variant: Variant}``: the recipe's ablation (``qualcl run NAME --ablation``).
        claims: The paper's claims, each a paired comparison of two ablation variants (:class:`Claim`).
    """

    name: str
    config_class: type[C]
    presets: Mapping[str, Mapping[str, Any]]
    datasets: tuple[str, ...] = ()
    data_help: str = "dataset folder"
    set_example: str = "seed=1"
    dataset_settings: Callable[[str, str], dict[str, Any]] | None = None
    ablations: Mapping[str, Variant] = field(default_factory=dict)
    claims: tuple[Claim, ...] = ()

    def __post_init__(self) -> None:
        if not self.datasets:
            object.__setattr__(self, "datasets", dataset_choices(self.config_class))
        for claim in self.claims:  # a claim compares declared variants
            unknown = {claim.variant, claim.reference} - set(self.ablations)
            if unknown:
                raise ValueError(f"{self.name}: claim {claim.statement!r} names unknown variant(s) {sorted(unknown)}")

    def config(
        self,
        preset: str = "default",
        *,
        dataset: str | None = None,
        data_dir: str | None = None,
        overrides: Sequence[str] = (),
        seed: int | None = None,
    ) -> C:
        """The config, as :func:`resolve_config` builds it (``overrides``: ``--set`` strings, applied last)."""
        return resolve_config(
            self.config_class,
            self.presets,
            preset,
            dataset_settings=self.dataset_settings,
            dataset=dataset,
            data_dir=data_dir,
            overrides=overrides,
            seed=seed,
        )
