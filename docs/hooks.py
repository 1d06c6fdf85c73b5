"""MkDocs hooks: generate the API pages, the benchmark pages and the data page's pictures.

* One API page per :data:`qualcl.catalog.GROUPS` entry (the groups ``qualcl list`` prints): a
  table of the group's public names with their first docstring line, then each one rendered by
  mkdocstrings from its docstring.
* One page per ``benchmarks/results/*.md`` (the committed benchmark tables), under ``benchmarks/``.
* MathJax served by the site itself (``mathjax/``, copied at build time from the
  ``jupyter-server-mathjax`` package): nothing is fetched from another host when a page is read.
* Executed notebook pages checked: a notebook that prints to standard error (a warning, a library's
  banner) or prints a path of the build machine fails the build.
* Tables of results (a cell with ``±``) wrapped in ``<div class="qualcl-numbers">``, whose cells
  ``stylesheets/extra.css`` keeps on one line: a wide table scrolls sideways instead of breaking
  ``0.604 ± 0.028`` over two lines.
* ``images/synthetic_grid.png`` (one synthetic image per DR grade and quality level) and
  ``images/synthetic_degradations.png`` (one image under each degradation factor), drawn from the
  generator at build time, so the pictures always show what the code generates.
"""

from __future__ import annotations

import importlib.util
import re
import tempfile
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]


def _rst_role() -> re.Pattern[str]:
    """The Sphinx-role pattern of ``griffe_rst.py`` (loaded by path: ``docs/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("qualcl_docs_griffe_rst", Path(__file__).with_name("griffe_rst.py"))
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module._ROLE


_ROLE = _rst_role()


def _plain(text: str) -> str:
    """A docstring's first line as table-safe markdown (inline math, RST roles and double backticks to code)."""
    text = re.sub(r":math:`([^`]+)`", r"\\(\1\\)", text)
    return _ROLE.sub(r"`\1`", text).replace("``", "`").replace("|", "\\|")


def api_page(key: str) -> str:
    """The markdown of one API page (the ``:::`` blocks mkdocstrings expands)."""
    from qualcl.catalog import entries, group

    item = group(key)
    found = entries(item)
    lines = [f"# {item.title}", "", f"{item.summary[0].upper()}{item.summary[1:]}.", ""]
    lines += ["| name | what it is |", "|---|---|"]
    for entry in found:
        lines.append(f"| [`{entry.name}`](#{entry.path}) | {_plain(entry.summary) or '—'} |")
    lines.append("")
    for entry in found:
        if entry.kind != "constant":
            lines += [f"::: {entry.path}", ""]
    constants = [e for e in found if e.kind == "constant"]
    if constants:
        lines += ["## Constants and types", ""]
        lines += [f"::: {e.path}\n    options:\n      heading_level: 3\n" for e in constants]
    return "\n".join(lines)


def _figures(out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from qualcl.data import degrade_blur, degrade_illumination, degrade_spots, generate_fundus, save_preview_grid

    samples = [generate_fundus(10 * g + q, size=160, grade=g, quality=q) for g in range(5) for q in range(3)]
    save_preview_grid(samples, out / "synthetic_grid.png", tile=160)
    clean = generate_fundus(0, size=192, grade=2, quality=0)
    rng = np.random.default_rng(0)
    columns = [("clean (Good)", clean.image)]
    for name, fn in (("blur", degrade_blur), ("uneven illumination", degrade_illumination), ("spots", degrade_spots)):
        for severity in ("mild", "strong"):
            image, _ = fn(clean.image, rng, severity=severity, fov=clean.fov)
            columns.append((f"{name}, {severity}", image))
    fig, axes = plt.subplots(1, len(columns), figsize=(2.6 * len(columns), 3.0))
    for ax, (title, image) in zip(axes, columns, strict=True):
        ax.imshow(np.clip(image, 0, 1))
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "synthetic_degradations.png", dpi=110)
    plt.close(fig)


_FIGURES = tempfile.TemporaryDirectory(prefix="qualcl-docs-")


def on_files(files: Files, config: Any) -> Files:
    """Add the generated pages and pictures to the site's files."""
    from qualcl.catalog import GROUPS

    for item in GROUPS:
        files.append(File.generated(config, item.page, content=api_page(item.key)))
    for result in sorted((ROOT / "benchmarks" / "results").glob("*.md")):
        files.append(File.generated(config, f"benchmarks/{result.name}", content=result.read_text()))
    figures = Path(_FIGURES.name)
    _figures(figures)
    for picture in sorted(figures.glob("*.png")):
        files.append(File.generated(config, f"images/{picture.name}", abs_src_path=str(picture)))
    return files


_TABLE = re.compile(r"<table>.*?</table>", flags=re.S)


def number_tables(html: str) -> str:
    """``html`` with every table that holds a ``±`` cell wrapped in ``<div class="qualcl-numbers">``."""
    return _TABLE.sub(lambda m: f'<div class="qualcl-numbers">{m[0]}</div>' if "±" in m[0] else m[0], html)


_OUTPUT = re.compile(
    r'<div class="jp-RenderedText jp-OutputArea-output[^"]*" data-mime-type="([^"]+)"[^>]*>(.*?)</div>', re.S
)
_MACHINE_PATH = re.compile(r"(?:/root|/home|/Users|/usr|/tmp|/work)/|site-packages")


def notebook_problems(html: str) -> list[str]:
    """What an executed notebook page must not show: standard-error output, or a path of the machine."""
    problems = []
    for mime, text in _OUTPUT.findall(html):
        text = re.sub(r"<[^>]+>", "", text).strip()
        if mime == "application/vnd.jupyter.stderr":
            problems.append(f"standard error: {text[:200]}")
        elif _MACHINE_PATH.search(text):
            problems.append(f"a machine path: {text[:200]}")
    return problems


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    """Refuse a notebook page with :func:`notebook_problems`; mark the tables of results (:func:`number_tables`)."""
    if page.file.src_uri.startswith("recipes/") and page.file.src_uri.endswith(".py"):
        problems = notebook_problems(html)
        if problems:
            from mkdocs.exceptions import PluginError

            raise PluginError(f"docs/{page.file.src_uri} shows " + "; ".join(problems))
    return number_tables(html)


def mathjax_source() -> Path:
    """The MathJax 2.7 distribution of the ``jupyter-server-mathjax`` package (the docs extra installs it)."""
    import jupyter_server_mathjax

    return Path(jupyter_server_mathjax.__file__).parent / "static"


def on_post_build(config: Any) -> None:
    """Copy MathJax into the site (``mathjax/``), where ``mkdocs.yml``'s ``extra_javascript`` loads it from."""
    import shutil

    shutil.copytree(mathjax_source(), Path(config["site_dir"]) / "mathjax", dirs_exist_ok=True)
