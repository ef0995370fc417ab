"""The unit of a load: one signed chunk (an AEAD record when encrypted) and where its
plaintext goes; shared by the pipeline that reads and checks it and the copiers that
place it, so neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Record:
    index: int  # chunk index: signed digest index and AEAD record index
    src_off: int  # offset in the source file
    src_len: int  # bytes read from the source (ciphertext incl. tag, or plaintext)
    seg: int  # destination segment of the file
    dst_off: int  # offset inside the segment
    dst_len: int  # plaintext bytes
    digest: bytes | None  # signed chunk digest of the source bytes; None only when unsafe
    # (offset in the record's plaintext, offset in the segment, length) of each wanted
    # tensor's bytes, when the copier places tensors at aligned offsets
    pieces: tuple[tuple[int, int, int], ...] = ()
    # read and hashed for the file's streamed digest only (no wanted tensor in it)
    hash_only: bool = False
