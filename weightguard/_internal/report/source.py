"""Where a report's release comes from: a local directory or file, or an ``s3://``
prefix copied into a private temporary directory (removed afterwards), so that it is
verified exactly like a local release: every byte hashed against the signature."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from weightguard._internal.foundation.names import safe_join
from weightguard._internal.foundation.s3 import parse_s3_uri, read_client
from weightguard._internal.load.sources import s3_list
from weightguard.errors import SourceError, WeightguardError
from weightguard.manifest import S3Options

MAX_OBJECTS = 10_000


@contextmanager
def local_release(uri: str, *, s3: S3Options | None = None) -> Iterator[Path]:
    """The release as a local path; an s3:// prefix is downloaded first."""
    if not uri.startswith("s3://"):
        p = Path(uri)
        if not p.exists():
            raise SourceError(f"{uri}: no such file or directory")
        yield p
        return
    bucket, prefix = parse_s3_uri(uri)
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    client = read_client(s3 or S3Options())
    tmp = Path(tempfile.mkdtemp(prefix="wg-report-"))
    try:
        _download(client, uri, bucket, prefix, tmp)
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _download(client: Any, uri: str, bucket: str, prefix: str, dest_dir: Path) -> None:
    try:
        n = 0
        # the loader's bounded listing (pages, keys, bytes, time); no endless pagination
        listing = s3_list(client, bucket, prefix, S3Options(max_list_keys=MAX_OBJECTS))
        for obj in listing:
            n += 1
            if n > MAX_OBJECTS:
                raise SourceError(f"{uri}: more than {MAX_OBJECTS} objects under the prefix")
            rel = obj["Key"][len(prefix) :]
            if not rel or rel.endswith("/"):  # the prefix itself, folder markers
                continue
            # A hostile bucket can hold keys like "x/../model.safetensors": refuse the
            # release, as the loader does, never verify a copy that leaves objects out.
            dest = safe_join(dest_dir, rel, f"listing of {uri}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            client.download_file(bucket, obj["Key"], os.fspath(dest))
    except WeightguardError:
        raise
    except Exception as exc:  # botocore errors, in words
        from weightguard._internal.foundation.s3errors import s3_cause

        raise SourceError(f"{uri}: {s3_cause(exc)}") from exc
    if n == 0:
        raise SourceError(f"{uri}: no objects under the prefix")
