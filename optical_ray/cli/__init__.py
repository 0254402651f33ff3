"""``optical-ray``: the command line, a thin layer over the Python API
(:mod:`~optical_ray.cli.parser`: the parser and one-line errors;
:mod:`~optical_ray.cli.commands`: one handler per subcommand;
:mod:`~optical_ray.cli.demo`: ``optical-ray demo``)."""

from __future__ import annotations

from optical_ray._lazy import lazy_exports

_EXPORTS = {"main": "parser"}
__all__ = list(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
