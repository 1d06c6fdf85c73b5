"""The README example runs as written; the docs point nowhere outside the repository.

The recipe notebooks run in CI's ``mkdocs build --strict`` (executed, with their plots, into the site).
"""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_example_runs():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    exec(compile(blocks[0], "README.md", "exec"), {})


def test_the_docs_home_page_starts_with_the_readme_install_and_example():
    page, readme = (ROOT / "docs" / "index.md").read_text(), (ROOT / "README.md").read_text()
    head = page.split("\n## ")[0]  # before the first section
    install = re.search(r"## Install\n\n(```bash\n.*?```)", readme, flags=re.S)
    example = re.search(r"```python\n.*?```", readme, flags=re.S)
    assert install and example
    assert re.findall(r"```(?:bash|python)\n.*?```", head, flags=re.S) == [install.group(1), example.group(0)]


def test_readme_commands_are_the_ci_commands():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install torch==2.14.1 torchvision==0.29.1 -e ".[all]" && python -m pytest' in readme
    assert "python -m pytest" in ci
    assert 'torch==2.14.1 torchvision==0.29.1 -e ".[all]"' in ci


def test_the_repository_stands_alone():
    """No docstring, comment or doc points outside the repository or at internal task tags."""
    outside = re.compile(
        r"\.\./shared|shared/specs|DESIGN\.md|specs/methods|methods\.md|anchors\.md|\(seed 00\d|seed 00\d\)"
    )
    offenders = []
    for folder in ("src", "tests", "docs", "benchmarks"):
        for path in (ROOT / folder).rglob("*"):
            if path.suffix in {".py", ".md", ".sh", ".toml", ".yaml"} and path.is_file():
                for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
                    if outside.search(line) and path.name != "test_docs.py":
                        offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:80]}")
    for name in ("README.md", "pyproject.toml"):
        offenders += [f"{name}: {line}" for line in (ROOT / name).read_text().splitlines() if outside.search(line)]
    assert not offenders, "\n".join(offenders)


def _loss_classes() -> dict[str, type]:
    import qualcl.losses as losses

    found = {name: getattr(losses, name) for name in losses.__all__}
    return {name: obj for name, obj in found.items() if isinstance(obj, type) and issubclass(obj, losses.Loss)}


def test_loss_page_snippets_run_and_cover_every_family():
    """Every python block of docs/losses.md runs as written, and together they call a loss of each family
    (a complete optimizer step among them for masked reconstruction and for images and texts)."""
    from qualcl.losses import FAMILIES, Loss

    text = (ROOT / "docs" / "losses.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    classes = {name: cls for name, cls in _loss_classes().items() if cls is not Loss}
    called = set()
    for number, block in enumerate(blocks):
        exec(compile(block, f"docs/losses.md, block {number}", "exec"), {})
        called |= {name for name in classes if re.search(rf"\b{name}\(", block)}
    families = {classes[name].family for name in called}
    assert families == set(FAMILIES), f"no snippet for the families {sorted(set(FAMILIES) - families)}"
    steps = [b for b in blocks if "optimizer.step()" in b]
    assert any("MaskedReconstructionLoss" in b for b in steps), "no complete masked-autoencoder step"
    assert any("ClipLoss" in b or "SigLipLoss" in b for b in steps), "no complete image-text step"


def test_the_guide_links_every_loss():
    """docs/guide.md (which loss for which batch) links each loss of qualcl.losses to its API entry."""
    guide = (ROOT / "docs" / "guide.md").read_text()
    missing = [
        name
        for name in _loss_classes()
        if name != "Loss" and f"[`{name}`](api/losses.md#qualcl.losses.{name})" not in guide
    ]
    assert not missing, f"docs/guide.md does not link {missing}"


def _hooks():
    spec = importlib.util.spec_from_file_location("qualcl_docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    return hooks


def test_results_tables_are_marked_to_keep_their_numbers_on_one_line():
    """docs/hooks.py wraps each table with a '±' cell (and only those) for stylesheets/extra.css."""
    hooks = _hooks()
    numbers = "<table><tr><td>CLIP</td><td>0.194 ± 0.011</td></tr></table>"
    words = "<table><tr><td>family</td><td>losses</td></tr></table>"
    html = hooks.number_tables(f"<p>a</p>{numbers}<p>b</p>{words}")
    assert html == f'<p>a</p><div class="qualcl-numbers">{numbers}</div><p>b</p>{words}'
    css = (ROOT / "docs" / "stylesheets" / "extra.css").read_text()
    assert ".qualcl-numbers td" in css and "white-space: nowrap" in css
    assert "stylesheets/extra.css" in (ROOT / "mkdocs.yml").read_text()


def test_results_pages_show_their_plots():
    """Each picture beside the results pages is shown on a page (a results page or its recipe's)."""
    pages = "".join(path.read_text() for path in (ROOT / "docs").rglob("*.md"))
    unshown = [
        png.name
        for png in sorted((ROOT / "docs" / "results").glob("*.png"))
        if f"]({png.name})" not in pages and f"](results/{png.name})" not in pages
    ]
    assert not unshown, f"pictures in docs/results that no page embeds: {unshown}"


def test_a_notebook_page_with_standard_error_or_a_machine_path_is_refused():
    """docs/hooks.py fails the build on a notebook page that shows stderr output or a build-machine path."""
    hooks = _hooks()

    def output(mime: str, text: str) -> str:
        attributes = f'class="jp-RenderedText jp-OutputArea-output" data-mime-type="{mime}" tabindex="0"'
        return f"<div {attributes}><pre>{text}</pre></div>"

    clean = output("text/plain", "loss: 1.727") + output("text/plain", "qualcl: synthetic data: qualcl-cache/x")
    assert hooks.notebook_problems(clean) == []
    warning = output("application/vnd.jupyter.stderr", "UserWarning: Converting a tensor")
    assert hooks.notebook_problems(clean + warning) == ["standard error: UserWarning: Converting a tensor"]
    path = output("text/plain", "qualcl: synthetic data: /root/.cache/qualcl/synthetic")
    assert hooks.notebook_problems(path) == ["a machine path: qualcl: synthetic data: /root/.cache/qualcl/synthetic"]
