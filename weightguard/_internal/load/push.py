"""``weightguard push``: upload a released model directory to S3 (multipart, concurrent)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from weightguard._internal.format.safetensors import MAX_HEADER_SIZE
from weightguard._internal.foundation.s3errors import REFUSED, error_code
from weightguard._internal.load.sources import parse_s3_uri
from weightguard.errors import (
    ConfigError,
    DependencyMissing,
    DestinationError,
)

__all__ = ["push_model", "upload_client"]


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
            sig = path.with_name(path.name + ".sig")
            if not (sig.exists() or (path.parent / "model.sig").exists()):
                raise ConfigError(
                    f"{path} is a plain, unsigned safetensors file",
                    hint="encrypt and/or sign the model before pushing it",
                )


# boto3's transfer manager re-sends a failed part itself; the read client turns that
# off (its reads are retried by sources.py), so uploads get a client of their own.
_UPLOAD_RETRIES = {"total_max_attempts": 6, "mode": "standard"}  # exponential backoff


def upload_client(endpoint_url: str | None = None) -> Any:
    """An S3 client for uploads: standard credential chain, retries with backoff."""
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:  # pragma: no cover - boto3 is a dependency
        raise DependencyMissing("push needs boto3", hint="pip install boto3") from exc
    endpoint = (
        endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    )
    cfg = Config(
        retries=_UPLOAD_RETRIES,  # type: ignore[arg-type]
        connect_timeout=10,
        read_timeout=60,
        s3={"addressing_style": "path"} if endpoint else None,
    )
    return boto3.session.Session().client("s3", endpoint_url=endpoint, config=cfg)


def _upload_error(exc: BaseException, rel: str, url: str, endpoint: str | None) -> Exception:
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError

    where = f"upload of {rel} to {url}"
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


def push_model(
    directory: str | os.PathLike[str],
    destination: str,
    *,
    endpoint_url: str | None = None,
    client: Any = None,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Upload every file of ``directory`` (dot files excepted) under ``destination``.

    ``progress(n)`` is called with bytes sent as they go.  Plain unsigned safetensors
    files are refused before anything is sent.
    """
    from boto3.exceptions import Boto3Error
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    root = Path(directory)
    bucket, prefix = parse_s3_uri(destination)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    todo: list[tuple[Path, str]] = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        if p.suffix == ".safetensors":
            _refuse_plaintext(p)
        todo.append((p, p.relative_to(root).as_posix()))
    if not todo:
        raise ConfigError(f"{root}: nothing to upload")
    s3 = client or upload_client(endpoint_url)
    endpoint = str(getattr(getattr(s3, "meta", None), "endpoint_url", "") or "") or None
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
    return {"destination": f"s3://{bucket}/{prefix}", "files": files, "bytes": total}
