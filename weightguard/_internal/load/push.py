"""``weightguard push``: upload a released model directory to S3 (multipart, concurrent)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from weightguard._internal.format.safetensors import MAX_HEADER_SIZE
from weightguard._internal.load.sources import S3Options, make_s3_client, parse_s3_uri
from weightguard.errors import ConfigError, SourceError

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
            sig = path.with_name(path.name + ".sig")
            if not (sig.exists() or (path.parent / "model.sig").exists()):
                raise ConfigError(
                    f"{path} is a plain, unsigned safetensors file",
                    hint="encrypt and/or sign the model before pushing it",
                )


def push_model(
    directory: str | os.PathLike[str],
    destination: str,
    *,
    endpoint_url: str | None = None,
    client: Any = None,
) -> dict[str, Any]:
    from boto3.s3.transfer import TransferConfig
    from botocore.exceptions import BotoCoreError, ClientError

    root = Path(directory)
    bucket, prefix = parse_s3_uri(destination)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    s3 = client or make_s3_client(S3Options(endpoint_url=endpoint_url))
    cfg = TransferConfig(
        multipart_threshold=64 * 1024 * 1024,
        multipart_chunksize=64 * 1024 * 1024,
        max_concurrency=8,
    )
    files: list[str] = []
    total = 0
    for p in sorted(root.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        rel = p.relative_to(root).as_posix()
        if p.suffix == ".safetensors":
            _refuse_plaintext(p)
        key = prefix + rel
        try:
            s3.upload_file(str(p), bucket, key, Config=cfg)
        except (ClientError, BotoCoreError, OSError) as exc:
            raise SourceError(
                f"upload of {rel} to s3://{bucket}/{key} failed ({type(exc).__name__})",
                hint="check the bucket, credentials (standard AWS chain) and endpoint",
            ) from None
        files.append(rel)
        total += p.stat().st_size
    if not files:
        raise ConfigError(f"{root}: nothing to upload")
    return {"destination": f"s3://{bucket}/{prefix}", "files": files, "bytes": total}
