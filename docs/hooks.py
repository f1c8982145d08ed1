"""mkdocs hook: LaTeX becomes MathML at build time, and the docstrings' reST roles read well.

- In the pages, pymdownx.arithmatex (generic mode) marks ``$...$`` and ``$$...$$`` as
  ``<span class="arithmatex">\\(...\\)</span>`` and ``<div class="arithmatex">\\[...\\]</div>``.
- The docstrings, written for reading in an editor and in ``help()``, use reST:
  ``:math:`...``` inline, ``.. math::`` paragraphs, and ``:class:`X``` / ``:func:`X``` roles.

Each formula becomes the MathML that latex2mathml writes, which browsers render natively,
so the site needs no JavaScript and no network to show equations; a formula latex2mathml
cannot read fails the build, naming it. A role keeps its code and loses its ``:func:``.
"""

import html
import re

from latex2mathml.converter import convert

_MATH = re.compile(
    r'<(?P<tag>span|div) class="arithmatex">\s*\\(?P<open>[(\[])(?P<tex>.*?)\\[)\]]\s*</(?P=tag)>',
    re.S,
)


def _to_mathml(match: re.Match, page_name: str) -> str:
    display = "block" if match.group("open") == "[" else "inline"
    return _formula(match.group("tex"), display, page_name)


_ROLE_MATH = re.compile(r":math:<code>(?P<tex>.*?)</code>", re.S)
_DIRECTIVE_MATH = re.compile(r"<p>\.\. math::\s*(?P<tex>.*?)</p>", re.S)
_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|obj|exc|const|py:\w+):(?=<code>)")


# latex2mathml cannot size a delimiter that is itself a command (\Big\lVert): drop the size.
_SIZED_NORM = re.compile(r"\\[Bb]igg?[lr]?\s*(?=\\lVert|\\rVert|\\\|)")


def _formula(tex: str, display: str, page_name: str) -> str:
    tex = _SIZED_NORM.sub("", html.unescape(tex).strip())
    try:
        return convert(tex, display=display)
    except Exception as e:  # latex2mathml raises many kinds; the build must name the formula
        raise ValueError(f"{page_name}: cannot convert the formula {tex!r} to MathML: {e}") from e


def on_page_content(html_text: str, page, config, files) -> str:
    name = page.file.src_path
    html_text = _MATH.sub(lambda m: _to_mathml(m, name), html_text)
    html_text = _DIRECTIVE_MATH.sub(
        lambda m: f"<p>{_formula(m.group('tex'), 'block', name)}</p>", html_text)
    html_text = _ROLE_MATH.sub(lambda m: _formula(m.group("tex"), "inline", name), html_text)
    return _ROLE.sub("", html_text)
