"""Sphinx configuration: API reference from the docstrings (autodoc + napoleon), guide in MyST."""

from __future__ import annotations

import re

import latentgrad

project = "latentgrad"
author = "the latentgrad developers"
copyright = "2026, the latentgrad developers"
release = latentgrad.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
autosummary_generate = False
napoleon_google_docstring = True
napoleon_numpy_docstring = False
nitpicky = False

html_theme = "alabaster"
html_title = f"latentgrad {release}"
exclude_patterns = ["_build", "guide/estimator_table.md"]  # included by guide/choosing.md


_LITERAL = re.compile(r"(``.*?``|`[^`]+`_?|:[a-z:]+:`[^`]+`)")


def _escape_plain_text(line: str) -> str:
    """Escape the reST markup characters that plain-text math uses (``*latent``, ``|f|``)
    outside inline literals and roles, so a docstring written as plain text renders as written."""
    parts = _LITERAL.split(line)
    for i in range(0, len(parts), 2):
        parts[i] = re.sub(r"([*|])", r"\\\1", parts[i])
    return "".join(parts)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _join_hanging_indents(lines: list[str]) -> list[str]:
    """Join a plain-text hanging indent (``name: text`` wrapped onto deeper-indented lines) onto
    its first line, as reST would otherwise read it as an unexpected block quote. Literal blocks
    (after ``::``) and doctests are kept as they are."""
    out: list[str] = []
    literal_indent = None
    for line in lines:
        if literal_indent is not None:
            if line.strip() and _indent(line) <= literal_indent:
                literal_indent = None
            else:
                out.append(line)
                continue
        prev = out[-1] if out else ""
        hanging = (
            line.strip()
            and prev.strip()
            and _indent(line) > _indent(prev)
            and not prev.lstrip().startswith((">>>", "...", "- ", "* ", ":"))
        )
        if hanging:
            out[-1] = f"{prev} {line.strip()}"
        else:
            out.append(line)
        if line.rstrip().endswith("::"):
            literal_indent = _indent(line)
    return out


def _plain_docstrings(app, what, name, obj, options, lines):
    lines[:] = [_escape_plain_text(line) for line in _join_hanging_indents(lines)]


def setup(app):
    app.connect("autodoc-process-docstring", _plain_docstrings)
