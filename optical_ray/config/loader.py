"""Reading YAML config and search-space files: the safe loader, UTF-8, no key given
twice in one mapping, aliases that expand to at most :data:`MAX_YAML_NODES` nodes, and
every problem as one line naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from optical_ray.errors import ConfigError

__all__ = ["read_yaml", "yaml_value", "MAX_YAML_NODES"]

#: Nodes a YAML document may hold with every alias expanded. A config or a search space
#: has hundreds; nine aliases of nine aliases, eight levels deep, fit in 300 bytes and
#: expand to 43 million (a "billion laughs"), which the code that walks the result
#: (validation, deep copies, JSON) would take minutes and gigabytes to go through.
MAX_YAML_NODES = 50_000


class YamlTooLarge(yaml.YAMLError):
    """A document whose aliases expand past :data:`MAX_YAML_NODES` nodes."""

    def __init__(self, line: int | None, *, recursive: bool = False) -> None:
        self.line = line
        where = f" at line {line + 1}" if line is not None else ""
        what = (
            f"a YAML alias inside its own anchor{where} expands forever"
            if recursive
            else f"YAML aliases expand to more than {MAX_YAML_NODES} nodes{where}"
        )
        super().__init__(
            f"{what}; refused as an alias bomb: write the values out, or nest fewer aliases"
        )


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def _check_expansion(root: yaml.Node, budget: int = MAX_YAML_NODES) -> None:
    """Raise :class:`YamlTooLarge` when the node graph ``root`` (aliases are shared
    nodes) expands to more than ``budget`` nodes, or expands forever (an alias inside
    its own anchor). Linear in the composed nodes: each node's size is counted once."""
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in _children(node))
            if sizes[key] > budget:
                raise YamlTooLarge(node.start_mark.line if node.start_mark else None)
            continue
        if key in sizes:
            continue
        if key in on_path:  # a recursive alias
            raise YamlTooLarge(node.start_mark.line if node.start_mark else None, recursive=True)
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)


class _BudgetLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that counts the document's nodes with aliases expanded before
    building anything (:func:`_check_expansion`)."""

    def get_single_node(self) -> yaml.Node | None:
        node = super().get_single_node()
        if node is not None:
            _check_expansion(node)
        return node


class _UniqueKeyLoader(_BudgetLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain YAML keeps
    the last value without a word, so the first one would be silently ignored)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # `<<: *base` then explicit keys: overriding is the point
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: SafeLoader reports it itself
                continue
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first at line {first + 1}); give each key once",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path, what: str = "config file") -> Any:
    """Parse the YAML file ``path`` (safe loader, UTF-8, no duplicate keys); every
    problem (missing, a directory, not UTF-8, bad YAML) is a one-line :class:`ConfigError`
    naming the file, and the line where YAML can tell."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{what} {str(path)!r} is a directory; expected a YAML file")
    if not p.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    raw = p.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"not UTF-8 text: byte 0x{raw[exc.start]:02x} at line {line}; save the file as UTF-8",
            source=str(path),
        ) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except YamlTooLarge as exc:
        raise ConfigError(str(exc), source=str(path)) from None
    except yaml.YAMLError as exc:
        line = getattr(getattr(exc, "problem_mark", None), "line", None)
        where = f" at line {line + 1}" if line is not None else ""
        raise ConfigError(
            f"not valid YAML{where}: {getattr(exc, 'problem', exc)}", source=str(path)
        ) from None


def yaml_value(text: str, what: str) -> Any:
    """A YAML value given on the command line (``key=value``): parsed with the safe
    loader, ``text`` itself when it is not YAML; an alias bomb is a one-line
    :class:`ConfigError` naming ``what`` (the key)."""
    try:
        return yaml.load(text, Loader=_BudgetLoader)  # noqa: S506 (a SafeLoader)
    except YamlTooLarge as exc:
        raise ConfigError(f"{what}: {exc}") from None
    except yaml.YAMLError:
        return text
