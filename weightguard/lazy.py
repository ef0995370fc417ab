"""Lazy, random-access secure reads with safetensors' own API: ``weightguard.safe_open``.

>>> import weightguard
>>> from weightguard.policy import PublicKey
>>> with weightguard.safe_open("model/", "pt", policy=PublicKey.from_file("release.pub")) as f:
...     names = f.keys()
...     embed = f.get_tensor("model.embed_tokens.weight")
...     rows = f.get_slice("lm_head.weight")[: 1024]      # reads only those rows' records

The open is :func:`weightguard.open_model`'s: the signature and policy are checked, the
heads of the weight files are read once and checked against it, and the data keys are
unwrapped (one round trip per key provider), all audited, and those events are on disk
before any tensor is returned (their fsync runs while the first records are read).
After that, a read touches
only the records that hold the requested bytes (a tensor, or for ``get_slice`` the rows
of dimension 0 that the index selects); each record is checked against its signed
digest and its AEAD tag before any of its bytes is returned.  Returned tensors are fresh
memory: a later call never changes them.  Any failure is a typed error from
:mod:`weightguard.errors`, audited, and returns nothing.

Indexing follows safetensors (0.8: Python/torch indexing on the tensor): integers
(negative ones count from the end), slices with positive steps (bounds clamped as in
Python), ``...`` and ``None``; integer lists and tensors read the whole tensor.  What
torch refuses (an integer out of range, a zero or negative step, too many indices, a
float) is refused with :class:`~weightguard.errors.ConfigError` before anything is read.

Models signed with whole-file digests only (``model_signing``, no chunk digests):
nothing of such a file can be checked before all of it was hashed, so the first read
of one of its tensors loads the whole file once through the loader's one pass (every
digest and AEAD tag checked, nothing returned before all matched), keeps the verified
tensors until :meth:`SafeOpen.close` (then zeroes them) and returns copies.  "Lazy"
there means per file: a file none of whose tensors is read is never read.  See
docs/lazy.md.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

from weightguard._internal.foundation.keywords import renamed_keywords
from weightguard.errors import ConfigError, WeightguardError

if TYPE_CHECKING:
    from types import TracebackType

    import torch

    from weightguard.audit import AuditLog
    from weightguard.loader import ModelHandle
    from weightguard.manifest import S3Options

__all__ = ["SafeOpen", "TensorSlice", "safe_open"]

FRAMEWORKS = ("pt", "torch", "np", "numpy")


class TensorSlice:
    """``safe_open(...).get_slice(name)``: shape and dtype now, bytes on indexing."""

    def __init__(self, owner: SafeOpen, name: str) -> None:
        self._owner = owner
        self._name = name
        self._info = owner._info(name)

    def get_shape(self) -> list[int]:
        return list(self._info.shape)

    def get_dtype(self) -> str:
        """safetensors' dtype string (``"F32"``, ``"BF16"`` ...)."""
        return str(self._info.dtype)

    def __getitem__(self, index: Any) -> Any:
        return self._owner._read_slice(self._name, index)

    def __repr__(self) -> str:
        return f"TensorSlice({self._name!r}, shape={self.get_shape()}, dtype={self.get_dtype()})"


class SafeOpen:
    """An open, verified model read lazily; see :func:`safe_open`."""

    @renamed_keywords(key="data_key", allowed_keys="allow_key")
    def __init__(
        self,
        source: str | os.PathLike[str],
        framework: str = "pt",
        device: str = "cpu",
        *,
        policy: Any,
        signature: str | os.PathLike[str] | None = None,
        data_key: Any = None,
        key_options: Mapping[str, Any] | None = None,
        audit: AuditLog | None = None,
        s3: S3Options | None = None,
        allow_key: Iterable[str] | str | None = None,
        workers: int | None = None,
        cache_bytes: int | None = None,
        file: str | None = None,
    ) -> None:
        from weightguard import loader
        from weightguard._internal.load.ranges import DEFAULT_CACHE_BYTES, RangeReader
        from weightguard.audit import AuditLog

        if framework not in FRAMEWORKS:
            raise ConfigError(
                f"framework={framework!r} is not supported by weightguard.safe_open",
                hint="use 'pt' (torch) or 'np' (numpy)",
            )
        self.framework = framework
        self.device = str(device)
        self._own_audit = audit is None
        self._own_handle = True
        self._audit = AuditLog.from_env() if audit is None else audit
        self._closed = False
        self._tensors = 0
        self._whole: dict[str, dict[str, Any]] = {}  # streamed file -> its verified tensors
        self._whole_bytes = 0
        self._whole_lock = threading.Lock()
        self._t0 = time.monotonic()
        try:
            self._handle: ModelHandle = loader.open_model(
                source,
                "cpu",
                policy=policy,
                signature=signature,
                data_key=data_key,
                key_options=key_options,
                audit=self._audit,
                workers=workers,
                s3=s3,
                allow_key=allow_key,
            )
        except BaseException:
            if self._own_audit:
                self._audit.close()
            raise
        files = self._handle._files
        if file is not None:
            files = [f for f in files if f.name == file]
            if not files:
                self._handle.close()
                exc = ConfigError(
                    f"{self._handle._ctx.uri}: {file!r} is not a weight file of the model",
                    hint=f"its weight files: {', '.join(self._handle.files)}",
                )
                self._handle._deny(exc, time.monotonic() - self._t0)
                if self._own_audit:
                    self._audit.close()
                raise exc
        self._files = files
        self._where = {t.name: (f, t) for f in files for t in f.tensors}
        self._reader = RangeReader(
            workers=workers,  # None: the usable cores, counted when first needed
            cache_bytes=DEFAULT_CACHE_BYTES if cache_bytes is None else cache_bytes,
        )
        self._decision = _DurableDecision(self._audit)
        self._walk: _Walk | None = None
        self._first: str | None = None  # the first get_tensor's name (see _predict)

    @classmethod
    def over(
        cls,
        handle: ModelHandle,
        *,
        workers: int | None = None,
        cache_bytes: int | None = None,
    ) -> SafeOpen:
        """Lazy reads on an already opened, verified :class:`~weightguard.loader.ModelHandle`
        (framework loaders that opened the model themselves).  Reads are audited in the
        handle's log; :meth:`close` writes the ``load.ok`` summary and leaves the handle
        (and its log) open for its owner."""
        from weightguard._internal.load.ranges import DEFAULT_CACHE_BYTES, RangeReader

        if handle._closed:
            raise ConfigError("the model handle is closed", hint="open the model again")
        self = cls.__new__(cls)
        self.framework = "pt"
        self.device = "cpu"
        self._own_audit = False
        self._own_handle = False
        self._audit = handle._ctx.audit
        self._closed = False
        self._tensors = 0
        self._whole = {}
        self._whole_bytes = 0
        self._whole_lock = threading.Lock()
        self._t0 = time.monotonic()
        self._handle = handle
        self._files = list(handle._files)
        self._where = {t.name: (f, t) for f in self._files for t in f.tensors}
        self._reader = RangeReader(
            workers=workers,  # None: the usable cores, counted when first needed
            cache_bytes=DEFAULT_CACHE_BYTES if cache_bytes is None else cache_bytes,
        )
        self._decision = _DurableDecision(self._audit)
        self._walk = None
        self._first = None
        return self

    def lazy_tensors(self, names: Iterable[str] | None = None) -> Iterator[tuple[str, Any]]:
        """``(name, tensor)`` pairs whose bytes are read only when used, in file order.

        Each tensor is a :class:`torch.Tensor` (a subclass) with the checkpoint's shape
        and dtype.  ``tensor.narrow(0, start, length)`` reads, checks and decrypts only
        the records holding those rows (what a tensor-parallel rank's column-parallel
        weight loader asks for); any other use reads the whole tensor once, checked,
        and works on that.  Errors are the typed, audited errors of :meth:`get_tensor`.
        """
        self._check_open("lazy_tensors")
        wanted = None if names is None else set(names)
        for name in self.offset_keys():
            if wanted is None or name in wanted:
                f, info = self._lookup(name, "lazy_tensors")
                yield name, _lazy_class()(self, f, info)

    # -- safetensors' API ---------------------------------------------------------------
    def keys(self) -> list[str]:
        """Tensor names, sorted (as safetensors)."""
        self._check_open("keys")
        self._verify_streamed(self._files)
        return sorted(self._where)

    def offset_keys(self) -> list[str]:
        """Tensor names in file order (file by file, by offset), as safetensors."""
        self._check_open("offset_keys")
        self._verify_streamed(self._files)
        return [t.name for f in self._files for t in sorted(f.tensors, key=lambda t: t.begin)]

    def metadata(self) -> dict[str, str] | None:
        """The ``__metadata__`` of the file(s); None when there is none (as safetensors)."""
        self._check_open("metadata")
        self._verify_streamed(self._files)
        found = [f.metadata for f in self._files if f.metadata is not None]
        if not found:
            return None
        out: dict[str, str] = {}
        for m in found:
            out.update(m)
        return out

    def get_tensor(self, name: str) -> Any:
        """The whole tensor ``name``, checked record by record; fresh memory."""
        f, info = self._lookup(name, "get_tensor")
        rows = info.shape[0] if info.shape else 1
        ahead, order = self._predict(name)
        t = self._read_rows(f, info, 0, rows, ahead=ahead, order=order, whole=True)
        self._consumed(f, info)
        return self._finish(t, name)

    def get_slice(self, name: str) -> TensorSlice:
        """A lazy view: ``get_shape()``, ``get_dtype()``, and ``[index]`` reads."""
        self._lookup(name, "get_slice")
        return TensorSlice(self, name)

    # -- weightguard's additions ---------------------------------------------------------
    def get_tensors(self, names: Iterable[str] | None = None) -> dict[str, Any]:
        """Many tensors at once (default: all): every record they touch read once, in
        parallel, through the loader's one pass (as :func:`weightguard.load_file`).

        Tensors of one call may share an allocation (disjoint bytes); none is shared
        with another call or changed by one.
        """
        self._check_open("get_tensors")
        wanted = sorted(self._where) if names is None else list(names)
        for name in wanted:
            self._lookup(name, "get_tensors")
        self._await_decision()
        loaded = self._handle.load(wanted)  # audited by the loader (load.ok / denied)
        return {k: self._finish(v, k) for k, v in loaded.items()}

    @property
    def stats(self) -> dict[str, int]:
        """Records read and checked (``read_ahead`` of them read ahead of a loop of
        ``get_tensor``), bytes read and decrypted, edge-cache hits, tensors."""
        s = self._reader.stats
        return {
            "records_read": s.records_read,
            "bytes_read": s.bytes_read + self._whole_bytes,
            "bytes_decrypted": s.bytes_decrypted,
            "cache_hits": s.cache_hits,
            "read_ahead": s.read_ahead,
            "tensors": self._tensors,
        }

    @property
    def handle(self) -> ModelHandle:
        """The verified :class:`~weightguard.loader.ModelHandle` underneath (side files)."""
        return self._handle

    def close(self) -> None:
        """Audit what was read (``load.ok``), wipe cached plaintext, drop the keys."""
        if self._closed:
            return
        self._closed = True
        try:
            self._decision.wait(quiet=True)  # its thread ends before the log is closed
            self._reader.close()
            for loaded in self._whole.values():
                for t in loaded.values():
                    t.zero_()  # the verified plaintext kept for a streamed file
            self._whole.clear()
            s = self._reader.stats
            self._audit.emit(
                "load.ok",
                object=self._handle._ctx.obj(self._files),
                bytes=s.bytes_read + self._whole_bytes,
                duration_s=time.monotonic() - self._t0,
                tensors=self._tensors,
                records=s.records_read,
                bytes_decrypted=s.bytes_decrypted,
                lazy=True,
            )
        finally:
            if self._own_handle:
                self._handle.close()
            if self._own_audit:
                self._audit.close()

    def __del__(self) -> None:
        # Dropped without close(): the verified tensors kept for a streamed file are
        # zeroed, not freed as they are (the reader and the ciphers wipe their own).
        if getattr(self, "_closed", True):
            return
        for loaded in getattr(self, "_whole", {}).values():
            for t in loaded.values():
                t.zero_()

    def __enter__(self) -> SafeOpen:
        return self

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self._where)} tensors"
        return f"SafeOpen({self._handle._ctx.uri!r}, {state})"

    # -- internals -----------------------------------------------------------------------
    def _deny(self, exc: BaseException, nbytes: int | None = None) -> None:
        """Audit a refused read (the handle's own event shape), even after close; an
        error already audited (by the loader, or a nested call) is not audited again."""
        if getattr(exc, "_weightguard_audited", False):
            return
        if not self._closed or not self._own_audit:
            self._handle._deny(exc, time.monotonic() - self._t0, nbytes)
            return
        from weightguard.audit import AuditLog
        from weightguard.loader import _fail_event

        event, reason = _fail_event(exc)
        log = AuditLog.from_env()
        try:
            log.emit(event, outcome="denied", reason=reason, object=self._handle._ctx.obj())
        except WeightguardError:
            pass  # the caller must see the original error
        finally:
            log.close()
        with contextlib.suppress(AttributeError, TypeError):
            exc.__dict__["_weightguard_audited"] = True

    def _check_open(self, what: str) -> None:
        if self._closed:
            exc = ConfigError(
                f"{self._handle._ctx.uri}: {what}() on a closed safe_open handle",
                hint="use the handle inside its `with` block, or open the model again",
            )
            self._deny(exc)
            raise exc

    def _await_decision(self) -> None:
        """Wait for the open's events to be durable (see :class:`_DurableDecision`); an
        audit failure then refuses the read (fail closed)."""
        self._decision.wait()

    def _info(self, name: str) -> Any:
        return self._where[name][1]

    def _consumed(self, f: Any, info: Any) -> None:
        """``get_tensor`` returned ``info``: a cached record none of whose tensors is
        still to be asked for is dropped from the cache (so a loop keeps the records it
        will need again, not the ones it is done with)."""
        walk = self._walk
        if walk is None or getattr(f, "streamed", False):
            return
        done = []
        for k in _records(f, info):
            left = walk.uses.get((id(f), k), 0) - 1
            walk.uses[(id(f), k)] = left
            if left <= 0:
                done.append(k)
        if done:
            self._reader.release(f, done)

    def _predict(self, name: str) -> tuple[list[tuple[Any, int, int]], Any]:
        """The loop a run of ``get_tensor`` calls is in: ranges of the tensors it will ask
        for next, and its order (``(id(file), begin, end)`` -> position) with this call's
        position; ``([], None)`` when the calls are not a loop.

        A caller that asked for names in ``keys()`` (or ``offset_keys()``) order
        ``READ_AHEAD_AFTER`` times in a row gets the next tensors' records read, checked
        and decrypted ahead, and a record shared by tensors it will still ask for
        decrypted straight into their outputs (none for whole-file-digest files).  Any
        other access pattern reads only what it asks for.  Nothing is tracked before a
        second ``get_tensor`` (an open that reads one tensor pays nothing for this).
        """
        if self._walk is None:
            first, self._first = self._first, name
            if first is None:
                return [], None
            by_offset = [(t.begin, t.name) for f in self._files for t in f.tensors]
            self._walk = _Walk(sorted(self._where), [n for _, n in sorted(by_offset)])
            for f in self._files:  # how many tensors hold bytes of each record
                if not getattr(f, "streamed", False):
                    for t in f.tensors:
                        for k in _records(f, t):
                            self._walk.uses[(id(f), k)] = self._walk.uses.get((id(f), k), 0) + 1
            self._walk.next(first)
            self._consumed(*self._where[first])
        ahead = [
            (f, info.begin, info.end)
            for f, info in (self._where[n] for n in self._walk.next(name))
            if not getattr(f, "streamed", False)
        ]
        return (ahead, self._walk.positions(self._where)) if ahead else ([], None)

    def _lookup(self, name: str, what: str) -> tuple[Any, Any]:
        self._check_open(what)
        found = self._where.get(name)
        if found is None:
            exc = ConfigError(
                f"{self._handle._ctx.uri}: no tensor named {name!r}",
                hint="see .keys() for the names in the model",
            )
            self._deny(exc)
            raise exc
        self._verify_streamed([found[0]])
        return found

    def _finish(self, t: Any, name: str) -> Any:
        self._tensors += 1
        if self.device != "cpu":
            try:
                moved = t.to(self.device)
            except (RuntimeError, ValueError) as exc:
                t.zero_()
                err = ConfigError(f"cannot place tensor {name!r} on {self.device!r}: {exc}")
                self._deny(err)
                raise err from None
            t.zero_()  # no plaintext copy left behind on the host
            t = moved
        if self.framework in ("np", "numpy"):
            return t.numpy()
        return t

    def _read_rows(
        self,
        f: Any,
        info: Any,
        r0: int,
        r1: int,
        *,
        ahead: Any = (),
        order: Any = None,
        whole: bool = False,
    ) -> torch.Tensor:
        """Rows ``[r0, r1)`` of dimension 0 (the whole tensor for a scalar) as a tensor.
        ``whole`` (``get_tensor``): the whole tensor, its output maybe prepared by a loop;
        ``ahead`` and ``order``: the loop's (see :meth:`_predict`)."""
        import torch

        from weightguard._internal.load.plan import torch_dtype

        self._check_open("read")
        shape = tuple(info.shape)
        row = info.nbytes // shape[0] if shape and shape[0] else info.nbytes
        begin, end = info.begin + r0 * row, info.begin + r1 * row
        nbytes = end - begin
        out: torch.Tensor | None = None
        try:
            dt = torch_dtype(info.dtype, path=f.display, tensor=info.name)
            if getattr(f, "streamed", False):  # whole-file digests: see _streamed
                out = torch.empty(nbytes, dtype=torch.uint8)
                kept = self._streamed(f)[info.name].reshape(-1).view(torch.uint8)
                out.copy_(kept[r0 * row : r1 * row])
            elif whole:  # a fresh tensor, never written by the reader again
                out = self._reader.read_whole(f, begin, end, ahead=ahead, order=order)
            else:
                out = torch.empty(nbytes, dtype=torch.uint8)
                if nbytes:
                    view = memoryview(cast(Any, out.numpy())).cast("B")
                    self._reader.read(f, begin, end, view, populate=int(out.data_ptr()))
            self._await_decision()  # the grant is on disk before any byte is returned
        except BaseException as exc:
            if out is not None:
                out.zero_()  # nothing partial, nothing unaudited, left in it
            self._deny(exc, nbytes)
            raise
        new_shape = ((r1 - r0), *shape[1:]) if shape else ()
        return out.view(dt).reshape(new_shape)

    def _verify_streamed(self, files: list[Any]) -> None:
        """Files signed with whole-file digests: their header (names, shapes, dtypes,
        metadata) is known to be the signed one only once the whole file was checked, so
        nothing read from it is answered before that."""
        for f in files:
            if getattr(f, "streamed", False):
                try:
                    self._streamed(f)
                except BaseException as exc:
                    self._deny(exc)
                    raise

    def _streamed(self, f: Any) -> dict[str, Any]:
        """The tensors of a file signed with whole-file (or shard) digests only.

        Nothing of such a file can be checked before all of it was hashed, so its first
        read loads the whole file once through the loader's one pass (every digest and
        AEAD tag checked, nothing returned before all matched); the verified tensors are
        kept until :meth:`close` (then zeroed) and every read returns a copy.
        """
        with self._whole_lock:
            loaded = self._whole.get(f.name)
            if loaded is None:
                loaded = self._handle.load([t.name for t in f.tensors])
                self._whole[f.name] = loaded
                self._whole_bytes += int(f.source.size)
            return loaded

    def _read_slice(self, name: str, index: Any) -> Any:
        import torch

        from weightguard._internal.load.plan import torch_dtype

        f, info = self._lookup(name, "get_slice()[...]")
        shape = tuple(info.shape)
        try:
            dt = torch_dtype(info.dtype, path=f.display, tensor=name)
            if isinstance(index, str | bytes):
                raise TypeError("a string is not an index")
            torch.empty(shape, dtype=dt, device="meta")[index]  # validate: nothing read yet
        except (IndexError, ValueError, TypeError) as exc:
            err = ConfigError(
                f"{self._handle._ctx.uri}: cannot index tensor {name!r} of shape "
                f"{list(shape)} with {index!r}: {exc}",
                hint="use integers, slices with a positive step, ... and None "
                "(as safetensors' get_slice)",
            )
            self._deny(err)
            raise err from None
        except WeightguardError as exc:
            self._deny(exc)
            raise
        r0, r1, rest = _dim0_rows(index, shape)
        part = self._read_rows(f, info, r0, r1)
        try:
            result = part[rest]
        except (IndexError, ValueError, TypeError, RuntimeError) as exc:  # tensor indices
            part.zero_()
            err = ConfigError(
                f"{self._handle._ctx.uri}: cannot index tensor {name!r} with {index!r}: {exc}"
            )
            self._deny(err)
            raise err from None
        return self._finish(result, name)


READ_AHEAD_AFTER = 2  # names in order before get_tensor reads ahead
READ_AHEAD_NAMES = 32  # next names offered to the reader (it reads a few records, if room)


class _Walk:
    """Tracks whether ``get_tensor`` calls follow ``keys()`` or file order."""

    def __init__(self, *orders: list[str]) -> None:
        self._orders = [(names, {n: i for i, n in enumerate(names)}) for names in orders]
        self.uses: dict[tuple[int, int], int] = {}  # (file, record) -> tensors not yet read
        self._ranges: dict[int, dict[Any, int]] = {}  # order -> its tensors' positions
        self._last: str | None = None
        self._order: int | None = None
        self._streak = 0

    def next(self, name: str) -> list[str]:
        """Record a call for ``name``; the names expected next (none unless a walk)."""
        last, self._last = self._last, name
        found = None
        if last is not None:  # the order being followed first: a step both orders share
            for i in sorted(range(len(self._orders)), key=lambda i: i != self._order):
                pos = self._orders[i][1]
                if pos.get(last, -2) + 1 == pos.get(name):
                    found = i
                    break
        self._streak = self._streak + 1 if found is not None and found == self._order else 0
        self._order = found
        if found is None or self._streak < READ_AHEAD_AFTER - 1:
            return []
        names, pos = self._orders[found]
        at = pos[name] + 1
        return names[at : at + READ_AHEAD_NAMES]

    def positions(self, where: Mapping[str, tuple[Any, Any]]) -> tuple[dict[Any, int], int]:
        """The current order as ``(id(file), begin, end)`` -> position (made once per
        order), and the last name's position in it."""
        assert self._order is not None and self._last is not None
        names, pos = self._orders[self._order]
        ranges = self._ranges.get(self._order)
        if ranges is None:
            ranges = self._ranges[self._order] = {
                (id(f), info.begin, info.end): i
                for i, (f, info) in enumerate(where[n] for n in names)
            }
        return ranges, pos[self._last]


class _DurableDecision:
    """The open's audit events (``load.start``, ``verify.ok``, ``key.unwrap``: the
    decision to serve reads) are written at once by the loader and left for the next
    durable event to ``fsync``.  A lazy handle returns tensors long before its
    ``load.ok`` (at close), so the open makes them durable itself: one ``flush`` of the
    log, run in a thread while the first records are read, hashed and decrypted, and
    waited for before any tensor is returned.  Only for a log whose sinks sync every
    event (the default): with ``sync="batch"``/``"none"`` the caller chose fewer fsyncs.
    """

    def __init__(self, audit: Any) -> None:
        self._audit = audit
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if any(getattr(s, "sync", None) == "event" for s in getattr(audit, "sinks", ())):
            self._thread = threading.Thread(target=self._run, name="wg-audit-sync", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self._audit.flush()
        except BaseException as exc:  # raised to the reader (fail closed)
            self._error = exc

    def wait(self, *, quiet: bool = False) -> None:
        t = self._thread
        if t is not None:
            t.join()
            self._thread = None
        if self._error is not None and not quiet:
            raise self._error


def _records(f: Any, info: Any) -> range:
    """The data records holding a tensor's bytes."""
    chunk = f.geometry.chunk
    return (
        range(info.begin // chunk + 1, (info.end - 1) // chunk + 2)
        if info.end > info.begin
        else range(0)
    )


def _dim0_rows(index: Any, shape: tuple[int, ...]) -> tuple[int, int, Any]:
    """Rows ``[r0, r1)`` of dimension 0 that ``index`` touches, and the index to apply
    to those rows.  Anything but an integer or a slice on dimension 0: every row."""
    whole = (0, shape[0] if shape else 1, index)
    if not shape:
        return whole
    idx = index if isinstance(index, tuple) else (index,)
    simple = all(e is None or e is Ellipsis or isinstance(e, slice) or _is_int(e) for e in idx)
    if not simple:
        return whole
    consuming = sum(1 for e in idx if e is not None and e is not Ellipsis)
    for pos, e in enumerate(idx):
        if e is None:
            continue
        if e is Ellipsis:
            if len(shape) - consuming > 0:
                return whole  # the ellipsis covers dimension 0
            continue
        n = shape[0]
        if _is_int(e):
            i = int(e) + (n if int(e) < 0 else 0)
            return i, i + 1, (*idx[:pos], 0, *idx[pos + 1 :])
        start, stop, step = e.indices(n)
        count = len(range(start, stop, step))
        if count == 0:
            return 0, 0, (*idx[:pos], slice(0, 0), *idx[pos + 1 :])
        last = start + (count - 1) * step
        return start, last + 1, (*idx[:pos], slice(0, None, step), *idx[pos + 1 :])
    return whole


def _is_int(e: Any) -> bool:
    return isinstance(e, int) and not isinstance(e, bool)  # x[True] adds a dimension


_LAZY_CLASS: Any = None


_META_PROPERTIES = (
    "shape", "dtype", "device", "ndim", "layout", "requires_grad", "is_cuda", "is_meta",
    "is_sparse", "is_quantized", "nbytes", "itemsize",
)  # fmt: skip
# a fresh read is contiguous, like the wrapper: stride and is_contiguous answer the same
_META_METHODS = ("size", "dim", "numel", "element_size", "__len__", "stride", "is_contiguous")


def _meta_functions(torch: Any) -> set[Any]:
    """Tensor functions a lazy tensor answers from its shape and dtype, reading nothing."""
    t = torch.Tensor
    return {getattr(t, a).__get__ for a in _META_PROPERTIES} | {
        getattr(t, a) for a in _META_METHODS
    }


def _narrow_rows(lazy: Any, args: Any, kwargs: Any) -> Any:
    """``narrow(0, start, length)`` of a lazy tensor not read yet: those rows only (a
    fresh, checked tensor); None for any other narrow (the caller reads it all)."""
    params = [*args[1:], *(kwargs[k] for k in ("dim", "start", "length") if k in kwargs)]
    owner, f, info = lazy._wg
    if len(params) != 3 or lazy._wg_full is not None or not info.shape:
        return None
    dim, start, length = (int(p) for p in params)
    n = info.shape[0]
    start = start + n if start < 0 else start
    if dim not in (0, -len(info.shape)) or start < 0 or not 0 <= length <= n - start:
        return None
    return owner._finish(owner._read_rows(f, info, start, start + length), info.name)


def _lazy_class() -> Any:
    """The lazy tensor type, built on first use (torch is imported only then)."""
    global _LAZY_CLASS
    if _LAZY_CLASS is not None:
        return _LAZY_CLASS
    import torch
    from torch.utils._pytree import tree_map

    from weightguard._internal.load.plan import torch_dtype

    meta = _meta_functions(torch)

    class LazyTensor(torch.Tensor):
        """A checkpoint tensor not read yet: shape and dtype now; ``narrow(0, ...)``
        reads only those rows; anything else reads (once) and uses the whole tensor."""

        _wg: tuple[Any, Any, Any]
        _wg_full: Any

        @staticmethod
        def __new__(cls, owner: SafeOpen, f: Any, info: Any) -> Any:
            dt = torch_dtype(info.dtype, path=f.display, tensor=info.name)
            t = torch.Tensor._make_wrapper_subclass(
                cls, tuple(info.shape), dtype=dt, device=torch.device("cpu")
            )
            t._wg = (owner, f, info)
            t._wg_full = None
            return t

        def _wg_all(self) -> Any:
            if self._wg_full is None:
                owner, f, info = self._wg
                rows = info.shape[0] if info.shape else 1
                self._wg_full = owner._finish(owner._read_rows(f, info, 0, rows), info.name)
            return self._wg_full

        def __repr__(self, *args: Any, **kwargs: Any) -> str:  # type: ignore[override]
            info = self._wg[2]
            return f"LazyTensor({info.name!r}, shape={list(info.shape)}, dtype={info.dtype})"

        @classmethod
        def __torch_function__(
            cls, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            kwargs = kwargs or {}
            if func in (torch.Tensor.narrow, torch.narrow) and args and isinstance(args[0], cls):
                rows = _narrow_rows(args[0], args, kwargs)
                if rows is not None:
                    return rows
            if func in meta:  # shape, dtype ...: answered without reading
                with torch._C.DisableTorchFunctionSubclass():
                    return func(*args, **kwargs)
            # anything else works on the whole tensor, read once and checked
            return func(*tree_map(cls._wg_real, args), **tree_map(cls._wg_real, kwargs))

        @classmethod
        def __torch_dispatch__(  # type: ignore[override]
            cls, func: Any, types: Any, args: Any = (), kwargs: Any = None
        ) -> Any:
            return func(*tree_map(cls._wg_real, args), **tree_map(cls._wg_real, kwargs or {}))

        @classmethod
        def _wg_real(cls, x: Any) -> Any:
            return x._wg_all() if isinstance(x, cls) else x

    _LAZY_CLASS = LazyTensor
    return LazyTensor


@renamed_keywords(key="data_key", allowed_keys="allow_key")
def safe_open(
    source: str | os.PathLike[str],
    framework: str = "pt",
    device: str = "cpu",
    *,
    policy: Any,
    signature: str | os.PathLike[str] | None = None,
    data_key: Any = None,
    key_options: Mapping[str, Any] | None = None,
    audit: AuditLog | None = None,
    s3: S3Options | None = None,
    allow_key: Iterable[str] | str | None = None,
    workers: int | None = None,
    cache_bytes: int | None = None,
    file: str | None = None,
) -> SafeOpen:
    """Open a model for lazy, verified reads with safetensors' ``safe_open`` API.

    ``source``: a ``.safetensors`` file (encrypted or plain), a model directory (its
    index, or its signed top-level shards), or the same on S3.  ``policy``,
    ``signature``, ``data_key``, ``key_options``, ``audit``, ``s3`` and ``allow_key`` are
    :func:`weightguard.open_model`'s.  ``device``: where returned tensors go (records
    are decrypted on the host; for device-side decryption use ``open_model(...).load``).
    ``workers``: threads reading the records of one request (default: usable CPUs).
    ``cache_bytes``: budget of the private cache of verified records (records shared
    by two tensors, and those a loop of ``get_tensor`` in ``keys()`` or file order has
    read ahead), default 32 MiB; 0 turns it off (and reading ahead with it).  ``file``: of a model
    directory, serve only this weight file (as safetensors opens one file).
    """
    return SafeOpen(
        source,
        framework,
        device,
        policy=policy,
        signature=signature,
        data_key=data_key,
        key_options=key_options,
        audit=audit,
        s3=s3,
        allow_key=allow_key,
        workers=workers,
        cache_bytes=cache_bytes,
        file=file,
    )
