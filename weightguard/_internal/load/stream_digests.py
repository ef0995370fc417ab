"""Whole-file and shard digests checked in the load's one pass (models signed by
model_signing alone, without weightguard's chunk digests).

A whole-file (``files`` serialization) or shard (``shards``) digest is a plain
sequential hash of a byte range, so its bytes must reach the hasher in file order,
while the pipeline reads and decrypts records in parallel and in any order.  Each
worker hands over the bytes of a record it finished as a *piece*: a reference to where
those exact bytes already are (the destination tensor for a plain file on the CPU, else
the worker's held read buffer: the ciphertext of an encrypted record).  A per-range
feeder hashes the pieces in order: whichever worker completes the piece the hasher
waits for hashes it and every later piece already there, while the other workers keep
reading.  Different ranges (files, shards) are hashed by different workers at once.

A range is compared (constant time) with its signed digest as soon as its last byte
was hashed; a mismatch raises :class:`IntegrityError` naming the file (and the shard),
which stops the load.  :meth:`StreamCheck.finish` fails unless every range was hashed
whole and matched.  The bytes hashed are the bytes used: nothing is read twice.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from weightguard._internal.signing.hashing import whole_hasher
from weightguard.errors import IntegrityError

__all__ = ["StreamCheck"]

Release = Callable[[], None]


class _Refs:
    """Calls ``release`` once every piece cut from one handed-over buffer was hashed."""

    __slots__ = ("_lock", "_n", "_release")

    def __init__(self, n: int, release: Release | None, lock: threading.Lock) -> None:
        self._n = n
        self._release = release
        self._lock = lock

    def done(self) -> None:
        with self._lock:
            self._n -= 1
            last = self._n == 0
        if last and self._release is not None:
            self._release()


@dataclass
class _Range:
    index: int
    start: int
    end: int
    digest: bytes
    hasher: Any
    cursor: int = 0
    busy: bool = False
    done: bool = False
    pending: dict[int, tuple[memoryview, _Refs]] = field(default_factory=dict)


class StreamCheck:
    """The in-order digests of one file: ``units`` are ``(offset, length, digest)``."""

    def __init__(
        self,
        name: str,
        size: int,
        units: Sequence[tuple[int, int, bytes]],
        algorithm: str,
        head: bytes | bytearray | memoryview = b"",
    ) -> None:
        self.name = name
        self.algorithm = algorithm
        self._lock = threading.Lock()
        self._stopped = False
        self._ranges: list[_Range] = []
        pos = 0
        for i, (off, length, digest) in enumerate(units):
            if off != pos or length < 0 or (length == 0 and size != 0):
                raise IntegrityError(
                    "the signed digest ranges do not cover the file exactly", path=name
                )
            h = whole_hasher(algorithm, size=length, path=name)
            self._ranges.append(_Range(i, off, off + length, bytes(digest), h, cursor=off))
            pos = off + length
        if pos != size or not self._ranges:
            raise IntegrityError(
                f"the signed digest ranges cover {pos} bytes, the file has {size}", path=name
            )
        self._head = head

    def begin(self) -> None:
        """Hash the file's head (the bytes its header was parsed from, read once when
        the file was opened); a range of 0 bytes (an empty file) is checked now."""
        for r in self._ranges:
            if r.start == r.end and not r.done:
                self._finish(r)
        if self._head:
            self.feed(0, memoryview(self._head))

    def feed(self, offset: int, data: memoryview, release: Release | None = None) -> None:
        """Hand over ``data``, the file's bytes at ``offset`` (kept unchanged until
        ``release`` is called, after every range it overlaps hashed it); hashes what is
        in order now.  Raises :class:`IntegrityError` when a range completed and differs."""
        end = offset + len(data)
        hit = [r for r in self._ranges if r.start < end and offset < r.end]
        if self._stopped:
            hit = []
        if not hit:
            if release is not None:
                release()
            return
        refs = _Refs(len(hit), release, self._lock)
        with self._lock:
            for r in hit:
                lo, hi = max(offset, r.start), min(end, r.end)
                if lo < r.cursor or lo in r.pending:
                    raise IntegrityError(  # pragma: no cover - planning invariant
                        f"bytes at offset {lo} handed over twice", path=self.name
                    )
                r.pending[lo] = (data[lo - offset : hi - offset], refs)
        for r in hit:
            self._drain(r)

    def _drain(self, r: _Range) -> None:
        while True:
            with self._lock:
                if r.busy or self._stopped:
                    return  # the worker hashing this range takes the piece when it gets there
                piece = r.pending.pop(r.cursor, None)
                if piece is None:
                    return
                r.busy = True
            view, refs = piece
            try:
                r.hasher.update(view)
            finally:
                with self._lock:
                    r.busy = False
                    r.cursor += len(view)
                refs.done()
            if r.cursor == r.end:
                self._finish(r)

    def _finish(self, r: _Range) -> None:
        ok = hmac.compare_digest(r.hasher.digest(), r.digest)
        r.done = True
        if not ok:
            n = len(self._ranges)
            what = "the file"
            if n > 1:
                what = f"shard {r.index + 1} of {n} (bytes {r.start}-{r.end})"
            raise IntegrityError(
                f"content of {what} differs from the signed {self.algorithm} digest",
                path=self.name,
            )

    def finish(self) -> None:
        """Every range was hashed whole and matched (else :class:`IntegrityError`)."""
        with self._lock:
            short = [r for r in self._ranges if not r.done]
        if short:
            r = short[0]
            raise IntegrityError(  # pragma: no cover - planning invariant
                f"bytes {r.cursor}-{r.end} were not read, so the signed digest could not "
                "be checked",
                path=self.name,
            )

    def clear(self) -> None:
        """Stop: nothing more is hashed (a hasher stops at its next piece) and every held
        reference is dropped (after a failure anywhere in the load)."""
        with self._lock:
            self._stopped = True
            for r in self._ranges:
                r.pending.clear()
