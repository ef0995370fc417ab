"""Secure loading: one pass of verify + decrypt, streaming into CPU or CUDA memory.

>>> from weightguard import load_file
>>> from weightguard.policy import PublicKey
>>> tensors = load_file("s3://models/llama/model.safetensors", "cuda:0",
...                     policy=PublicKey.from_file("release.pub"))

Every byte of the artifact is read once, hashed and compared with the signed
per-chunk digest before it is used, AEAD-decrypted into the destination (CPU tensors
directly; CUDA: ciphertext through a pinned staging ring, decrypted on the GPU by a
Triton kernel so the host never holds plaintext weights, or ``decrypt_on="cpu"``), and
nothing is returned unless every check passed.  A model signed by OpenSSF
model_signing alone (its whole-file or shard digests, sha256 / blake2b / blake3, no
chunk digests) is verified in the same single read: each file's or shard's digest is
computed in file order as its records stream by (files and shards in parallel), over
the released bytes (the ciphertext of an encrypted file), and the load succeeds only
when all of them matched.  On any failure (tamper,
signature/policy, key denial, source error, out of memory, KeyboardInterrupt) everything
written so far is zeroed and freed, an
audit event is written and one typed error (from :mod:`weightguard.errors`) names the
file and chunk.

Sources: a local ``.safetensors`` file (plain or encrypted), a local model directory
(shards, ``model.safetensors.index.json``), or the same on S3 (``s3://bucket/key`` or
``s3://bucket/prefix/``).

Signature location (default): ``<file>.sig`` next to a single file, ``model.sig`` in a
model directory or S3 prefix; pass ``signature=`` to override (local path).

A policy is required: ``policy=PublicKey(...)`` etc. from :mod:`weightguard.policy`,
or ``policy=UnsafeNoVerification()`` to skip signature checks (AEAD still authenticates
encrypted artifacts; plain files are then loaded unchecked).

Performance: ``WEIGHTGUARD_HUGE_PAGES=1`` backs CPU destinations with transparent huge
pages (``madvise``).  First-touch page faults of the destination cost about as much as
the AES-GCM pass with 4 KiB pages; on bare metal huge pages remove most of that, but on
VMs that report free memory to the host (virtio-balloon free page reporting) the first
touch of fresh huge pages is slower, so it is off by default.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weightguard._internal.devices import observe
from weightguard._internal.devices.pinned import release_pinned_memory
from weightguard._internal.foundation.extras import require
from weightguard._internal.foundation.keywords import renamed_keywords
from weightguard._internal.foundation.memory import wipe
from weightguard._internal.load.copiers import DEFAULT_RING_BYTES, Copier, copier_for
from weightguard._internal.load.model_files import (
    ModelFile,
    SignedDigests,
    check_signed_bytes,
    check_streamed,
    digests_for,
    open_file,
    select_files,
)
from weightguard._internal.load.pipeline import FileJob, Progress, Record, run_pipeline
from weightguard._internal.load.plan import Placement, build_tensors, plan
from weightguard._internal.load.sources import Location, open_location
from weightguard._internal.signing.location import PRIMARY_SIGNATURE, signature_name
from weightguard.errors import (
    ConfigError,
    CoverageError,
    DeviceError,
    FormatError,
    IntegrityError,
    SourceError,
    UnsafeOptionRequired,
    VerificationError,
    WeightguardError,
    WrongKeyError,
)
from weightguard.manifest import S3Options

# What every load needs is imported with this module, not inside the first call, so the
# first load_file costs what later ones do; `import weightguard` (the CLI) stays cheap
# because it does not import this module.  Optional back ends (boto3, hvac, sigstore,
# model_signing, triton, torch.cuda), X.509 chains and what a load never runs (the audit
# log's verification, signing) still load only when used (tests/arch/test_import_path.py).
_LOAD_MODULES = (
    "weightguard.audit",
    "weightguard.policy",
    "weightguard.verifying",
    "weightguard._internal.format.layout",
    "weightguard._internal.format.hf_cache",  # every local source (HF cache snapshot links)
    "weightguard._internal.keys.providers",
    "weightguard._internal.keys.unwrap",
    "weightguard._internal.signing.signers.ec_key",  # key bundles (X.509, Sigstore: on use)
    "weightguard._internal.foundation.cpus",
    "weightguard._internal.devices.cpu",
    "weightguard._internal.devices.aes_ctr_triton",
    "cryptography.hazmat.backends.openssl",  # ECDSA verification imports it on first use
)
for _name in _LOAD_MODULES:
    importlib.import_module(_name)
with contextlib.suppress(ImportError):  # the default chunk digest; a load reports it missing
    importlib.import_module("blake3")

if TYPE_CHECKING:
    from types import TracebackType

    import torch

    from weightguard.audit import AuditLog

__all__ = [
    "LoadOptions",
    "ModelHandle",
    "S3Options",
    "load_file",
    "load_model",
    "open_model",
    "release_pinned_memory",
]

DECRYPT_ON = ("auto", "gpu", "cpu")


@dataclass(frozen=True)
class LoadOptions:
    """What every entry point (:func:`open_model`, :func:`load_file`, :func:`load_model`)
    hands the loader besides the source, device and policy: one object, its defaults in
    one place.  The entry points keep their keyword arguments (documented on
    :func:`open_model`); a test holds their names and defaults to these fields."""

    signature: str | os.PathLike[str] | None = None
    data_key: Any = None
    key_options: Mapping[str, Any] | None = None
    audit: AuditLog | None = None
    workers: int | None = None
    ring_bytes: int = DEFAULT_RING_BYTES
    s3: S3Options | None = None
    decrypt_on: str = "auto"
    allow_key: Iterable[str] | str | None = None


def _before_record() -> Callable[[FileJob, Record], None] | None:
    hook = observe.current().before_record
    return (lambda j, r: hook(j.name, r.index)) if hook else None


def _cleanup(copier: Copier | None) -> list[BaseException]:
    """discard() then close(), each run even if the other failed; their errors."""
    errors: list[BaseException] = []
    if copier is None:
        return errors
    for step in (copier.discard, copier.close):
        try:
            step()
        except BaseException as exc:  # the load's own error is what the caller sees
            errors.append(exc)
    return errors


# eq=False: working state, compared by identity (one generated method less to define on
# the loader's import path, issue 25)
@dataclass(eq=False)
class _Ctx:
    uri: str
    device: str
    audit: AuditLog
    own_audit: bool
    signer: str | None = None
    bundle_digest: str | None = None
    keys: list[dict[str, Any]] = field(default_factory=list)

    def obj(self, files: Iterable[ModelFile] = ()) -> dict[str, Any]:
        files = list(files)
        o: dict[str, Any] = {"uri": self.uri, "device": self.device}
        if self.bundle_digest:
            o["digest"] = self.bundle_digest
        elif files:
            o["digest"] = ",".join(f.header_digest for f in files)
        if self.signer:
            o["signer"] = self.signer
        if self.keys:
            o["key_id"] = ",".join(sorted({k["key_id"] for k in self.keys}))
            # A key file has no version: leave the field out rather than write "None".
            versions = sorted(
                {str(k["key_version"]) for k in self.keys if k["key_version"] is not None}
            )
            if versions:
                o["key_version"] = ",".join(versions)
            o["key_provider"] = ",".join(sorted({k["provider"] for k in self.keys}))
        return o


def _is_unsafe(policy: Any) -> bool:
    try:
        from weightguard.policy import UnsafeNoVerification
    except ImportError:  # pragma: no cover - policy module is part of the package
        return False
    return isinstance(policy, UnsafeNoVerification)


def _fail_event(exc: BaseException) -> tuple[str, str]:
    if isinstance(exc, IntegrityError):
        return "tamper.detected", f"{type(exc).__name__}: {exc.message}"
    if isinstance(exc, KeyboardInterrupt):
        return "load.denied", "cancelled (KeyboardInterrupt)"
    if isinstance(exc, WeightguardError):
        return "load.denied", f"{type(exc).__name__}: {exc.message}"
    return "load.denied", f"{type(exc).__name__}"


# --------------------------------------------------------------------------- signature and keys


def _verify_signature(
    loc: Location,
    policy: Any,
    signature: str | os.PathLike[str] | None,
    *,
    optional: bool = False,
    layout: Any = None,
) -> tuple[str | None, str | None, dict[str, Any]] | None:
    """Check signature, policy and coverage (no hashing); (signer, digest, signed files).

    ``optional`` (the unsafe policy): a missing default signature means "unverified".
    """
    from weightguard import verifying

    if signature is None and optional:
        default = signature_name(None if loc.is_dir else loc.names()[0])
        if not loc.sibling_exists(default):
            return None

    if signature is not None:
        sig_path = Path(signature)
        if not sig_path.is_file():
            raise VerificationError(f"signature {sig_path} not found")
        sig_bytes: bytes | None = None
    else:
        default = signature_name(None if loc.is_dir else loc.names()[0])
        local = loc.local_file(default)
        if local is not None:
            if not local.is_file():
                raise VerificationError(
                    f"{loc.uri}: no signature found (looked for {local})",
                    hint="sign the model with `weightguard sign`, give the bundle's path "
                    "with --signature, or load it unverified with --unsafe-no-verification",
                )
            sig_path, sig_bytes = local, None
        else:
            if not loc.sibling_exists(default):
                raise VerificationError(
                    f"{loc.uri}: no signature {default} next to the model",
                    hint="push the signature with the model, or give its path (--signature)",
                )
            sig_bytes = loc.read_small(default, limit=64 * 1024 * 1024)
            sig_path = Path()
    try:
        if loc.local_path is not None:
            manifest = verifying.verify_bundle(
                loc.local_path,
                sig_path,
                policy,
                hash_files=False,
                allow_symlinks=bool(layout and layout.allow_symlinks),
                allow_unsigned=layout.allow_unsigned if layout else (),
            )
        else:
            # Remote model: signature, policy and coverage against the listing (sizes);
            # the bytes are checked chunk by chunk as they stream.
            if loc.is_dir:
                listing = {n: loc.size_of(n) for n in loc.names() if n != PRIMARY_SIGNATURE}
            else:
                listing = {".": loc.size_of(loc.names()[0])}
            sig: bytes | Path = sig_bytes if sig_bytes is not None else sig_path
            manifest = verifying.verify_bundle(
                loc.uri,
                sig,
                policy,
                hash_files=False,
                listing=listing,
                cosignatures=verifying.remote_cosignatures(loc, policy),  # CoSigned policies
            )
    except IntegrityError as exc:
        if exc.path in (None, "."):  # name the model the user gave
            raise IntegrityError(
                f"{loc.uri}: {exc.message}", chunk=exc.chunk, hint=exc.hint
            ) from None
        raise
    signer = getattr(manifest, "signer", None)
    bundle_digest = getattr(manifest, "bundle_digest", None)
    return (
        (str(signer) if signer else None),
        (str(bundle_digest) if bundle_digest else None),
        dict(manifest.files),
    )


Differs = Callable[[list[ModelFile], BaseException], None]


def _unwrap_keys(
    files: list[ModelFile],
    key: Any,
    key_options: Mapping[str, Any] | None,
    ctx: _Ctx,
    allowed_keys: Iterable[str] | str | None = None,
    differs: Differs | None = None,
) -> None:
    """One unwrap round trip per provider; build ciphers; wipe the data keys.

    ``differs(files, exc)`` raises :class:`IntegrityError` when one of ``files`` (whose
    header was used before its whole-file digest could be checked) differs from its
    signature; called before a refusal the header's content may have caused stands.
    """
    from weightguard._internal.keys.unwrap import unwrap_groups

    enc = [f for f in files if f.encrypted]
    if not enc:
        return

    def refused(indexes: list[int], exc: BaseException) -> None:
        if differs is not None:
            differs([enc[i] for i in indexes], exc)

    groups = unwrap_groups(
        [f.artifact.wrapped_key for f in enc],
        key=key,
        key_options=key_options,
        allowed_keys=allowed_keys,
        where=[f.display for f in enc],
        refused=refused,
    )
    t0 = time.monotonic()
    round_trips = 0
    for unwrapped in groups:
        round_trips += 1
        group = [enc[i] for i in unwrapped.indexes]
        data_keys = unwrapped.data_keys
        try:
            for f, dk in zip(group, data_keys, strict=True):
                try:
                    f.unlock(dk)
                except WrongKeyError as exc:  # key commitment: wrong key, or changed header
                    if differs is not None:
                        differs([f], exc)
                    raise
        finally:
            for dk in data_keys:
                wipe(dk)
        wk = group[0].artifact.wrapped_key
        ctx.keys.append({"key_id": wk.uri, "key_version": wk.key_version, "provider": wk.provider})
    ctx.audit.emit(
        "key.unwrap",
        object=ctx.obj(files),
        duration_s=time.monotonic() - t0,
        files=len(enc),
        round_trips=round_trips,
    )
    for f in enc:  # the (authenticated) original safetensors header, from record 0
        f.open_header()


def _differs(
    loc: Location, signed: Mapping[str, SignedDigests] | None
) -> Callable[[list[str], BaseException], None]:
    """``differs(names, exc)``: for a refusal ``exc`` caused by files ``names``.

    A file checked by whole-file digests is parsed (and an artifact's key reference
    used) before its digest can be checked: when that refuses the load, the file is
    hashed to say whether it was changed (IntegrityError) or signed as it is (the
    refusal stands).
    """

    def differs(names: list[str], exc: BaseException) -> None:
        for name in names:
            sd = signed.get(name) if signed is not None else None
            if sd is not None and sd.units is not None:
                try:
                    check_streamed(loc, name, sd)
                except IntegrityError as tamper:
                    raise tamper from exc

    return differs


def _plan_files(
    files: list[ModelFile], wanted: set[str] | None, align: int
) -> tuple[list[FileJob], list[dict[str, Placement]], list[int], list[int]]:
    """One pipeline job per file, their segments numbered across files:
    ``(jobs, placements, each file's first segment, all segments' sizes)``."""
    jobs: list[FileJob] = []
    placements: list[dict[str, Placement]] = []
    seg_base: list[int] = []
    all_segments: list[int] = []
    for f in files:
        records, segments, place = plan(
            f.geometry,
            f.tensors,
            None if wanted is None else wanted & {t.name for t in f.tensors},
            align=align,
        )
        base = len(all_segments)
        if base:  # a later file's segments follow the earlier files' (6 us a record)
            records = [
                r if r.hash_only else dataclasses.replace(r, seg=r.seg + base) for r in records
            ]
        seg_base.append(base)
        all_segments.extend(segments)
        jobs.append(f.job(records, segments))
        placements.append(place)
    return jobs, placements, seg_base, all_segments


def _rebased(place: dict[str, Placement], base: int) -> dict[str, Placement]:
    """A file's placements with its segments numbered from ``base`` (the first file's,
    ``base`` 0, as they are: not rebuilt)."""
    if not base:
        return place
    return {
        k: Placement(p.seg + base if p.seg >= 0 else -1, p.offset, p.info) for k, p in place.items()
    }


# --------------------------------------------------------------------------- handle


class ModelHandle:
    """An opened, verified model: list tensors, load all or a subset.

    Opening reads and checks each file's header (against the signature), unwraps the
    data keys in one round trip per key provider and keeps the AEAD ciphers until
    :meth:`close` (use it as a context manager).  :meth:`load` reads only the records
    the requested tensors touch.

    A file signed by model_signing alone (whole-file or shard digests, no weightguard
    chunk digests) is the exception: its header is parsed at opening and checked, with
    every other byte of it, by each :meth:`load` that touches it, which reads and hashes
    the whole file (see :meth:`load`).
    """

    def __init__(
        self,
        source: str | os.PathLike[str],
        device: str,
        *,
        policy: Any,
        options: LoadOptions,
    ) -> None:
        if policy is None:
            raise UnsafeOptionRequired(
                "a verification policy is required to load a model",
                hint="pass policy=PublicKey.from_file(...) (see weightguard.policy), or "
                "policy=UnsafeNoVerification() to load without checking the signature",
            )
        from weightguard.audit import AuditLog

        self.device = str(device)
        self._options = options
        audit = options.audit
        self._workers = options.workers
        self._ring_bytes = options.ring_bytes
        self._decrypt_on = options.decrypt_on
        self._files: list[ModelFile] = []
        self._closed = False
        self._signed_all: dict[str, Any] | None = None
        own = audit is None
        self._ctx = _Ctx(
            uri=os.fspath(source),
            device=self.device,
            audit=AuditLog.from_env() if audit is None else audit,
            own_audit=own,
        )
        self._t0 = time.monotonic()
        self._ctx.audit.emit("load.start", object=self._ctx.obj())
        try:
            self._open(source, policy, options)
        except BaseException as exc:
            self._deny(exc, time.monotonic() - self._t0)
            self.close()
            raise

    def _open(self, source: str | os.PathLike[str], policy: Any, options: LoadOptions) -> None:
        """Signature first: nothing read from the model (index, listing, headers)
        chooses what is loaded until it has been checked against it.  Then the files it
        names (each head checked), their data keys, and which file holds each tensor."""
        if options.decrypt_on not in DECRYPT_ON:
            raise ConfigError(
                f"decrypt_on={options.decrypt_on!r} is not one of {', '.join(DECRYPT_ON)}"
            )
        loc = open_location(source, s3=options.s3)
        self._location = loc
        self._unsafe = _is_unsafe(policy)
        self._verify(loc, policy, options.signature)
        names = select_files(loc, self._signed_all)
        signed: dict[str, SignedDigests] | None = None
        if self._signed_all is not None:
            signed = digests_for(loc, names, self._signed_all)
        differs = _differs(loc, signed)
        self._open_files(loc, names, signed, differs)
        if signed is not None:
            self._ctx.audit.emit("verify.ok", object=self._ctx.obj(self._files))
        _unwrap_keys(
            self._files,
            options.data_key,
            options.key_options,
            self._ctx,
            options.allow_key,
            lambda fs, exc: differs([f.name for f in fs], exc),
        )
        self._where = self._tensor_index(loc, differs)

    def _verify(self, loc: Location, policy: Any, signature: str | os.PathLike[str] | None) -> None:
        """Signature, policy and coverage (no hashing yet): who signed, what it covers."""
        layout = None
        if loc.local_path is not None:  # HF cache snapshots: links must stay in the repo
            from weightguard._internal.format.hf_cache import local_layout

            layout = local_layout(loc.local_path, is_dir=loc.is_dir)
        verified = _verify_signature(loc, policy, signature, optional=self._unsafe, layout=layout)
        if verified is not None:
            self._ctx.signer, self._ctx.bundle_digest, self._signed_all = verified

    def _open_files(
        self,
        loc: Location,
        names: list[str],
        signed: dict[str, SignedDigests] | None,
        differs: Callable[[list[str], BaseException], None],
    ) -> None:
        """Each weight file's head read once and checked against the signature."""
        for name in names:
            try:
                self._files.append(open_file(loc, name, signed[name] if signed else None))
            except FormatError as exc:
                differs([name], exc)
                raise

    def _tensor_index(
        self, loc: Location, differs: Callable[[list[str], BaseException], None]
    ) -> dict[str, ModelFile]:
        """Which file holds each tensor; a tensor in two files is refused."""
        where: dict[str, ModelFile] = {}
        for f in self._files:
            for t in f.tensors:
                if t.name in where:
                    both = [where[t.name].name, f.name]
                    dup = FormatError(
                        f"{loc.uri}: tensor {t.name!r} is in both {both[0]} and {f.name}"
                    )
                    differs(both, dup)
                    raise dup
                where[t.name] = f
        return where

    def _deny(
        self,
        exc: BaseException,
        duration: float,
        nbytes: int | None = None,
        cleanup: list[BaseException] | None = None,
    ) -> None:
        event, reason = _fail_event(exc)
        if cleanup:
            reason += f" (cleanup failed: {', '.join(_fail_event(e)[1] for e in cleanup)})"
        obj = self._ctx.obj(self._files)
        if isinstance(exc, IntegrityError):
            if exc.path:
                obj["file"] = exc.path
            if exc.chunk is not None:
                obj["chunk"] = exc.chunk
        with contextlib.suppress(WeightguardError):  # the caller must see the original error
            self._ctx.audit.emit(
                event,
                outcome="denied",
                reason=reason,
                object=obj,
                bytes=nbytes,
                duration_s=duration,
            )
        with contextlib.suppress(AttributeError, TypeError):  # audited once (see refuse)
            exc.__dict__["_weightguard_audited"] = True

    def refuse(self, exc: BaseException) -> None:
        """Audit ``exc``, a refusal raised by the caller while this handle is open (an
        integration's own checks of the verified files), as the handle audits its own
        (``load.denied`` / ``tamper.detected``); an error already audited is skipped."""
        if not getattr(exc, "_weightguard_audited", False):
            self._deny(exc, time.monotonic() - self._t0)

    def keys(self) -> list[str]:
        """Names of every tensor in the model (sorted)."""
        return sorted(self._where)

    def metadata(self) -> dict[str, str] | None:
        """The header's ``__metadata__``, as ``safetensors.safe_open(...).metadata()``
        returns it: None when the file has none.  For a model of several files, their
        entries together (None when none has any)."""
        found = [f.metadata for f in self._files if f.metadata is not None]
        if not found:
            return None
        out: dict[str, str] = {}
        for m in found:
            out.update(m)
        return out

    @property
    def files(self) -> list[str]:
        return [f.name for f in self._files]

    def iter_tensors(
        self, names: Iterable[str] | None = None, *, batch_bytes: int = 256 << 20
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, tensor)`` for all tensors (or ``names``), a batch at a time.

        For frameworks that take weights one by one (vLLM's ``load_weights``): tensors
        are grouped file by file, in file order, into batches of at most ``batch_bytes``
        (a larger tensor is a batch of its own); each batch is one :meth:`load` (read
        once, verified and decrypted, one ``load.ok`` event) before any of its tensors
        is yielded, and is dropped as it is consumed, so host memory holds about one
        batch rather than the whole model.  A failure raises the typed error from the
        iterator; every tensor yielded before it had passed its checks.

        A file signed by whole-file or shard digests (model_signing) is one batch
        whatever ``batch_bytes``: none of its tensors can be yielded before all of its
        bytes were hashed, and a second batch would read and hash the file again.
        """
        if batch_bytes < 1:
            raise ConfigError(f"batch_bytes must be positive, not {batch_bytes}")
        wanted = None if names is None else set(names)
        if wanted is not None:
            unknown = sorted(wanted - set(self._where))
            if unknown:
                raise ConfigError(
                    f"{self._ctx.uri}: no tensor named {', '.join(map(repr, unknown[:5]))}",
                    hint="see .keys() for the names in the model",
                )
        for f in self._files:
            batch: list[str] = []
            size = 0
            for t in sorted(f.tensors, key=lambda t: (t.begin, t.name)):
                if wanted is not None and t.name not in wanted:
                    continue
                if batch and size + t.nbytes > batch_bytes and not f.streamed:
                    yield from self._drain(batch)
                    batch, size = [], 0
                batch.append(t.name)
                size += t.nbytes
            if batch:
                yield from self._drain(batch)

    def _drain(self, batch: list[str]) -> Iterator[tuple[str, torch.Tensor]]:
        loaded = self.load(batch)
        for name in batch:  # pop, so a consumed tensor is freed once the caller drops it
            yield name, loaded.pop(name)

    def side_files(self) -> list[str]:
        """The model directory's other files the signature covers (config, tokenizer ...).

        Names as signed, for :meth:`read_side_file`; empty for a single weight file.
        Under ``UnsafeNoVerification`` without a signature: every other file, unchecked.
        """
        if not self._location.is_dir:
            return []
        skip = {*self.files, PRIMARY_SIGNATURE}
        if self._signed_all is None:
            return [n for n in self._location.names() if n not in skip] if self._unsafe else []
        return sorted(n for n in self._signed_all if n not in skip)

    def read_side_file(self, name: str, *, limit: int = 64 << 20) -> bytes:
        """The bytes of side file ``name``, checked against its signed whole-file digest.

        A mismatch raises :class:`IntegrityError` (audited as ``tamper.detected``); a
        file the model lacks, :class:`SourceError`; one present but not covered by the
        signature, :class:`CoverageError`; a weight file, the signature or a name outside
        the model, :class:`ConfigError`; a file over ``limit`` bytes, :class:`SourceError`.
        """
        if self._closed:
            raise ConfigError("the model handle is closed", hint="open the model again")
        loc = self._location
        if not loc.is_dir or name in {*self.files, PRIMARY_SIGNATURE} or ".." in name.split("/"):
            raise ConfigError(
                f"{self._ctx.uri}: {name!r} is not a file of the model the signature covers",
                hint="see .side_files() for the names",
            )
        signed = (self._signed_all or {}).get(name)
        try:
            if name not in self.side_files():
                if name not in loc.names():
                    raise SourceError(
                        f"{self._ctx.uri}: the model has no {name}",
                        hint="release the model directory with all its files",
                    )
                raise CoverageError(
                    f"{self._ctx.uri}: the signature does not cover {name}",
                    hint="re-sign the whole model directory",
                )
            data = loc.read_small(name, limit=limit)
            if signed is not None:
                check_signed_bytes(loc, name, data, signed)
        except WeightguardError as exc:
            self._deny(exc, 0.0)
            raise
        return data

    def load(
        self, names: Iterable[str] | None = None, *, progress: Progress | None = None
    ) -> dict[str, torch.Tensor]:
        """Load all tensors, or only ``names`` (reading only the chunks they touch).

        ``progress(done, total)``: bytes of the model read and checked so far, of
        ``total`` (first ``done == 0``; called from worker threads, one at a time).

        A file signed without chunk digests (by model_signing: one digest per file or per
        shard) is read and hashed whole even when only some of its tensors are asked
        for: nothing of it can be returned before every byte its digests cover was
        hashed.  Its other records are read and hashed, never copied.
        """
        if self._closed:
            raise ConfigError("the model handle is closed", hint="open the model again")
        wanted = self._wanted(names)
        files = [
            f for f in self._files if wanted is None or any(t.name in wanted for t in f.tensors)
        ]
        t0 = time.monotonic()
        from weightguard._internal.foundation.cpus import usable_cpus

        concurrency = max((f.source.concurrency for f in files), default=1)
        workers = self._workers or max(usable_cpus(), concurrency)
        copier: Copier | None = None
        nbytes: int | None = None
        result: dict[str, Any] = {}
        bufs: list[Any] = []
        where: dict[str, Any] = {}
        try:
            require("loading tensors", "torch")  # fetch and verify do not; load does
            on_gpu, where = self._decrypt_where(files)
            max_plain = max((min(f.geometry.chunk, f.geometry.data_size) for f in files), default=1)
            copier = copier_for(
                self.device,
                slot_bytes=max(1, max_plain + (16 if on_gpu else 0)),
                ring_bytes=self._ring_bytes,
                workers=workers,
                decrypt=on_gpu,
            )
            jobs, placements, seg_base, all_segments = _plan_files(files, wanted, copier.align)
            nbytes = sum(r.src_len for j in jobs for r in j.records)
            if on_gpu:
                copier.prepare_keys([f.cipher for f in files if f.cipher is not None])  # type: ignore[attr-defined]
            copier.allocate(all_segments)
            run_pipeline(
                jobs, copier, workers=workers, before_record=_before_record(), progress=progress
            )
            bufs = copier.finish()
            device = copier.torch_device
            for f, base, place in zip(files, seg_base, placements, strict=True):
                result.update(build_tensors(f.display, bufs, _rebased(place, base), device))
            copier.close()
        except BaseException as exc:
            cleanup = _cleanup(copier)
            with contextlib.suppress(BaseException):
                for t in (*bufs, *result.values()):  # e.g. a dtype error after the pipeline
                    t.zero_()
            result, bufs = {}, []
            self._deny(exc, time.monotonic() - t0, nbytes, cleanup)
            raise
        finally:
            seen = observe.current().on_copier
            if copier is not None and seen is not None:
                seen(copier)
        self._ctx.audit.emit(
            "load.ok",
            object=self._ctx.obj(files),
            bytes=nbytes,
            duration_s=time.monotonic() - t0,
            tensors=len(result),
            **where,
        )
        return result

    def _wanted(self, names: Iterable[str] | None) -> set[str] | None:
        """The tensors asked for (None: all); a name the model lacks is refused."""
        if names is None:
            return None
        wanted = set(names)
        unknown = sorted(wanted - set(self._where))
        if unknown:
            raise ConfigError(
                f"{self._ctx.uri}: no tensor named {', '.join(map(repr, unknown[:5]))}",
                hint="see .keys() for the names in the model",
            )
        return wanted

    def _decrypt_where(self, files: list[ModelFile]) -> tuple[bool, dict[str, Any]]:
        """Whether encrypted records are decrypted on the device, and what to audit."""
        from weightguard._internal.devices import aes_ctr_triton as aes

        if not any(f.cipher is not None for f in files):
            return False, {}
        kind = self.device.split(":", 1)[0]
        if kind == "cpu" or self._decrypt_on == "cpu":
            if self._decrypt_on == "gpu":
                raise ConfigError(
                    f"decrypt_on='gpu' needs a GPU device, not {self.device!r}",
                    hint="load to 'cuda[:N]', or pass decrypt_on='cpu'",
                )
            return False, {"decrypt_on": "cpu"}
        why = aes.available(self.device)  # compiles + launches the kernel once there
        if why is None:
            return True, {"decrypt_on": "gpu"}
        if self._decrypt_on == "gpu":
            raise DeviceError(
                f"cannot decrypt on the device: {why}",
                hint="install triton and a C compiler, or pass decrypt_on='cpu'",
            )
        return False, {"decrypt_on": "cpu", "decrypt_fallback": why}

    def _plain_size(self, name: str) -> int:
        """Size of file ``name`` as the original (decrypted) safetensors file."""
        f = next(x for x in self._files if x.name == name)
        return len(f.st_raw) + f.geometry.data_size

    def _stream_to(self, name: str, fd: int) -> int:
        """Write one whole file, as the original safetensors file, to ``fd``.

        For ``weightguard fetch``: the same one-pass checks, audit events and fail-closed
        behaviour as :meth:`load`, but each verified, decrypted record goes straight to
        the file (``pwrite``) through one small buffer per worker, so process memory stays
        bounded whatever the shard size.  Returns the bytes written.  On failure the
        caller must drop the (temporary) output file.
        """
        from weightguard._internal.load.copiers import FileCopier

        f = next(x for x in self._files if x.name == name)
        records, segments, _ = plan(f.geometry, f.tensors, None)
        st_raw = f.st_raw
        done = 0
        while done < len(st_raw):
            done += os.pwrite(fd, st_raw[done:], done)
        if segments or f.streamed:  # a streamed file's head is checked even without data
            max_plain = max((r.dst_len for r in records), default=1)
            copier = FileCopier(fd, base=len(st_raw), slot_bytes=max_plain, path=f.display)
            self._run([f.job(records, segments)], segments, copier)
        return len(st_raw) + sum(segments)

    def _run(
        self, jobs: list[FileJob], all_segments: list[int], copier: Copier | None = None
    ) -> list[Any]:
        """Run the pipeline (into CPU memory by default); segment buffers (fail closed)."""
        from weightguard._internal.foundation.cpus import usable_cpus

        t0 = time.monotonic()
        max_plain = max((r.dst_len for j in jobs for r in j.records), default=1)
        workers = self._workers or max(usable_cpus(), *(j.source.concurrency for j in jobs))
        nbytes = sum(r.src_len for j in jobs for r in j.records)
        if copier is None:
            copier = copier_for("cpu", slot_bytes=max(1, max_plain), workers=workers)
        try:
            copier.allocate(all_segments)
            run_pipeline(jobs, copier, workers=workers, before_record=_before_record())
            bufs = copier.finish()
            copier.close()
        except BaseException as exc:
            self._deny(exc, time.monotonic() - t0, nbytes, _cleanup(copier))
            raise
        finally:
            seen = observe.current().on_copier
            if seen is not None:
                seen(copier)
        self._ctx.audit.emit(
            "load.ok",
            object=self._ctx.obj([f for f in self._files if f.display in {j.name for j in jobs}]),
            bytes=nbytes,
            duration_s=time.monotonic() - t0,
        )
        return bufs

    def close(self) -> None:
        """Drop the ciphers (AEAD keys) and close the sources."""
        if self._closed:
            return
        self._closed = True
        for f in self._files:
            if f.cipher is not None:
                f.cipher.wipe()
                f.cipher = None
            f.source.close()
        if self._ctx.own_audit:
            self._ctx.audit.close()

    def __enter__(self) -> ModelHandle:
        return self

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ModelHandle({self._ctx.uri!r}, device={self.device!r}, files={len(self._files)})"


# --------------------------------------------------------------------------- public API


@renamed_keywords(key="data_key", allowed_keys="allow_key")
def open_model(
    source: str | os.PathLike[str],
    device: str = "cpu",
    *,
    policy: Any,
    signature: str | os.PathLike[str] | None = None,
    data_key: Any = None,
    key_options: Mapping[str, Any] | None = None,
    audit: AuditLog | None = None,
    workers: int | None = None,
    ring_bytes: int = DEFAULT_RING_BYTES,
    s3: S3Options | None = None,
    decrypt_on: str = "auto",
    allow_key: Iterable[str] | str | None = None,
) -> ModelHandle:
    """Open and verify a model; ``.keys()``, ``.load(names)``; close when done.

    ``data_key``: ``None`` (the provider named in the artifact header), a key URI overriding
    it (``vault://transit/models``, ``file:///path``), or a KeyProvider object;
    ``key_options`` go to the provider (e.g. Vault address/token/auth).
    ``allow_key``: without ``data_key``, the header's key reference is used only if it
    matches one of these patterns or ``$WEIGHTGUARD_ALLOW_KEY`` (e.g.
    ``vault://transit/*``; a ``file://`` reference only if named exactly); see
    :func:`weightguard._internal.keys.providers.choose_key_uri`.  (``key`` and
    ``allowed_keys``, the keywords of the previous release, work until the next one,
    with a FutureWarning.)
    ``audit``: an :class:`~weightguard.audit.AuditLog` (default: from the environment).
    ``workers``: threads (default: cgroup-aware CPU count; more for S3).
    ``ring_bytes``: pinned host staging for CUDA loads (host memory bound): rounded up
    to a power of two and kept for reuse for the process's life (PyTorch's pinned
    allocator would keep it cached anyway); :func:`release_pinned_memory` gives it back.
    ``decrypt_on``: where encrypted records are decrypted for a GPU device: ``"gpu"``
    (Triton AES-CTR kernel into the device buffer: the host never holds plaintext;
    the CPU checks the signed digest or the GCM tag first), ``"cpu"`` (AES-GCM on the
    host, plaintext through the pinned ring), ``"auto"`` (gpu when Triton and a compiler
    are available, else cpu; the ``load.ok`` event says which and why).
    """
    options = LoadOptions(
        signature=signature,
        data_key=data_key,
        key_options=key_options,
        audit=audit,
        workers=workers,
        ring_bytes=ring_bytes,
        s3=s3,
        decrypt_on=decrypt_on,
        allow_key=allow_key,
    )
    return ModelHandle(source, device, policy=policy, options=options)


@renamed_keywords(key="data_key", allowed_keys="allow_key")
def load_file(
    source: str | os.PathLike[str],
    device: str = "cpu",
    *,
    policy: Any,
    signature: str | os.PathLike[str] | None = None,
    data_key: Any = None,
    key_options: Mapping[str, Any] | None = None,
    audit: AuditLog | None = None,
    workers: int | None = None,
    ring_bytes: int = DEFAULT_RING_BYTES,
    s3: S3Options | None = None,
    decrypt_on: str = "auto",
    allow_key: Iterable[str] | str | None = None,
    progress: Progress | None = None,
) -> dict[str, torch.Tensor]:
    """Securely load every tensor: ``{name: tensor}`` like ``safetensors.torch.load_file``.

    ``progress(done, total)``: see :meth:`ModelHandle.load`."""
    with open_model(
        source,
        device,
        policy=policy,
        signature=signature,
        data_key=data_key,
        key_options=key_options,
        audit=audit,
        workers=workers,
        ring_bytes=ring_bytes,
        s3=s3,
        decrypt_on=decrypt_on,
        allow_key=allow_key,
    ) as handle:
        return handle.load(progress=progress)


@renamed_keywords(key="data_key", allowed_keys="allow_key")
def load_model(
    module: torch.nn.Module,
    source: str | os.PathLike[str] | ModelHandle,
    device: str | None = None,
    *,
    policy: Any,
    strict: bool = True,
    **options: Any,
) -> torch.nn.Module:
    """Securely load into an existing module, strict by default.

    Handles what real checkpoints and modules contain: checkpoint entries for the
    module's non-persistent buffers (e.g. ``position_ids``) are skipped, tied
    parameters need one of their names in the checkpoint, and parameters on the
    ``meta`` device (``init_empty_weights``, ``torch.device("meta")``) are replaced by
    the loaded tensors (``assign``: no second copy).  Allocated CPU parameters whose
    dtype and layout match the checkpoint are decrypted into in place (no staging
    copy, no fresh pages); the rest are filled with a cast, one file at a time, and the
    loaded copy is zeroed.  On failure every tensor written so far is zeroed.  A load
    that would leave any parameter or buffer on ``meta`` fails before anything is
    read.  ``device`` defaults to the first non-meta parameter's device.
    ``source`` may be an open :class:`ModelHandle` (then ``device``, ``policy`` and
    ``options`` were given to :func:`open_model`; the handle stays open).
    Sharded HF directories (``model.safetensors.index.json``) are supported.
    """
    from weightguard._internal.load.module import load_into_module

    if isinstance(source, ModelHandle):  # already opened and verified (integrations)
        load_into_module(module, source, strict=strict)
        return module
    with open_model(source, device or _module_device(module), policy=policy, **options) as handle:
        load_into_module(module, handle, strict=strict)
    return module


def _module_device(module: torch.nn.Module) -> str:
    for p in module.parameters():
        if not p.is_meta:
            return str(p.device)
    return "cpu"
