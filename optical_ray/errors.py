"""Exceptions a user can act on.

Every error that reaches a user names the bad value and what is allowed. The CLI turns
an :class:`OpticalRayError` into one line on stderr and exit code 2; anything else is a
bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "OpticalRayError",
    "ConfigError",
    "DataError",
    "StorageError",
    "TrainingError",
    "ClusterError",
]


class OpticalRayError(Exception):
    """Base class: a problem with the user's input or environment, not a bug."""


class ConfigError(OpticalRayError, ValueError):
    """A config (YAML, CLI override, search space) is not well-formed.

    ``problems`` holds every problem found, one line each, so a user fixes them in one
    round instead of one per run.
    """

    def __init__(self, problems: list[str] | str, *, source: str | None = None) -> None:
        from optical_ray.redaction import redact  # a bad value may be a URI with a secret

        self.problems = [redact(p) for p in ([problems] if isinstance(problems, str) else problems)]
        self.source = source
        where = f" in {source}" if source else ""
        if len(self.problems) == 1:
            msg = f"Config is not well-formed{where}: {self.problems[0]}"
        else:
            body = "; ".join(self.problems)
            msg = f"Config is not well-formed{where}, found {len(self.problems)} errors: {body}"
        super().__init__(msg)


class DataError(OpticalRayError, ValueError):
    """A data file is missing, empty, malformed or inconsistent."""


class StorageError(OpticalRayError):
    """A storage URI is malformed, unreachable, or holds nothing we can read."""


class TrainingError(OpticalRayError):
    """Training cannot go on (e.g. the loss became NaN); names the loss and the step."""


class ClusterError(OpticalRayError):
    """A local cluster could not start, was not found, or did not stop."""
