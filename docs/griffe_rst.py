"""A griffe extension: the few reStructuredText constructs of qualcl's docstrings, as Markdown.

qualcl's docstrings are Google style, read in the source and by ``help()``; equations are
``.. math::`` blocks and cross-references Sphinx roles. For the site: a ``.. math::`` block becomes
a ``$$ … $$`` display and ``:math:`x``` an inline ``\\( x \\)`` (MathJax through
``pymdownx.arithmatex``); ``:func:`name``` becomes ``name`` in code.
"""

from __future__ import annotations

import re
import textwrap
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|meth|data|attr|mod|obj):`~?([^`]+)`")
_MATH = re.compile(r":math:`([^`]+)`")


def rst_to_markdown(text: str) -> str:
    """Convert the ``.. math::`` blocks, ``:math:`` roles and Sphinx roles of one docstring."""
    # an inline equation may wrap onto the next line: its role is matched in the whole text
    text = _MATH.sub(lambda m: "\\(" + " ".join(m.group(1).split()) + "\\)", text)
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if stripped == ".. math::":
            indent = line[: len(line) - len(line.lstrip())]
            block: list[str] = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            body = textwrap.dedent("\n".join(b for b in block)).strip("\n")
            out += [f"{indent}$$", *[f"{indent}{b}" for b in body.splitlines()], f"{indent}$$", ""]
            continue
        out.append(_ROLE.sub(r"`\1`", line))
        i += 1
    return "\n".join(out)


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring with :func:`rst_to_markdown` as griffe loads it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)
