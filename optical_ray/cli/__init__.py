"""``optical-ray``: the command line, a thin layer over the Python API."""

from __future__ import annotations

from optical_ray.cli.parser import main

__all__ = ["main"]
