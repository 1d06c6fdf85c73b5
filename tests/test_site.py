"""The catalogue behind ``qualcl list`` and the docs site: every public name documented, the site's
navigation complete, the docstring conversion for the site correct."""

import importlib.util
import re
from pathlib import Path

import pytest
import yaml

from qualcl.catalog import GROUPS, entries, group
from qualcl.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "docs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_multi_constructor("!", lambda loader, suffix, node: None)  # mkdocs' !ENV tags


def _nav_pages(nav) -> list[str]:
    pages = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


@pytest.fixture(scope="module")
def nav_pages():
    return _nav_pages(yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_Loader)["nav"])


def test_every_public_class_and_function_has_a_summary_line():
    missing = [e.path for g in GROUPS for e in entries(g) if e.kind != "constant" and not e.summary]
    assert not missing, missing


def test_groups_cover_every_public_package_once():
    import qualcl

    packages = {p.name for p in Path(qualcl.__file__).parent.iterdir() if (p / "__init__.py").is_file()}
    listed = {m.split(".")[1] for g in GROUPS for m in g.modules}
    assert packages - listed == {"recipes"}  # recipes have their own pages
    names = [e.path for g in GROUPS for e in entries(g) if e.kind != "constant"]
    assert len(names) == len(set(names))


def test_entries_show_an_object_once_under_the_first_module():
    data = {e.name: e for e in entries(group("data"))}
    assert data["generate_fundus"].module == "qualcl.data"  # re-exported from qualcl.data.synthetic
    assert data["read_aptos"].module == "qualcl.data.readers"
    assert data["QUALITY_NAMES"].kind == "constant"
    assert {e.name: e.kind for e in entries(group("samplers"))}["Window"] == "constant"  # a type alias
    with pytest.raises(ValueError, match="unknown group 'lossess'"):
        group("lossess")


def test_list_prints_each_primitive_with_its_summary_and_page(capsys):
    assert main(["list", "losses"]) == 0
    out = capsys.readouterr().out
    assert "(docs: api/losses.md)" in out
    assert re.search(r"^\s+MultiLevelInfoNCE\s+Sum of InfoNCE losses over ordered pairs of levels", out, re.M)
    assert "qualcl run" not in out and "Heads" not in out
    assert main(["list", "data"]) == 0
    out = capsys.readouterr().out
    assert "  qualcl.data.readers" in out and "constants and types:" in out
    assert main(["list", "recipes"]) == 0
    assert "fundus-mm" in capsys.readouterr().out


def test_the_site_navigation_lists_every_page(nav_pages):
    docs = ROOT / "docs"
    for item in GROUPS:
        assert item.page in nav_pages
    for notebook in sorted((docs / "recipes").glob("*.py")):
        assert f"recipes/{notebook.name}" in nav_pages, notebook.name
    for page in sorted(docs.glob("*.md")) + sorted((docs / "results").glob("*.md")):
        assert str(page.relative_to(docs)) in nav_pages, page.name
    for result in sorted((ROOT / "benchmarks" / "results").glob("*.md")):
        assert f"benchmarks/{result.name}" in nav_pages, result.name
    generated = {g.page for g in GROUPS} | {p for p in nav_pages if p.startswith("benchmarks/")}
    for page in nav_pages:
        assert page in generated or (docs / page).is_file(), page


def test_api_pages_render_every_entry():
    hooks = _load("hooks")
    page = hooks.api_page("functional")
    for entry in entries(group("functional")):
        assert f"::: {entry.path}" in page
        assert f"[`{entry.name}`](#{entry.path})" in page
    assert "`random_masking`" in hooks._plain(":func:`random_masking` returns | x")
    assert "\\|" in hooks._plain("a | b")
    assert hooks._plain(":obj:`~qualcl.losses.ClipLoss`") == "`qualcl.losses.ClipLoss`"  # every role griffe_rst knows


def test_math_blocks_and_roles_become_markdown():
    convert = _load("griffe_rst").rst_to_markdown
    text = "Loss.\n\n.. math::\n    a = b\n    + c\n\nSee :func:`~qualcl.functional.info_nce` and :class:`InfoNCE`.\n"
    assert convert(text) == "Loss.\n\n$$\na = b\n+ c\n$$\n\nSee `qualcl.functional.info_nce` and `InfoNCE`."
    indented = "    .. math::\n        x\n\n    after"
    assert convert(indented) == "    $$\n    x\n    $$\n\n    after"


def test_inline_math_roles_become_mathjax_and_mathjax_is_served_by_the_site(tmp_path):
    convert = _load("griffe_rst").rst_to_markdown
    assert convert("a :math:`L_i = 0` and\n  :math:`x\n  + y` b") == "a \\(L_i = 0\\) and\n  \\(x + y\\) b"
    hooks = _load("hooks")
    assert hooks._plain("its :math:`\\tau` and :func:`f`") == "its \\(\\tau\\) and `f`"
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=_Loader)
    scripts = config["extra_javascript"]
    assert not [s for s in scripts if "://" in s], scripts  # nothing fetched from another host
    served = next(s for s in scripts if s.startswith("mathjax/")).split("?")[0]
    hooks.on_post_build({"site_dir": str(tmp_path)})
    assert (tmp_path / served).is_file()
    assert (tmp_path / "mathjax" / "config" / "TeX-AMS-MML_HTMLorMML-full.js").is_file()


def test_no_docstring_leaves_a_math_role_the_site_cannot_convert():
    """Every ``:math:`` role is the single-backtick form griffe_rst converts (no role split by a stray backtick)."""
    import re as _re

    bad = []
    for path in (ROOT / "src" / "qualcl").rglob("*.py"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for match in _re.finditer(r":math:(?!`[^`])", line):
                bad.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:80]} ({match.start()})")
    assert not bad, bad
