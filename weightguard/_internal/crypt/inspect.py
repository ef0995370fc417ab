"""Inspect: an artifact's header summary, and with ``verify=True`` its header authenticated
with the unwrapped data key (records are not read)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from weightguard._internal.crypt.base import (
    Audit,
    emit,
    key_object,
    open_source,
    read_artifact_header,
    summary,
    unwrap_grouped,
)
from weightguard._internal.crypt.rewrap import artifacts_under
from weightguard._internal.format.layout import (
    ChunkCipher,
)
from weightguard._internal.foundation.keywords import renamed_keywords
from weightguard._internal.foundation.memory import wipe
from weightguard.errors import (
    IntegrityError,
    WeightguardError,
)


@renamed_keywords(key_uri="data_key", allowed_keys="allow_key")
def inspect(
    path: str | os.PathLike[str],
    *,
    verify: bool = False,
    data_key: str | None = None,
    key_options: Mapping[str, Any] | None = None,
    allow_key: Iterable[str] | str | None = None,
    audit: Audit | None = None,
) -> dict[str, Any]:
    """Header summary of an artifact (sizes, key, tensor table unless the header is
    encrypted); for a directory, ``{"files": {name: summary}}``.

    Without a key nothing is authenticated (``"authenticated": False``); with
    ``verify=True`` the data key is unwrapped and the key commitment and header MAC
    are checked (records are not read); the key is chosen as for :func:`decrypt_file`
    (``data_key``, else an allowed header reference), and a refusal is audited.
    """
    p = Path(path)
    if p.is_dir():
        return {
            "files": {
                a.relative_to(p).as_posix(): inspect(
                    a,
                    verify=verify,
                    data_key=data_key,
                    key_options=key_options,
                    allow_key=allow_key,
                    audit=audit,
                )
                for a in artifacts_under(p)
            }
        }
    with open_source(p) as f:
        header = read_artifact_header(f, p)
        size = os.fstat(f.fileno()).st_size
    info = summary(header, p)
    info["file_size"] = size
    info["complete"] = size == header.total_size
    info["authenticated"] = False
    if verify:
        try:
            (dk,) = unwrap_grouped([header], data_key, key_options, allow_key, [str(p)])
            try:
                ChunkCipher(header, dk).wipe()
            finally:
                wipe(dk)
        except WeightguardError as exc:
            event = "tamper.detected" if isinstance(exc, IntegrityError) else "verify.failed"
            emit(
                audit,
                event,
                outcome="denied",
                reason=f"inspect --verify: {exc}",
                object=key_object(header.wrapped_key, p),
            )
            raise
        info["authenticated"] = True
    return info
