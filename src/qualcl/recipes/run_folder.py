"""A recipe's run folder: config, metrics, plots, safetensors weights, stage markers, model card."""

from __future__ import annotations

import contextlib
import csv
import functools
import json
import math
import os
import platform
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import yaml
from safetensors.torch import load_file, save_file
from torch import nn

from qualcl import __version__
from qualcl._locks import file_lock
from qualcl.recipes.config import save_config

__all__ = [
    "ARTEFACTS",
    "MANIFEST",
    "MARKER",
    "ModelCard",
    "RunFolder",
    "RunFolderBusy",
    "count",
    "flatten_metrics",
    "prepare_run_folder",
    "read_metrics",
    "strata_table",
    "strict_json",
]

#: The first line of every ``config.yaml`` qualcl writes.
MARKER = "# qualcl run config"
#: The file qualcl writes first into every run folder it creates: what tells its run folders from
#: other folders, and what allows ``--overwrite`` to delete anything (only :data:`ARTEFACTS`).
MANIFEST = ".qualcl-run.json"
#: What a run writes into its folder (files, then folders); ``data/`` (a generated dataset) is kept by
#: ``--overwrite``; the :data:`MANIFEST` goes last.
ARTEFACTS = (
    ("config.yaml", "stages.json", "metrics.json", "metrics.csv", "MODEL_CARD.md", "probe.json"),
    ("checkpoints", "weights", "history", "plots", "logs", "tensorboard", "mlruns"),
)
#: Config keys a resumed run may change: they do not change what is computed.
RESUMABLE_CHANGES = ("trainer.progress", "trainer.logger")

F = TypeVar("F", bound=Callable[..., Any])


class RunFolderBusy(ValueError):
    """A run folder another process is running into (:meth:`RunFolder.exclusive`); nothing was written."""


def count(n: int, noun: str) -> str:
    """``"1 epoch"``, ``"12 epochs"``: a number and its noun, plural unless the number is 1.

    Example:
        >>> count(1, "epoch"), count(0, "step")
        ('1 epoch', '0 steps')
    """
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def machine_description() -> str:
    """The processor a run's float rounding depends on: its model, architecture, torch threads and any GPU.

    Example:
        >>> "thread" in machine_description()
        True
    """
    name = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:  # Linux: the marketing name
            name = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), "")
    except OSError:
        pass
    name = name or platform.processor() or "unknown processor"
    text = f"{name}, {platform.machine()} ({count(torch.get_num_threads(), 'thread')})"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name(0)}"
    return text


def _cell(value: float) -> str:
    return "—" if not math.isfinite(value) else f"{value:.3f}"


def strata_table(
    results: dict[str, dict[str, dict[str, float]]], metrics: dict[str, str], *, strata: list[str] | None = None
) -> str:
    """Markdown table of strata (rows) × test settings (columns); each cell lists ``metrics`` and ``n``.

    Strata without images in a setting get "—"; a stratum without images anywhere is left out.

    Args:
        results: ``{setting: {stratum: {metric: value, "n": count}}}``.
        metrics: ``{key: label}`` of the metrics to show, in order.
        strata: Row order (default: the order of the first setting).

    Examples:
        >>> table = {"test": {"overall": {"auc": 0.7, "n": 4}, "Good": {"auc": 0.8, "n": 4}, "Bad": {"n": 0}}}
        >>> print(strata_table(table, {"auc": "AUC"}))
        | stratum | test |
        |---|---|
        | overall | 0.700 (n=4) |
        | Good | 0.800 (n=4) |
        <BLANKLINE>
        Cells: AUC (n images).
    """
    settings = list(results)
    rows = strata or list(dict.fromkeys(s for per in results.values() for s in per))
    lines = ["| stratum | " + " | ".join(settings) + " |", "|---|" + "---|" * len(settings)]
    for stratum in rows:
        cells = []
        for setting in settings:
            entry = results[setting].get(stratum) or {}
            values = " / ".join(_cell(float(entry.get(key, math.nan))) for key in metrics)
            cells.append(f"{values} (n={int(entry['n'])})" if entry.get("n") else "—")
        if any(c != "—" for c in cells):
            lines.append(f"| {stratum} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\nCells: " + " / ".join(metrics.values()) + " (n images)."


@dataclass
class ModelCard:
    """What ``MODEL_CARD.md`` says about a run.

    Attributes:
        title: Heading.
        paper: The paper the recipe reproduces.
        summary: What was trained, on what, how long.
        headline: The run's main numbers, ``{label: value}``.
        table: A markdown results table (:func:`strata_table`).
        plots: File names in ``plots/`` to show.
        claims: Where the run's configuration stands among the paper's measured claims
            (:func:`qualcl.recipes.claims.standing`; the driver fills it in for recipes that declare claims).
    """

    title: str
    paper: str
    summary: str
    headline: dict[str, float] = field(default_factory=dict)
    table: str = ""
    plots: list[str] = field(default_factory=list)
    claims: str = ""

    def render(self, root: Path) -> str:
        """The card as markdown (plots that exist under ``root/plots`` only)."""
        headline = ", ".join(f"**{k}** {_cell(v)}" for k, v in self.headline.items())
        images = [p for p in self.plots if (root / "plots" / p).is_file()]
        parts = [f"# {self.title}", f"Paper: {self.paper}", self.summary.strip()]
        if headline:
            parts.append(f"Headline: {headline}.")
        if self.table:
            parts += ["## Results", self.table.strip()]
        if images:
            parts += ["## Plots", "\n".join(f"![{Path(p).stem}](plots/{p})" for p in images)]
        if self.claims:
            parts += ["## The paper's claims at this configuration", self.claims.strip()]
        parts += [
            "## Environment",
            f"qualcl {__version__}, torch {torch.__version__}, Python {platform.python_version()}, "
            f"{machine_description()}, written {time.strftime('%Y-%m-%d %H:%M')}. "
            "Weights are in `weights/` as safetensors; all metrics are in `metrics.json` / `metrics.csv`. "
            "`config.yaml` reproduces the run bit for bit on the same kind of processor and thread count; "
            "another one rounds floats differently, and training then takes another path, as another seed would.",
        ]
        return "\n\n".join(parts) + "\n"


def _is_run_folder(root: Path) -> bool:
    """A folder qualcl made: its :data:`MANIFEST`, or (qualcl 0.1) a ``config.yaml`` starting with :data:`MARKER`."""
    if (root / MANIFEST).is_file():
        return True
    config = root / "config.yaml"
    if not config.is_file():
        return False
    with config.open(encoding="utf-8", errors="replace") as handle:
        return handle.readline().startswith(MARKER)


def _folder_has_files(root: Path) -> bool:
    return root.is_dir() and any(p.is_file() for p in root.rglob("*"))


def _folder_is_new(root: Path) -> bool:
    return not root.exists() or (root.is_dir() and not any(root.iterdir()))


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            out += _differences(old.get(key, "<absent>"), new.get(key, "<absent>"), f"{prefix}{key}.")
        return out
    name = prefix[:-1]
    if old != new and name not in RESUMABLE_CHANGES:
        return [f"{name}: {old!r} → {new!r}"]
    return []


def prepare_run_folder(root: str | Path, config: dict[str, Any], *, overwrite: bool = False) -> None:
    """Check ``root`` before a run writes anything into it; with ``overwrite``, clear what an earlier run wrote.

    A run goes into a new or empty folder, or resumes one of its own (its :data:`MANIFEST`, or for
    qualcl 0.1 a ``config.yaml`` starting with :data:`MARKER`) made with the same config (only
    :data:`RESUMABLE_CHANGES` may differ). ``overwrite`` starts over instead of resuming, with this config
    or another, deleting the earlier run's :data:`ARTEFACTS` (never ``data/``), and only in a folder with
    the manifest: a user's folder that merely looks like a run is never touched.

    Raises:
        ValueError: A path that is a file, a folder that cannot be written, one with files qualcl did not
            write, or a run with another config (the differing keys listed) without ``overwrite``; the
            message names the option and what to do.
    """
    path = Path(root)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--out {path} is a file, not a folder")
    existing = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {path}: {existing} is not writable")
    if _folder_is_new(path):
        return
    if not _is_run_folder(path):
        names = sorted(p.name for p in path.iterdir())[:5]
        raise ValueError(
            f"--out {path} holds files qualcl did not write ({', '.join(names)}); choose a new or empty folder"
        )
    if not (path / "config.yaml").is_file():
        # made, then stopped (or its config deleted) before the config was written
        files, folders = ARTEFACTS
        written = [n for n in files if (path / n).exists()] + [n for n in folders if _folder_has_files(path / n)]
        if written and not overwrite:
            raise ValueError(
                f"--out {path} holds a run's files ({', '.join(written[:5])}) but not its config.yaml, so it "
                "cannot be resumed; use a new --out, or --overwrite to delete those files and start over"
            )
        if written:
            _delete_artefacts(path)
        return  # nothing to resume: the run starts here
    try:
        old = yaml.safe_load((path / "config.yaml").read_text()) or {}
    except yaml.YAMLError:
        old = {"config.yaml": "unreadable"}
    changed = _differences(old, config)
    if not changed and not overwrite:
        return  # the same run: it resumes
    if not overwrite:
        shown = "; ".join(changed[:8]) + (f"; … ({len(changed)} in all)" if len(changed) > 8 else "")
        raise ValueError(
            f"--out {path} holds a run made with another config ({shown}). Use a new --out, or --overwrite "
            "to delete that run's files and start over"
        )
    if not (path / MANIFEST).is_file():
        raise ValueError(
            f"--overwrite: {path} has no {MANIFEST}, the mark qualcl writes into the folders it creates, so "
            "qualcl deletes nothing there; use a new --out, or delete the folder yourself"
        )
    _delete_artefacts(path)


def _delete_artefacts(path: Path, *, data: bool = False) -> None:
    """Delete what a run writes (:data:`ARTEFACTS`, ``data/`` too if asked), nothing else."""
    files, folders = ARTEFACTS
    for name in files:
        (path / name).unlink(missing_ok=True)
    for name in (*folders, "data") if data else folders:
        if (path / name).is_dir():
            shutil.rmtree(path / name)


def _writes(method: F) -> F:
    """A write of the run folder: skipped (returning ``None``) on a folder opened read-only (DDP ranks > 0)."""

    @functools.wraps(method)
    def wrapper(self: RunFolder, *args: Any, **kwargs: Any) -> Any:
        return method(self, *args, **kwargs) if self.writable else None

    return wrapper  # type: ignore[return-value]


def _map_leaves(value: Any, change: Callable[[Any], Any]) -> Any:
    """``value`` with ``change`` applied to every leaf of its nested dicts and lists."""
    if isinstance(value, dict):
        return {k: _map_leaves(v, change) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_leaves(v, change) for v in value]
    return change(value)


def strict_json(value: Any, **options: Any) -> str:
    """``json.dumps`` of ``value`` as strict JSON: NaN and infinities (an empty stratum) as ``null``.

    Examples:
        >>> strict_json({"auc": float("nan"), "n": [1, 2.5]})
        '{"auc": null, "n": [1, 2.5]}'
    """
    plain = json.loads(json.dumps(value, default=float, allow_nan=True))
    nulls = _map_leaves(plain, lambda v: None if isinstance(v, float) and not math.isfinite(v) else v)
    return json.dumps(nulls, allow_nan=False, **options)


def read_metrics(path: str | Path) -> dict[str, Any]:
    """A ``metrics.json`` as written by :meth:`RunFolder.write_metrics`, its ``null`` values as NaN."""
    metrics: dict[str, Any] = _map_leaves(json.loads(Path(path).read_text()), lambda v: math.nan if v is None else v)
    return metrics


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """``{"test": {"qwk": 0.8}}`` → ``{"test/qwk": 0.8}`` (numbers only)."""
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_metrics(value, prefix=f"{name}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[name] = float(value)
    return flat


class RunFolder:
    """Everything one recipe run writes, in one folder.

    Layout::

        config.yaml            resolved config (round-trips into the recipe's config dataclass)
        metrics.json / .csv    final metrics (nested JSON; flat ``name,value`` CSV)
        history/<stage>.csv    per-step or per-epoch curves
        plots/*.png            curves, confusion matrices, embedding maps
        checkpoints/<stage>/   Lightning ``last.ckpt`` for resuming an interrupted stage
        weights/<name>.safetensors   finished weights (never pickled)
        stages.json            which stages finished, with their timing
        MODEL_CARD.md          what was trained, on what, with which results

    Under DDP every process opens the folder, but only global rank 0 writes: the others open it
    with ``writable=False``, and every writing method then does nothing (and returns ``None``).

    Args:
        root: The folder (created if missing, when writable).
        writable: Whether this process writes.
    """

    def __init__(self, root: str | Path, *, writable: bool = True) -> None:
        self.root = Path(root)
        self.writable = writable
        #: Whether this process created the folder (it was missing or empty): :meth:`discard` may remove it.
        self.created = writable and _folder_is_new(self.root)
        if writable:
            self.root.mkdir(parents=True, exist_ok=True)
            if not (self.root / MANIFEST).is_file():
                manifest = {"qualcl": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
                (self.root / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            for sub in ("plots", "history", "checkpoints", "weights"):
                (self.root / sub).mkdir(exist_ok=True)

    def discard(self) -> None:
        """Undo a failed start: remove everything of a folder this process created, then the folder if empty.

        Called when a run fails before its first stage trained, so that the corrected command into the
        same ``--out`` is not refused as "another config". Does nothing to a folder that existed.
        """
        if not (self.writable and self.created):
            return
        _delete_artefacts(self.root, data=True)
        (self.root / MANIFEST).unlink(missing_ok=True)
        if not any(self.root.iterdir()):
            self.root.rmdir()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """Hold the folder for this run: a second run into it meanwhile is refused, never interleaved.

        An exclusive ``flock`` on the folder's :data:`MANIFEST`, taken without waiting and released when
        the block ends (or the process dies: a killed run leaves no stale lock). Two processes writing
        one run folder (the same command started twice, ablations over overlapping seeds into one
        ``--out``) would mix their checkpoints and metrics silently. Nothing is held where there is
        nothing to write (DDP ranks other than 0: :class:`RunFolder` ``writable=False``), where ``fcntl``
        does not exist (Windows), or where the file system has no locks (some network mounts).

        Raises:
            RunFolderBusy: Another process holds the folder (a ``ValueError``: the CLI prints it as one
                line); the message names it and what to do.
        """
        with contextlib.ExitStack() as held:
            if self.writable and (self.root / MANIFEST).is_file():
                try:
                    held.enter_context(file_lock(self.root / MANIFEST, wait=False))
                except BlockingIOError:
                    raise RunFolderBusy(
                        f"--out {self.root} is in use by another qualcl run (its {MANIFEST} is locked): "
                        "wait for that run to end, or choose another --out"
                    ) from None
            yield

    def path(self, *parts: str) -> Path:
        """A path inside the run folder."""
        return self.root.joinpath(*parts)

    @_writes
    def save_config(self, config: Any, recipe: str = "") -> Path:
        """Write ``config.yaml``, its first line :data:`MARKER` (what makes the folder a qualcl run folder)."""
        path = save_config(config, self.root / "config.yaml")
        header = f"{MARKER} ({recipe or type(config).__name__}, qualcl {__version__}): a re-run resumes only with it\n"
        path.write_text(header + path.read_text())
        return path

    # ------------------------------------------------------------------ stages
    def _stages(self) -> dict[str, dict[str, Any]]:
        path = self.root / "stages.json"
        data: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.is_file() else {}
        return data

    def stage_done(self, name: str) -> bool:
        """Whether stage ``name`` finished in an earlier (possibly interrupted) run."""
        return name in self._stages()

    def stage_info(self, name: str) -> dict[str, Any]:
        """What :meth:`mark_done` recorded for ``name``."""
        return self._stages()[name]

    @_writes
    def mark_done(self, name: str, **info: Any) -> None:
        """Record that stage ``name`` finished (atomically, so an interruption leaves no half file)."""
        stages = self._stages()
        stages[name] = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
        tmp = self.root / "stages.json.tmp"
        tmp.write_text(json.dumps(stages, indent=2))
        tmp.replace(self.root / "stages.json")

    def checkpoint_dir(self, stage: str) -> Path:
        """Folder of a stage's resumable Lightning checkpoints."""
        path = self.root / "checkpoints" / stage
        if self.writable:
            path.mkdir(parents=True, exist_ok=True)
        return path

    @_writes
    def drop_checkpoints(self, stage: str) -> None:
        """Delete a finished stage's Lightning checkpoints: its weights files are what later runs reload.

        A checkpoint holds the optimiser's state too (Adam: twice the weights), so keeping it would
        triple the folder's size for nothing once the stage is marked done.
        """
        shutil.rmtree(self.root / "checkpoints" / stage, ignore_errors=True)

    def last_checkpoint(self, stage: str) -> Path | None:
        """``last.ckpt`` of a stage, if an earlier run was interrupted during it."""
        path = self.root / "checkpoints" / stage / "last.ckpt"
        return path if path.is_file() else None

    # ------------------------------------------------------------------ weights
    @_writes
    def save_weights(self, module: nn.Module, name: str) -> Path:
        """Write ``module``'s state dict as safetensors."""
        path = self.root / "weights" / f"{name}.safetensors"
        state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
        save_file(state, str(path), metadata={"qualcl": __version__})
        return path

    def load_weights(self, module: nn.Module, name: str, *, strict: bool = True) -> nn.Module:
        """Load safetensors weights written by :meth:`save_weights` into ``module``."""
        path = self.root / "weights" / f"{name}.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"no weights {path}: run the stage that writes them first")
        module.load_state_dict(load_file(str(path)), strict=strict)
        return module

    # ------------------------------------------------------------------ metrics
    @_writes
    def write_metrics(self, metrics: dict[str, Any]) -> Path:
        """Write ``metrics.json`` (nested) and ``metrics.csv`` (flat ``name,value``).

        ``metrics.json`` is strict JSON: ``null`` where a value is undefined (an empty stratum), which
        :func:`read_metrics` reads back as NaN; ``metrics.csv`` writes ``nan`` there.
        """
        clean = json.loads(json.dumps(metrics, default=float, allow_nan=True))
        (self.root / "metrics.json").write_text(strict_json(clean, indent=2, sort_keys=True))
        with (self.root / "metrics.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["name", "value"])
            for key, value in sorted(flatten_metrics(clean).items()):
                writer.writerow([key, "nan" if math.isnan(value) else f"{value:.6g}"])
        return self.root / "metrics.json"

    @_writes
    def append_history(self, stage: str, row: dict[str, float]) -> None:
        """Append one row to ``history/<stage>.csv`` (header from the first row)."""
        path = self.root / "history" / f"{stage}.csv"
        new = not path.is_file()
        with path.open("a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)

    def read_history(self, stage: str) -> list[dict[str, float]]:
        """Rows of ``history/<stage>.csv`` (empty if none)."""
        path = self.root / "history" / f"{stage}.csv"
        if not path.is_file():
            return []
        with path.open(newline="") as handle:
            return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]

    @_writes
    def truncate_history(
        self, stage: str, keep_below: float = float("inf"), key: str = "step", *, keep_rows: int | None = None
    ) -> None:
        """Drop history rows at or past ``keep_below`` in column ``key``, or all but the first ``keep_rows``.

        Used on resume, to drop the rows written after the checkpoint the run resumes from.
        """
        rows = [r for r in self.read_history(stage) if r.get(key, -1) < keep_below][:keep_rows]
        (self.root / "history" / f"{stage}.csv").unlink(missing_ok=True)
        for row in rows:
            self.append_history(stage, row)

    # ------------------------------------------------------------------ card
    @_writes
    def write_model_card(self, card: ModelCard) -> Path:
        """Write ``MODEL_CARD.md``: what, from which paper, the headline numbers, the table, the plots."""
        path = self.root / "MODEL_CARD.md"
        path.write_text(card.render(self.root))
        return path
