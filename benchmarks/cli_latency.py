"""How long the ``qualcl`` command takes to answer: help, option errors, config errors, ``list``.

    python -m benchmarks.cli_latency [--repeat 5] [--before-src DIR --before-label TEXT]

Each command runs as the installed console script (``qualcl`` next to the Python executable, so a
version manager's shim is not timed) in a fresh process, in an empty folder; the best of
``--repeat`` wall times counts (after one warm-up run). The load average before and after measuring
is recorded (``os.getloadavg``, what ``uptime`` prints): on a shared machine, compare only numbers
measured together. ``--before-src`` times the same commands on another source tree (a ``src``
folder of an earlier commit, put first on ``PYTHONPATH``), alternating run by run with the
current one so that both see the same load. A last run of each command under ``python -X
importtime`` tells whether it imported torch.

Writes ``benchmarks/results/cli_latency_cpu.json`` and ``benchmarks/results/cli_latency_cpu.md`` (``--out``:
another folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

#: ``{label: arguments of qualcl}``; no command trains anything.
COMMANDS: dict[str, list[str]] = {
    "qualcl --help": ["--help"],
    "qualcl run comcl --help": ["run", "comcl", "--help"],
    "qualcl run comcl --set pretrain.stpes=3 (unknown key)": ["run", "comcl", "--set", "pretrain.stpes=3"],
    "qualcl run comcl --preset smoek (bad preset)": ["run", "comcl", "--preset", "smoek"],
    "qualcl run comcl --set trainer.precision=8 (bad value)": ["run", "comcl", "--set", "trainer.precision=8"],
    "qualcl list": ["list"],
}

RESULTS = Path(__file__).parent / "results"


def _command(arguments: list[str]) -> list[str]:
    script = Path(sys.executable).with_name("qualcl")
    if script.is_file():
        return [str(script), *arguments]
    return [sys.executable, "-m", "qualcl.cli", *arguments]


def _env(src: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(src), *filter(None, [env.get("PYTHONPATH")])])
    return env


def wall_time(arguments: list[str], cwd: Path, src: Path | None = None) -> float:
    """Seconds from start to exit of ``qualcl arguments`` in a fresh process (its output discarded)."""
    start = time.perf_counter()
    subprocess.run(
        _command(arguments),
        cwd=cwd,
        env=_env(src),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return time.perf_counter() - start


def imports_torch(arguments: list[str], cwd: Path, src: Path | None = None) -> bool:
    """Whether ``qualcl arguments`` imports torch (read from ``python -X importtime``)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "qualcl.cli", *arguments],
        cwd=cwd,
        env=_env(src),
        capture_output=True,
        text=True,
        check=False,
    )
    return any(line.rsplit("|", 1)[-1].strip() == "torch" for line in result.stderr.splitlines())


def measure(repeat: int, before_src: Path | None) -> dict[str, Any]:
    """Best-of-``repeat`` wall time and torch import of every command (and of the ``before`` tree)."""
    trees: dict[str, Path | None] = {"after": None}
    if before_src is not None:
        trees = {"before": before_src.resolve(), "after": None}
    rows: dict[str, Any] = {}
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as folder:  # a refused command must not leave a run folder behind
        cwd = Path(folder)
        for label, arguments in COMMANDS.items():
            times: dict[str, list[float]] = {tree: [] for tree in trees}
            for src in trees.values():
                wall_time(arguments, cwd, src)  # warm the file cache
            for _ in range(repeat):
                for tree, src in trees.items():
                    times[tree].append(wall_time(arguments, cwd, src))
            rows[label] = {
                tree: {"seconds": min(times[tree]), "torch": imports_torch(arguments, cwd, src)}
                for tree, src in trees.items()
            }
            print(label, {tree: f"{row['seconds']:.2f} s, torch {row['torch']}" for tree, row in rows[label].items()})
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "date": f"{datetime.now(timezone.utc):%Y-%m-%d}",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_start": [round(x, 2) for x in load_start],
        "load_end": [round(x, 2) for x in os.getloadavg()],
        "repeat": repeat,
        "commit": commit,
        "rows": rows,
    }


def write_table(run: dict[str, Any], before_label: str, note: str, out: Path = RESULTS) -> Path:
    """Write ``cli_latency_cpu.md`` (into the folder ``out``) from a :func:`measure` result."""
    load = " / ".join(str(x) for x in run["load_start"]), " / ".join(str(x) for x in run["load_end"])
    lines = [
        "# Command-line latency (CPU)",
        "",
        f"`python -m benchmarks.cli_latency --repeat {run['repeat']}` on {run['date']}: wall time of the installed "
        f"`qualcl` console script in a fresh process, best of {run['repeat']} runs after a warm-up run; "
        '"torch": whether the command imported it (`python -X importtime`).',
        "",
        f"- machine: {run['machine']}",
        f"- load average (1 / 5 / 15 min, as `uptime` prints it): {load[0]} before, {load[1]} after measuring",
        f"- after: the working tree at commit {run['commit']}",
    ]
    if before_label:
        lines.append(f"- before: {before_label}, timed alternately with the after runs (same load)")
    if note:
        lines.append(f"- {note}")
    lines.append("")
    trees = list(next(iter(run["rows"].values())))
    if trees == ["after"]:
        lines += ["| command | seconds | torch |", "|---|---:|---|"]
        for command, row in run["rows"].items():
            lines.append(
                f"| `{command}` | {row['after']['seconds']:.2f} | {'yes' if row['after']['torch'] else 'no'} |"
            )
    else:
        lines += ["| command | before (s) | torch | after (s) | torch | speed-up |", "|---|---:|---|---:|---|---:|"]
        for command, row in run["rows"].items():
            old, new = row["before"], row["after"]
            lines.append(
                f"| `{command}` | {old['seconds']:.2f} | {'yes' if old['torch'] else 'no'} | {new['seconds']:.2f} "
                f"| {'yes' if new['torch'] else 'no'} | {old['seconds'] / new['seconds']:.0f}× |"
            )
    path = out / "cli_latency_cpu.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    """Measure, then write the JSON and the table."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per command; the best counts (default 5)")
    parser.add_argument("--before-src", type=Path, default=None, help="an earlier commit's src folder to compare")
    parser.add_argument("--before-label", default="", help="what --before-src is (e.g. its commit)")
    parser.add_argument("--note", default="", help="a note for the table (what else was running)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the results (default benchmarks/results)")
    args = parser.parse_args(argv)
    run = measure(args.repeat, args.before_src)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "cli_latency_cpu.json"
    path.write_text(json.dumps({**run, "before": args.before_label, "note": args.note}, indent=2) + "\n")
    print(f"wrote {path} and {write_table(run, args.before_label, args.note, args.out)}")


if __name__ == "__main__":
    main()
