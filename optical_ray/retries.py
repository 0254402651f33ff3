"""Storage outages: which failures are worth retrying, and how calls ride them out.

A storage server that restarts, a network blip or S3 throttling must not lose a trial's
checkpoint or a catalog record: :class:`StorageUnavailable` marks a transient failure
(connection refused, timeouts, 5xx, throttling; :func:`is_transient` tells them from
permanent ones such as bad credentials or a missing bucket), :func:`with_retries`
retries a call with exponential back-off, and :func:`call_transient` turns pyarrow's
``OSError`` into :class:`StorageUnavailable` so a retry loop sees it.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, TypeVar

from optical_ray.errors import StorageError
from optical_ray.redaction import redact

__all__ = [
    "OUTAGE_ATTEMPTS",
    "PERMANENT_MARKERS",
    "TRANSIENT_MARKERS",
    "one_line",
    "StorageUnavailable",
    "call_transient",
    "is_transient",
    "with_retries",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Tries of a call that must outlast a storage outage (a trial's report with its
#: checkpoint, the catalog's spooled records): 1+2+4+8+15*4 s, about 75 s, with
#: ``with_retries(..., base_delay=1.0, max_delay=15.0)``.
OUTAGE_ATTEMPTS = 9


class StorageUnavailable(StorageError):
    """The store could not be reached or answered with a transient error; retry later."""


def with_retries(
    fn: Callable[[], T],
    *,
    attempts: int = 4,
    base_delay: float = 0.5,
    max_delay: float = 8.0,
    what: str = "storage call",
    retry_on: tuple[type[BaseException], ...] = (StorageUnavailable,),
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Call ``fn()`` until it succeeds, at most ``attempts`` times.

    Waits ``base_delay * 2**k`` (capped at ``max_delay``) after the k-th failure, so the
    defaults ride out a storage server restart of ~4 s. Only ``retry_on`` exceptions are
    retried (by default :class:`StorageUnavailable`: network errors, timeouts, 5xx);
    anything else, and the last failure, propagates. Logs one warning per retry, with
    secrets redacted.
    """
    if attempts < 1:
        raise ValueError(f"attempts: got {attempts}, expected >= 1")
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except retry_on as exc:
            if attempt == attempts:
                raise
            delay = min(max_delay, base_delay * 2 ** (attempt - 1))
            log.warning(
                "%s failed (attempt %d/%d), retrying in %.1fs: %s",
                what,
                attempt,
                attempts,
                delay,
                redact(one_line(exc)),
            )
            sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def one_line(exc: BaseException) -> str:
    """``exc`` as one line of text (its type name when it has no message)."""
    return " ".join(str(exc).split()) or type(exc).__name__


#: Lower-case fragments of storage error messages that mean retrying cannot help.
PERMANENT_MARKERS = (
    "access_denied",
    "accessdenied",
    "invalidaccesskeyid",
    "invalid_access_key",
    "signature_does_not_match",
    "signaturedoesnotmatch",
    "forbidden",
    "no_such_bucket",
    "nosuchbucket",
    "invalidbucketname",
)


#: Fragments that mean the failure may pass (network, timeouts, throttling, 5xx).
TRANSIENT_MARKERS = (
    "network_connection",
    "curlcode",
    "could not connect",
    "connection refused",
    "timed out",
    "timeout",
    "could not resolve",
    "service_unavailable",
    "internal_failure",
    "slow_down",
    "slowdown",
    "throttl",
    "503",
    "500 ",
    "internalerror",
    "connection reset",
    "broken pipe",
    "unavailable",
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` looks like a storage failure worth retrying (network error,
    timeout, throttling, 5xx) rather than a permanent one (credentials, no bucket)."""
    if isinstance(exc, StorageUnavailable):
        return True
    low = one_line(exc).lower()
    return not any(k in low for k in PERMANENT_MARKERS) and any(k in low for k in TRANSIENT_MARKERS)


def call_transient(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` with transient storage failures (pyarrow raises OSError:
    connection refused, timeouts, 5xx) turned into :class:`StorageUnavailable`, which
    :func:`with_retries` retries; other errors propagate unchanged."""
    try:
        return fn(*args, **kwargs)
    except OSError as exc:
        if is_transient(exc):
            raise StorageUnavailable(redact(" ".join(str(exc).split()))) from exc
        raise
