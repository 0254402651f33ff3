"""Secrets out of text: credentials inside URIs are refused, and anything that looks
like a secret is masked before it is printed, logged or saved.

Credentials come from the AWS chain only (environment variables, the shared config and
credentials files, the instance role). A URI that carries them (``s3://KEY:SECRET@bucket``,
``http://user:pw@host``, ``?secret_key=...``) is refused with :data:`CREDENTIALS_HINT`,
and :func:`redact` masks it wherever text might still hold one. Pure Python, no
dependencies: config validation and the CLI use it without loading pyarrow.
"""

from __future__ import annotations

import os
import re
from typing import Any

__all__ = [
    "redact",
    "redact_uri",
    "has_credentials",
    "credentials_problem",
    "CREDENTIALS_HINT",
    "MASK",
    "SECRET_ENV_VARS",
]

MASK = "***"

CREDENTIALS_HINT = (
    "credentials never go in URIs or configs: use the AWS chain (the "
    "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY environment variables, the "
    "shared config/credentials file with AWS_PROFILE, or the instance role)"
)

_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
#: Environment variables holding AWS credentials: never copied into a Ray runtime_env
#: (Ray's runtime-env agent logs runtime envs in plain text).
SECRET_ENV_VARS = frozenset({*_SECRET_ENV, "AWS_ACCESS_KEY_ID"})
_SECRET_PATTERNS = [
    # key=value / key: value / "key": "value" for the usual secret-bearing names
    re.compile(
        r"(?i)((?:aws_)?(?:secret_access_key|secret_key|session_token|security_token)"
        r"[\"']?\s*[=:]\s*[\"']?)([^\s\"',;&}]+)"
    ),
    # presigned-URL query parameters
    re.compile(r"(?i)((?:X-Amz-Signature|X-Amz-Security-Token|X-Amz-Credential)=)([^&\s\"']+)"),
]
# A URI inside free text: the scheme, then everything up to whitespace or a quote.
_URI = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)([^\s'\"<>`]*)")
# Query parameters that pass credentials (pyarrow's S3 URIs accept the first three).
_CRED_QUERY = re.compile(
    r"(?i)[?&](?:access_key|secret_key|session_token|aws_access_key_id|"
    r"aws_secret_access_key|aws_session_token|x-amz-credential|"
    r"x-amz-signature|x-amz-security-token)="
)


def _userinfo_end(scheme: str, rest: str) -> int | None:
    """Index of the ``@`` that ends a userinfo part in ``rest`` (the URI after
    ``scheme://``), or None.

    AWS secret keys contain ``/``, so ``user:pass@`` may hold slashes: a candidate before
    an ``@`` counts as userinfo when it has no ``/`` at all, or has a ``:`` followed by
    something other than a port number (``host:8080/path@x`` is a path, not a user).
    ``s3://bucket/runs@v2`` keeps its ``@`` (a key may contain one). Errs towards masking.
    """
    end = None
    for i, ch in enumerate(rest):
        if ch != "@":
            continue
        head = rest[:i]
        first = head.split("/", 1)[0]
        if "/" not in head:
            end = i
        elif ":" in first:
            after_colon = first.split(":", 1)[1]
            if scheme.lower() == "s3://" or not after_colon.isdigit():
                end = i
    return end


def _mask_uri(match: re.Match[str]) -> str:
    scheme, rest = match.group(1), match.group(2)
    end = _userinfo_end(scheme, rest)
    return scheme + (MASK + rest[end:] if end is not None else rest)


def redact(text: Any) -> str:
    """``text`` as a string without secrets: the values of ``AWS_SECRET_ACCESS_KEY`` /
    ``AWS_SESSION_TOKEN`` from the environment, the whole userinfo of any URI
    (``s3://KEY:SECRET@bucket`` becomes ``s3://***@bucket``), and anything shaped like
    ``aws_secret_access_key=...`` or ``X-Amz-Signature=...``."""
    out = str(text)
    for name in _SECRET_ENV:
        value = os.environ.get(name)
        if value and len(value) >= 4:  # a 1-3 character "secret" would mask half the text
            out = out.replace(value, MASK)
    out = _URI.sub(_mask_uri, out)
    for pattern in _SECRET_PATTERNS:
        out = pattern.sub(lambda m: m.group(1) + MASK, out)
    return out


def has_credentials(uri: str, *, bare_host: bool = False) -> bool:
    """Whether ``uri`` carries credentials: a userinfo part (``scheme://user[:pw]@``) or a
    credential query parameter. ``bare_host``: ``uri`` may be ``host:port`` without a
    scheme (S3 endpoints, Ray addresses), so ``user:pw@host`` counts too; a local path
    is never read that way (``runs@v2`` is a fine directory name)."""
    text = str(uri).strip()
    if _CRED_QUERY.search(text):
        return True
    if "://" not in text:
        if not bare_host:
            return False
        text = "x://" + text
    scheme, _, rest = text.partition("://")
    return _userinfo_end(scheme + "://", rest) is not None


def redact_uri(uri: str, *, bare_host: bool = False) -> str:
    """:func:`redact` for one URI; with ``bare_host`` also ``user:pw@host:port`` written
    without a scheme (which free-text redaction cannot tell from prose)."""
    text = str(uri)
    if bare_host and "://" not in text:
        end = _userinfo_end("x://", text)
        text = text if end is None else MASK + text[end:]
    return redact(text)


def credentials_problem(what: str, value: Any, *, bare_host: bool = False) -> str | None:
    """One line refusing ``value`` (named ``what``, e.g. ``storage.uri``) if it carries
    credentials, with the secret masked; None if it is clean."""
    if not isinstance(value, str) or not has_credentials(value, bare_host=bare_host):
        return None
    return (
        f"{what}: got {redact_uri(value, bare_host=bare_host)!r}, a URI that carries "
        f"credentials; {CREDENTIALS_HINT}"
    )
