"""Every Python example in README.md and docs/*.md runs, and states what it prints.

Each fenced ``python`` block runs on its own, in a fresh namespace. A block whose
fence is preceded by ``<!-- continue -->`` runs after the block before it, in the same
namespace; ``<!-- skip: reason -->`` skips a block (say why). A line that is a bare
expression followed by a comment holding a Python literal — ``ys.shape  # (100, 32, 64)``
— is checked: the expression must equal the literal (an array shape compares as a
tuple).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_FENCE = re.compile(
    r"(?P<marker><!--\s*(?P<kind>continue|skip)[^>]*-->\s*\n)?```python\n(?P<code>.*?)```", re.S
)


def _blocks(page: Path):
    """[(name, code, kind)] for each python block of a page; kind: None, continue or skip."""
    out = []
    for i, m in enumerate(_FENCE.finditer(page.read_text())):
        out.append((f"{page.relative_to(ROOT)}[{i}]", m.group("code"), m.group("kind")))
    return out


def _checked(code: str) -> str:
    """The block with each ``expr  # literal`` line turned into an assertion."""
    lines = []
    for line in code.splitlines():
        expr, sep, comment = line.partition("  # ")
        literal = _literal(comment) if sep and not line.startswith((" ", "\t")) else None
        if literal is not None and _is_expression(expr):
            lines.append(f"_check({expr.strip()}, {comment.strip()}, {expr.strip()!r})")
        else:
            lines.append(line)
    return "\n".join(lines)


def _literal(text: str):
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return None


def _is_expression(text: str) -> bool:
    try:
        tree = ast.parse(text.strip())
    except SyntaxError:
        return False
    return len(tree.body) == 1 and isinstance(tree.body[0], ast.Expr)


def _check(value, expected, source: str) -> None:
    if isinstance(expected, tuple) and not isinstance(value, tuple):
        value = tuple(value)
    assert value == expected, f"{source} is {value!r}; the page says {expected!r}"


CASES = []
for page in PAGES:
    chain: list[str] = []
    for name, code, kind in _blocks(page):
        chain = [*chain, code] if kind == "continue" else [code]
        # README's examples run by default; the docs pages' with -m slow (CI runs both).
        marks = [pytest.mark.skip(reason="marked skip")] if kind == "skip" else []
        if page.name != "README.md":
            marks.append(pytest.mark.slow)
        CASES.append(pytest.param(list(chain), id=name, marks=marks))


@pytest.mark.parametrize("codes", CASES)
def test_example_runs_and_prints_what_the_page_says(codes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    namespace = {"_check": _check, "__name__": "__docs__"}
    for code in codes:
        exec(compile(_checked(code), "<docs example>", "exec"), namespace)


def test_the_checker_can_fail():
    with pytest.raises(AssertionError, match="the page says"):
        exec(_checked("x = (1, 2)\nx  # (1, 3)"), {"_check": _check})
    assert _checked("f(x)  # [T, B, H]") == "f(x)  # [T, B, H]"  # not a literal: a note
