"""docs/index.md quotes qualcl's signatures and encoder names: each one is checked against the code.

A quoted call ``Name(arg, key=default, *, ...)`` of a qualcl object (a bare public name, or dotted from
a qualcl package: ``functional.info_nce``, ``qualcl.distributed.gather_with_grad``) must name only
parameters the object has, in its order, with the defaults it has (where the page states one), and
every required parameter unless the list ends in ``...``. A method (``forward(...)``, ``step(...)``,
``X(...).search(...)``, ``X()(...)``) is checked on the last qualcl class the page named before it.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
INDEX = ROOT / "docs" / "index.md"
PACKAGES = (
    "losses",
    "functional",
    "kernels",
    "samplers",
    "heads",
    "optim",
    "models",
    "evaluation",
    "metrics",
    "distributed",
    "data",
)
_CALL = re.compile(r"(?:(?<![\w.])|(?<=\)\.))((?:[A-Za-z_]\w*\.)*[A-Za-z_]\w*)\(")  # X(…).method( too
_NAME = re.compile(r"(\**)([A-Za-z_]\w*)\s*(=\s*(.*))?", flags=re.S)
_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


def _spans(text: str) -> list[tuple[str, bool]]:
    """The page's inline code spans in order (fenced blocks removed, whitespace collapsed), each with
    whether it sits in a heading."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    spans = []
    for match in re.finditer(r"`([^`]+)`", text):
        line = text[text.rfind("\n", 0, match.start()) + 1 :]
        spans.append((" ".join(match.group(1).split()), line.startswith("#")))
    return spans


def _close(text: str, start: int) -> int:
    """The index of the parenthesis closing the one at ``start``."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return i
    raise ValueError(f"unbalanced parentheses in {text!r}")


def _split(args: str) -> list[str]:
    """``args`` split at its top-level commas."""
    pieces, depth, current = [], 0, ""
    for char in args:
        depth += {"(": 1, "[": 1, "{": 1, ")": -1, "]": -1, "}": -1}.get(char, 0)
        if char == "," and depth == 0:
            pieces.append(current.strip())
            current = ""
        else:
            current += char
    if current.strip():
        pieces.append(current.strip())
    return pieces


def _resolve(name: str) -> Any:
    """The qualcl object a quoted name means, or ``None``."""
    head, *rest = name.split(".")
    candidates = []
    if head == "qualcl" and rest:
        candidates.append((f"qualcl.{rest[0]}", rest[1:]))
    elif head in PACKAGES and rest:
        candidates.append((f"qualcl.{head}", rest))
    else:
        candidates += [(f"qualcl.{package}", [head, *rest]) for package in PACKAGES]
    for module_name, path in candidates:
        obj: Any = importlib.import_module(module_name)
        for part in path:
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if obj is not None and path and callable(obj):
            return obj
    return None


def _default(text: str) -> Any:
    """A stated default as a Python value (the first of ``"a"|"b"`` choices), or ``...`` if not a literal."""
    text = _split(text.replace("|", ","))[0] if text else ""
    try:
        tree = ast.parse(text, mode="eval").body
    except SyntaxError:
        return ...
    if isinstance(tree, ast.BinOp) and isinstance(tree.op, ast.Div):  # 1/0.07
        try:
            return ast.literal_eval(tree.left) / ast.literal_eval(tree.right)
        except (ValueError, ZeroDivisionError):
            return ...
    try:
        return ast.literal_eval(tree)
    except ValueError:
        return ...


def _same(stated: Any, actual: Any) -> bool:
    if isinstance(stated, float) or isinstance(actual, float):
        return isinstance(actual, (int, float)) and math.isclose(float(stated), float(actual), rel_tol=1e-9)
    if isinstance(actual, list):
        actual = tuple(actual)
    return (bool(stated == actual) and type(stated) is type(actual)) or stated is actual


@dataclass
class Quote:
    """One quoted call of a qualcl object."""

    text: str
    target: Any
    label: str
    args: list[str] = field(default_factory=list)
    method: bool = False


def quotes(text: str) -> list[Quote]:
    """Every quoted call of a qualcl object in ``text`` (methods resolved on the last class named)."""
    found: list[Quote] = []
    context: type | None = None
    for span, heading in _spans(text):
        position = 0
        last: Any = None  # the object the previous call in this span made (for X(...).m(...) and X()(...))
        while True:
            match = _CALL.search(span, position)
            if match is None:
                break
            start = match.end() - 1
            end = _close(span, start)
            name, args = match.group(1), span[start + 1 : end]
            target, label, method = _resolve(name), name, False
            chained = match.start() > 0 and span[match.start() - 1] == "." and span[match.start() - 2] == ")"
            if chained and inspect.isclass(last):
                target, label, method = getattr(last, name, None), f"{last.__name__}.{name}", True
            elif target is None and context is not None and hasattr(context, name):
                target, label, method = getattr(context, name), f"{context.__name__}.{name}", True
            elif (
                target is not None
                and "." in name
                and not inspect.isclass(target)
                and inspect.isclass(_resolve(name.rsplit(".", 1)[0]))
            ):
                method = True  # CaptionTokenizer.fit(...): the class's other methods may follow
                context = _resolve(name.rsplit(".", 1)[0])
            if target is not None:
                found.append(Quote(span, target, label, _split(args), method))
                if inspect.isclass(target):
                    context = target
                returns = re.match(r"\s*(?:->|→)\s*([A-Za-z_]\w*)", span[end + 1 :])
                if returns and inspect.isclass(_resolve(returns.group(1))):
                    context = _resolve(returns.group(1))
            last = target
            if inspect.isclass(target) and span[end + 1 : end + 2] == "(" and hasattr(target, "forward"):
                call_end = _close(span, end + 1)  # X(...)(inputs): the instance's forward
                forward = target.forward
                found.append(Quote(span, forward, f"{target.__name__}.forward", _split(span[end + 2 : call_end]), True))
                position = call_end + 1
            else:
                position = end + 1
        if heading and inspect.isclass(_resolve(span)):  # a section on a class: its methods follow
            context = _resolve(span)
    return found


def problems(quote: Quote) -> list[str]:
    """What ``quote`` says that the object's signature does not (empty when it agrees)."""
    try:
        signature = inspect.signature(quote.target)
    except (TypeError, ValueError):
        return []
    parameters = list(signature.parameters.values())
    if quote.method and parameters and parameters[0].name in {"self", "cls"}:
        parameters = parameters[1:]
    by_name = {p.name: p for p in parameters}
    accepts_any_keyword = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
    issues, named, keyword_only, partial = [], [], False, False
    for piece in quote.args:
        if piece in {"...", "…"}:
            partial = True
            continue
        if piece == "*":
            keyword_only = True
            continue
        match = _NAME.fullmatch(piece) or _NAME.match(piece)
        if match is None or match.group(1):
            continue  # a value (binarize(probs, 0.5)) or *args
        name, stated = match.group(2), match.group(4)
        if name not in by_name:
            if not accepts_any_keyword:
                issues.append(f"{name!r} is not a parameter")
            continue
        parameter = by_name[name]
        named.append(name)
        if keyword_only and parameter.kind is not inspect.Parameter.KEYWORD_ONLY:
            issues.append(f"{name!r} is quoted after '*' but is not keyword-only")
        if not keyword_only and parameter.kind is inspect.Parameter.KEYWORD_ONLY:
            issues.append(f"{name!r} is keyword-only but quoted before (or without) '*'")
        if stated is not None and match.group(3) and "=" in piece.split("(")[0]:
            value = _default(stated.strip())
            if value is ... or (stated.strip() and stated.strip()[0] not in "\"'-0123456789.(NTF"):
                continue  # not a literal: an explanation, not a default
            if parameter.default is inspect.Parameter.empty:
                issues.append(f"{name!r} has no default (the page says {stated.strip()})")
            elif not _same(value, parameter.default):
                issues.append(f"{name!r} defaults to {parameter.default!r}, the page says {stated.strip()}")
    order = [p.name for p in parameters]
    if named != sorted(named, key=order.index):
        issues.append(f"parameters quoted in the order {named}, the signature has {order}")
    if not partial:
        required = [p.name for p in parameters if p.default is inspect.Parameter.empty and p.kind not in _VARIADIC]
        missing = [name for name in required if name not in named]
        if missing:
            issues.append(f"required parameters {missing} are not quoted (end the list with ... if on purpose)")
    return issues


def test_every_quoted_signature_matches_the_code():
    found = quotes(INDEX.read_text())
    assert len(found) >= 60, f"only {len(found)} quoted calls of qualcl objects found: has the parser broken?"
    wrong = [f"{q.label}: {issue}\n    in `{q.text}`" for q in found for issue in problems(q)]
    assert not wrong, "docs/index.md disagrees with the code:\n" + "\n".join(wrong)


def test_every_encoder_name_is_registered_and_every_registered_encoder_is_named():
    from qualcl.models import list_encoders

    text = INDEX.read_text()
    match = re.search(r"Names: (.*?)`qualcl list models`", text, flags=re.S)
    assert match, "docs/index.md no longer lists the encoder names before `qualcl list models`"
    named = re.findall(r"`([a-z][\w]*)`", match.group(1))
    registered = set(list_encoders())
    assert set(named) - registered == set(), f"not registered: {sorted(set(named) - registered)}"
    assert registered - set(named) == set(), f"registered but not in docs/index.md: {sorted(registered - set(named))}"
    mentioned = set(re.findall(r"model\.encoder=(\w+)|build_encoder\(\"(\w+)\"", text))
    assert {n for pair in mentioned for n in pair if n} <= registered


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("`InfoNCE(temperature=0.7)`", "defaults to 0.07"),
        ("`InfoNCE(temprature=0.07)`", "'temprature' is not a parameter"),
        ('`InfoNCE(reduction="mean", temperature=0.07)`', "order"),
        ("`functional.info_nce(query, negatives=None)`", "required parameters ['positive']"),
        ("`MultiLevelInfoNCE(temperature=0.07)`, `forward(view1, view2, *, levels)`", "not keyword-only"),
        ("`ClipLoss(init_logit_scale=1/0.05)`", "defaults to"),
        ("`RetrievalIndex(database).search(queries, k, exclude_index=3)`", "defaults to None"),
    ],
)
def test_a_wrong_quote_is_reported(line, expected):
    found = quotes(line)
    assert found, line
    assert any(expected in issue for q in found for issue in problems(q)), [problems(q) for q in found]


def test_a_right_quote_passes():
    line = '`InfoNCE(temperature=0.07, reduction="mean", ...)`, `forward(view1 (N,D), view2 (N,D) | None, ...)`'
    found = quotes(line)
    assert [q.label for q in found] == ["InfoNCE", "InfoNCE.forward"]
    assert all(not problems(q) for q in found), [problems(q) for q in found]
