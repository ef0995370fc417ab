"""S3 for every caller (the loader's reads, push's uploads, the audit's sinks and
anchors): the one ``s3://`` URI parser and the one boto3 client factory.

Each caller keeps its own retry and timeout needs, as a named profile of the one factory:

- :func:`read_client` -- the loader's ranged reads: one attempt per call (the loader
  retries itself, bodies included), a connection pool sized to its concurrency, no CRC
  checksums on ranged reads (signed digests are verified instead);
- :func:`upload_client` -- push: the transfer manager re-sends a failed part itself,
  so six attempts with exponential backoff;
- :func:`audit_client` -- audit sinks and anchors: three attempts, short timeouts.

The endpoint is ``endpoint_url=``, else ``AWS_ENDPOINT_URL_S3``, else
``AWS_ENDPOINT_URL``; an explicit endpoint (an S3-compatible store) is addressed by path.
Credentials come from boto3's standard chain.  What a refusal means, in words, is in
:mod:`~weightguard._internal.foundation.s3errors`.
"""

from __future__ import annotations

import os
from typing import Any

from weightguard.errors import DependencyMissing, SourceError, WeightguardError
from weightguard.manifest import S3Options

__all__ = [
    "S3_SCHEME",
    "audit_client",
    "is_s3_uri",
    "parse_s3_uri",
    "read_client",
    "upload_client",
]

S3_SCHEME = "s3://"


def is_s3_uri(text: str | os.PathLike[str]) -> bool:
    """True for ``s3://...`` (a path object never is)."""
    return isinstance(text, str) and text.startswith(S3_SCHEME)


def parse_s3_uri(
    uri: str,
    *,
    error: type[WeightguardError] = SourceError,
    hint: str = "use s3://bucket/key",
) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``(bucket, key)``; the key may be empty or a prefix (its
    slashes kept: a trailing one marks a prefix).  A malformed URI raises ``error``."""
    if not uri.startswith(S3_SCHEME):
        raise error(f"{uri!r} is not an s3:// URI", hint=hint)
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise error(f"{uri!r} names no bucket", hint=hint)
    return bucket, key


def _endpoint(endpoint_url: str | None) -> str | None:
    return (
        endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    )


def _new_client(
    missing: str,
    *,
    endpoint_url: str | None = None,
    retries: dict[str, Any],
    connect_timeout: float,
    read_timeout: float,
    profile_name: str | None = None,
    region_name: str | None = None,
    **config: Any,
) -> Any:
    """The one place a boto3 S3 client is made."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:  # pragma: no cover - boto3 is a dependency
        raise DependencyMissing(missing, hint="pip install boto3") from exc
    endpoint = _endpoint(endpoint_url)
    cfg = Config(
        retries=retries,  # type: ignore[arg-type]
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        s3={"addressing_style": "path"} if endpoint else None,
        **config,
    )
    session = boto3.session.Session(profile_name=profile_name, region_name=region_name)
    return session.client("s3", endpoint_url=endpoint, config=cfg)


def read_client(options: S3Options) -> Any:
    """The loader's client (``options.client`` if given): retried by the loader itself."""
    if options.client is not None:
        return options.client
    return _new_client(
        "S3 sources need boto3",
        endpoint_url=options.endpoint_url,
        retries={"total_max_attempts": 1, "mode": "standard"},  # retried by the loader
        connect_timeout=options.connect_timeout_s,
        read_timeout=options.read_timeout_s,
        profile_name=options.profile,
        region_name=options.region,
        max_pool_connections=max(10, options.concurrency * 2),
        # Do not compute/require CRC checksums on ranged reads: we verify signed digests.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )


# boto3's transfer manager re-sends a failed part itself; the read client turns that
# off (its reads are retried by the loader), so uploads get a client of their own.
_UPLOAD_RETRIES = {"total_max_attempts": 6, "mode": "standard"}  # exponential backoff


def upload_client(endpoint_url: str | None = None) -> Any:
    """An S3 client for uploads (push): retries with backoff."""
    return _new_client(
        "push needs boto3",
        endpoint_url=endpoint_url,
        retries=_UPLOAD_RETRIES,
        connect_timeout=10,
        read_timeout=60,
    )


def audit_client(client: Any = None) -> Any:
    """The audit's client (``client`` if given) for s3:// sinks and anchors."""
    if client is not None:
        return client
    return _new_client(
        "boto3 is needed for s3:// audit sinks and anchors",
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
    )
