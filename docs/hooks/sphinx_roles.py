"""A Griffe extension that turns the reStructuredText in optical-ray's docstrings into
the Markdown mkdocstrings renders.

The docstrings are numpydoc-ish and cross-reference with Sphinx roles
(``:func:`~optical_ray.catalog.best_config```, ``:class:`Catalog```). Rewriting 350 of
them by hand would churn every module; this extension rewrites them at build time:

- a role becomes an autorefs link to the object it names, resolved the way Sphinx does
  (a dotted path, or a name in the scope of the docstring's object). It is *optional*:
  a link where the target has a page, plain code where it has none (private helpers).
  A role naming nothing the package defines is a warning, which fails
  ``mkdocs build --strict``, so a docstring that points at a moved or renamed object
  breaks the build instead of rotting;
- ``.. math::`` blocks and ``:math:`` roles become arithmatex's ``$$ ... $$`` and
  ``$ ... $``;
- a constant documented the Sphinx way, by ``#:`` comment lines right above it, gets
  them as its docstring.
"""

from __future__ import annotations

import builtins
import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(func|class|mod|meth|attr|data|exc|obj):`(~?)([^`]+)`")
MATH_ROLE = re.compile(r":math:`([^`]+)`")
MATH_BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)\.\. math::[ \t]*\n(?P<body>(?:(?P=indent)[ \t]+\S.*\n|[ \t]*\n)+)", re.M
)

logger = griffe.get_logger("griffe.sphinx_roles")


def _canonical(collection: griffe.ModulesCollection, path: str) -> str | None:
    """The path ``path`` names inside the package, followed through re-exports; None
    when the package defines nothing there (an external name, or a broken path)."""
    try:
        obj = collection.get_member(path)
    except (KeyError, ValueError):
        return None
    if obj.is_alias:
        try:
            return obj.final_target.path
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            return obj.target_path
    return obj.path


def _resolve(obj: griffe.Object, target: str) -> tuple[str | None, bool]:
    """(path, is ours) for a role's target seen from ``obj``'s docstring."""
    collection = obj.modules_collection
    package = obj.package.path
    if target.split(".")[0] == package:
        return _canonical(collection, target), True
    head, _, rest = target.partition(".")
    if not rest and hasattr(builtins, head):
        return head, False  # a builtin (FileNotFoundError, ValueError): shown as code
    try:
        base = obj.resolve(head)
    except griffe.NameResolutionError:
        return None, True
    full = f"{base}.{rest}" if rest else base
    if full.split(".")[0] != package:
        return full, False  # a name imported from another library: shown as code
    return _canonical(collection, full), True


def _rewrite(obj: griffe.Object, text: str) -> str:
    def math_block(m: re.Match[str]) -> str:
        body = "\n".join(line.strip() for line in m.group("body").strip("\n").splitlines())
        ind = m.group("indent")
        return f"{ind}$$\n{body}\n{ind}$$\n\n"

    text = MATH_BLOCK.sub(math_block, text)
    text = MATH_ROLE.sub(lambda m: f"${m.group(1)}$", text)

    def role(m: re.Match[str]) -> str:
        target = " ".join(m.group(3).split()).replace(" ", "")  # a role may wrap lines
        title = target.rsplit(".", 1)[-1] if m.group(2) else target
        if m.group(1) in ("func", "meth"):
            title += "()"
        path, ours = _resolve(obj, target)
        code = f"<code>{html.escape(title)}</code>"
        if path is None:
            logger.warning(
                "%s: the docstring of %s names %r, which optical_ray does not define",
                obj.relative_filepath,
                obj.path,
                target,
            )
            return code
        if not ours:
            return code
        return f'<autoref identifier="{path}" optional>{code}</autoref>'

    return ROLE.sub(role, text)


def _comment_docstring(obj: griffe.Object) -> griffe.Docstring | None:
    """The ``#:`` lines right above an attribute, as its docstring."""
    lines = obj.lines_collection[obj.filepath]
    found: list[str] = []
    i = obj.lineno - 2  # the line above, 0-based
    while i >= 0 and lines[i].strip().startswith("#:"):
        found.insert(0, lines[i].strip()[2:].strip())
        i -= 1
    return griffe.Docstring("\n".join(found), parent=obj) if found else None


def _walk(obj: griffe.Object):
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring of a package once it is loaded (see the module)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.is_attribute and obj.docstring is None:
                obj.docstring = _comment_docstring(obj)
            if obj.docstring is not None:
                obj.docstring.value = _rewrite(obj, obj.docstring.value)
