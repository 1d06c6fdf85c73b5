"""The README example runs as written; the docs point nowhere outside the repository.

The recipe notebooks run in CI's ``mkdocs build --strict`` (executed, with their plots, into the site).
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_example_runs():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no python example"
    exec(compile(blocks[0], "README.md", "exec"), {})


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


def test_loss_page_snippets_run():
    """Every python block of docs/losses.md (one per calling family) runs as written."""
    text = (ROOT / "docs" / "losses.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 5, "docs/losses.md should show every calling family"
    for number, block in enumerate(blocks):
        exec(compile(block, f"docs/losses.md, block {number}", "exec"), {})
