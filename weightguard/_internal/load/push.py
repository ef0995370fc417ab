"""``weightguard push``: upload a released model directory to S3 (multipart, concurrent)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from weightguard._internal.format.model_dir import is_weight_file
from weightguard._internal.format.safetensors import MAX_HEADER_SIZE
from weightguard._internal.foundation.names import real_inside
from weightguard._internal.foundation.s3 import parse_s3_uri, upload_client
from weightguard._internal.foundation.s3errors import REFUSED, error_code
from weightguard._internal.signing.location import signature_name
from weightguard.errors import (
    ConfigError,
    DestinationError,
    SourceError,
)
from weightguard.manifest import S3Options

__all__ = ["push_model"]


def _refuse_plaintext(path: Path) -> None:
    """Refuse to upload plain safetensors weights unless they are signed.

    A released directory holds encrypted artifacts (or signed plain weights); plain,
    unsigned weights here are almost always a mistake.
    """
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if n <= MAX_HEADER_SIZE:
            sig = path.with_name(signature_name(path.name))
            if not (sig.exists() or (path.parent / signature_name(None)).exists()):
                raise ConfigError(
                    f"{path} is a plain, unsigned safetensors file",
                    hint="encrypt and/or sign the model before pushing it",
                )


def _upload_error(
    exc: BaseException, rel: str, url: str, endpoint: str | None, *, where: str | None = None
) -> Exception:
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError

    where = where or f"upload of {rel} to {url}"
    if isinstance(exc, NoCredentialsError):
        return DestinationError(
            f"{where}: no S3 credentials found",
            hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or an AWS profile)",
        )
    if isinstance(exc, EndpointConnectionError):
        return DestinationError(
            f"{where}: cannot reach the S3 endpoint {endpoint or 'of AWS'}",
            hint="check --endpoint-url (or AWS_ENDPOINT_URL_S3) and the network",
        )
    if isinstance(exc, OSError):
        return DestinationError(f"{where} failed: {exc.strerror or type(exc).__name__}")
    code = error_code(exc)
    if code in REFUSED:
        return DestinationError(
            f"{where} was refused: {REFUSED[code]} ({code})",
            hint="check the bucket name, the S3 credentials (standard AWS chain) and "
            "--endpoint-url",
        )
    return DestinationError(
        f"{where} failed after retries ({code or type(exc).__name__})",
        hint="check the bucket, credentials (standard AWS chain) and --endpoint-url",
    )


# At most this many existing keys are listed (and, with replace, removed) under a
# release prefix: a release is a handful of files; more means the wrong prefix.
MAX_EXISTING = 10_000


def _existing(s3: Any, bucket: str, prefix: str, url: str, endpoint: str | None) -> list[str]:
    """Keys already under ``prefix`` (bounded)."""
    keys: list[str] = []
    token: str | None = None
    bounds = S3Options()  # the loader's listing bounds (sources.s3_list): pages and time
    deadline = time.monotonic() + bounds.list_timeout_s
    try:
        for _ in range(bounds.max_list_pages):
            kw: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": 1000}
            if token:
                kw["ContinuationToken"] = token
            page = s3.list_objects_v2(**kw)
            keys += [o["Key"] for o in page.get("Contents", [])]
            if len(keys) > MAX_EXISTING:
                raise DestinationError(
                    f"{url} already holds more than {MAX_EXISTING} objects",
                    hint="push each release to a prefix of its own (s3://bucket/model/v2)",
                )
            new = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not new:
                return keys
            if new == token or time.monotonic() > deadline:
                break  # a store that repeats itself or never finishes: refused below
            token = new
        raise DestinationError(
            f"listing {url} does not end (a repeated continuation token, more than "
            f"{bounds.max_list_pages} pages or {bounds.list_timeout_s:g} s); nothing was "
            "uploaded",
            hint="check the endpoint: the store answers 'truncated' without end",
        )
    except DestinationError:
        raise
    except Exception as exc:
        raise _upload_error(exc, "", url, endpoint, where=f"listing {url}") from None


def _release_prefix(destination: str) -> tuple[str, str, str]:
    """``(bucket, prefix, url)`` of a release destination; the prefix ends with ``/``."""
    bucket, prefix = parse_s3_uri(destination)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, prefix, f"s3://{bucket}/{prefix}"


def _files_to_push(root: Path) -> list[tuple[Path, str]]:
    """``(path, relative name)`` of every file to upload, checked before anything is sent:
    dot files skipped, links out of ``root`` and plain unsigned weights refused."""
    todo: list[tuple[Path, str]] = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        if real_inside(p, (root,)) is None:  # foundation.names: by real paths
            raise SourceError(
                f"{p} is a symbolic link leading outside {root} (to {os.path.realpath(p)}); "
                "nothing was uploaded",
                hint="copy the file into the release directory",
            )
        if is_weight_file(p.name):
            _refuse_plaintext(p)
        todo.append((p, p.relative_to(root).as_posix()))
    if not todo:
        raise ConfigError(f"{root}: nothing to upload")
    return todo


def _refuse_existing(before: list[str], prefix: str, url: str) -> NoReturn:
    """Refuse a destination that already holds a release (without ``replace``)."""
    shown = ", ".join(k[len(prefix) :] for k in before[:3])
    more = f" and {len(before) - 3} more" if len(before) > 3 else ""
    raise DestinationError(
        f"{url} already holds a release ({len(before)} objects: {shown}{more}); "
        "nothing was uploaded",
        hint="push to a new prefix (s3://bucket/model/v2), or pass --replace "
        "(replace=True) to overwrite it: the prefix then holds exactly this release",
    )


def _upload_all(
    s3: Any,
    todo: list[tuple[Path, str]],
    bucket: str,
    prefix: str,
    endpoint: str | None,
    progress: Callable[[int], None] | None,
) -> tuple[list[str], int]:
    """Upload each file (multipart, concurrent parts); ``(relative names, bytes)``."""
    from boto3.exceptions import Boto3Error
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    cfg = TransferConfig(
        multipart_threshold=64 * 1024 * 1024,
        multipart_chunksize=64 * 1024 * 1024,
        max_concurrency=8,
    )
    files: list[str] = []
    total = 0
    for p, rel in todo:
        key = prefix + rel
        try:
            s3.upload_file(str(p), bucket, key, Config=cfg, Callback=progress)
        except (Boto3Error, ClientError, BotoCoreError, OSError) as exc:
            raise _upload_error(exc, rel, f"s3://{bucket}/{key}", endpoint) from None
        files.append(rel)
        total += p.stat().st_size
    return files, total


def _remove_stale(s3: Any, bucket: str, stale: list[str], url: str, endpoint: str | None) -> None:
    """Remove what the replaced release had and this one has not (1000 keys a request)."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    for i in range(0, len(stale), 1000):
        batch = stale[i : i + 1000]
        try:
            resp = s3.delete_objects(
                Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True}
            )
        except (Boto3Error, ClientError, BotoCoreError) as exc:
            where = f"removing the replaced release's files under {url}"
            raise _upload_error(exc, "", url, endpoint, where=where) from None
        if resp.get("Errors"):
            e = resp["Errors"][0]
            raise DestinationError(
                f"{url}: the new release is uploaded but {len(resp['Errors'])} file(s) of the "
                f"replaced one could not be removed (first: {e.get('Key')}: {e.get('Code')})",
                hint="remove them by hand: the prefix mixes two releases until then",
            )


def push_model(
    directory: str | os.PathLike[str],
    destination: str,
    *,
    endpoint_url: str | None = None,
    client: Any = None,
    progress: Callable[[int], None] | None = None,
    replace: bool = False,
) -> dict[str, Any]:
    """Upload every file of ``directory`` (dot files excepted) under ``destination``.

    ``progress(n)`` is called with bytes sent as they go.  Plain unsigned safetensors
    files are refused before anything is sent.  A destination that already holds
    objects is refused (DestinationError) unless ``replace``: then the new files are
    uploaded and every object under the prefix that is not one of them is removed, so
    the prefix holds exactly the new release.  The result says what was replaced.
    """
    root = Path(directory)
    bucket, prefix, url = _release_prefix(destination)
    todo = _files_to_push(root)
    s3 = client or upload_client(endpoint_url)
    endpoint = str(getattr(getattr(s3, "meta", None), "endpoint_url", "") or "") or None
    before = _existing(s3, bucket, prefix, url, endpoint)
    if before and not replace:
        _refuse_existing(before, prefix, url)
    files, total = _upload_all(s3, todo, bucket, prefix, endpoint, progress)
    stale = sorted(set(before) - {prefix + rel for rel in files})
    _remove_stale(s3, bucket, stale, url, endpoint)
    return {
        "destination": url,
        "files": files,
        "bytes": total,
        "replaced": len(before) if before else 0,
        "removed": stale,
    }
