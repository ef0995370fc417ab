"""Verified side files (config, tokenizer) of an opened model, for framework loaders.

Frameworks read configuration from a directory.  :class:`SideFiles` reads each file
checked against the signature (:meth:`ModelHandle.read_side_file`) and, when the release
encrypted it (``weightguard encrypt --encrypt-other-files``), decrypts it in memory
(key commitment, header MAC and every record's AEAD tag checked, the data key unwrapped
under the same key rule as the weights').  :func:`side_file_dir` writes the plaintext,
0600, into a private 0700 directory on a memory file system when one is available
(``/dev/shm``); weights are never written there.  The directory is removed when the
context exits.

:func:`refusals` is the one rule for a framework's refusal inside an integration: every
error raised while the model is open becomes a :mod:`weightguard.errors` error (a
framework's own ``ValueError`` included) and is audited once on the handle
(``load.denied`` / ``tamper.detected``).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from weightguard._internal.foundation import boundedjson
from weightguard._internal.foundation.keywords import renamed_keywords
from weightguard.errors import ConfigError, FormatError, WeightguardError

__all__ = [
    "OPEN_OPTIONS",
    "RENAMED_OPTIONS",
    "SideFiles",
    "audit_refusal",
    "check_policy",
    "opened",
    "read_config",
    "refusals",
    "servable_side_file",
    "side_file_dir",
]

CONFIG_NAME = "config.json"

# What the integrations pass on to weightguard.open_model.
OPEN_OPTIONS = ("signature", "data_key", "key_options", "allow_key", "audit", "workers", "s3")
# their spellings of the previous release: accepted until the next one, with a FutureWarning
RENAMED_OPTIONS = {"key": "data_key", "allowed_keys": "allow_key"}


def _scratch_root() -> str | None:
    from weightguard.transfer import is_memory_fs

    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and is_memory_fs(shm) else None


# The one rule for what a framework is given next to the weights: an allow-list of the
# formats configs and tokenizers come in (never code, never weights in any format), with
# safe, shallow names.  The index is left out: the weights come from weightguard.
SIDE_SUFFIXES = (".json", ".txt", ".model", ".tiktoken", ".jinja")
_NAME_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
_SKIP = {"model.safetensors.index.json"}


def servable_side_file(name: str) -> bool:
    parts = name.split("/")
    return (
        name not in _SKIP
        and name.endswith(SIDE_SUFFIXES)
        and len(parts) <= 3
        and all(_NAME_PART.fullmatch(p) for p in parts)
    )


class SideFiles:
    """The signed side files of an open model handle, as the framework must see them.

    :meth:`read` checks the stored bytes against the signature and, for a file the
    release encrypted, decrypts them in memory: ``data_key``, ``key_options`` and
    ``allow_key`` are the ones the handle was opened with (the same key rule as the
    weights: :func:`weightguard._internal.keys.providers.choose_key_uri`).  Data keys are
    unwrapped in one round trip per provider (:meth:`read_many`), audited as
    ``key.unwrap`` on ``audit`` when given, and wiped after use.
    """

    @renamed_keywords(key="data_key", allowed_keys="allow_key")
    def __init__(
        self,
        handle: Any,
        uri: str,
        *,
        data_key: Any = None,
        key_options: Mapping[str, Any] | None = None,
        allow_key: Iterable[str] | str | None = None,
        audit: Any = None,
    ) -> None:
        self.handle = handle
        self.uri = uri
        self._key = data_key
        self._key_options = dict(key_options or {})
        self._allowed = allow_key
        self._audit = audit
        self._stored: dict[str, bytes] = {}
        self._plain: dict[str, bytes] = {}  # decrypted side files (small: configs)

    def names(self) -> list[str]:
        """The signed side files a framework is given (see :func:`servable_side_file`)."""
        return [n for n in self.handle.side_files() if servable_side_file(n)]

    def read(self, name: str) -> bytes:
        return self.read_many([name])[name]

    def read_many(self, names: Iterable[str]) -> dict[str, bytes]:
        """``{name: plaintext}``: each verified, decrypted where it was encrypted."""
        from weightguard._internal.format.layout import MAGIC_PROBE, is_artifact

        out: dict[str, bytes] = {}
        sealed: dict[str, bytes] = {}
        for n in names:
            if n in self._plain:
                out[n] = self._plain[n]
                continue
            data = self.stored(n)
            if is_artifact(data[:MAGIC_PROBE]):
                sealed[n] = data
            else:
                out[n] = data
        if sealed:
            opened = self._decrypt(sealed)
            self._plain.update(opened)
            out.update(opened)
        return out

    def stored(self, name: str) -> bytes:
        """The bytes of ``name`` as released (checked against the signature; read once)."""
        if name not in self._stored:
            self._stored[name] = self.handle.read_side_file(name)
        return self._stored[name]

    def _decrypt(self, sealed: dict[str, bytes]) -> dict[str, bytes]:
        from weightguard._internal.format.layout import ChunkCipher, read_header
        from weightguard._internal.foundation.memory import wipe
        from weightguard._internal.keys.unwrap import unwrap_groups

        uri = self.uri
        headers = {}
        for name, data in sealed.items():
            h = read_header(io.BytesIO(data), path=f"{uri}/{name}")
            if h.content != "raw":
                raise FormatError(
                    f"{uri}/{name}: an encrypted side file must hold raw content, not {h.content}"
                )
            headers[name] = h
        names = list(headers)
        out: dict[str, bytes] = {}
        t0 = time.monotonic()
        round_trips = 0
        for group in unwrap_groups(  # the one key rule and unwrap sequence
            [headers[n].wrapped_key for n in names],
            key=self._key,
            key_options=self._key_options,
            allowed_keys=self._allowed,
            where=[f"{uri}/{n}" for n in names],
        ):
            round_trips += 1
            try:
                for i, dk in zip(group.indexes, group.data_keys, strict=True):
                    out[names[i]] = _open_raw(ChunkCipher(headers[names[i]], dk), sealed[names[i]])
            finally:
                for dk in group.data_keys:
                    wipe(dk)
        if self._audit is not None:
            first = next(iter(headers.values())).wrapped_key
            self._audit.emit(
                "key.unwrap",
                object={
                    "uri": uri,
                    "key_id": first.uri,
                    "key_version": first.key_version,
                    "side_files": sorted(sealed),
                },
                duration_s=time.monotonic() - t0,
                files=len(sealed),
                round_trips=round_trips,
            )
        return out


def _open_raw(cipher: Any, data: bytes) -> bytes:
    """The plaintext of a raw-content artifact held in memory, every record authenticated."""
    from weightguard._internal.format.layout import TAG_SIZE
    from weightguard.errors import IntegrityError

    h = cipher.header
    try:
        if len(data) != h.total_size:
            raise IntegrityError(
                f"{len(data)} bytes where the artifact header says {h.total_size} "
                "(truncated, or records were appended)",
                path=h.path,
            )
        plain = bytearray(h.plaintext_size)
        view = memoryview(plain)
        for index in range(h.record_count):
            off, length = h.record_span(index)
            n = length - TAG_SIZE
            start = h.plain_offset(index)
            cipher.decrypt_record_into(
                index, memoryview(data)[off : off + length], view[start : start + n]
            )
        return bytes(plain)
    finally:
        cipher.wipe()


@contextlib.contextmanager
def side_file_dir(side: SideFiles, extra: dict[str, bytes] | None = None) -> Iterator[Path]:
    """A private directory holding the verified (and decrypted) side files of the model
    (weight files of other formats are left out), and ``extra``."""
    files = side.read_many(side.names())
    d = Path(tempfile.mkdtemp(prefix="weightguard-side-", dir=_scratch_root()))
    try:
        for name, data in [*files.items(), *(extra or {}).items()]:
            target = d / name
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def read_config(side: SideFiles) -> dict[str, Any]:
    """The model's verified (decrypted) ``config.json`` as a dict."""
    # read_side_file gives the typed errors: missing (SourceError), unsigned, tampered
    uri = side.uri
    raw = side.read(CONFIG_NAME)
    # the one bounded reader: configs hold floats (layer_norm_eps) and some nesting
    doc = boundedjson.loads(raw, what=f"{uri}/{CONFIG_NAME}", max_bytes=16 << 20, floats=True)
    if not isinstance(doc, dict):
        raise FormatError(f"{uri}/{CONFIG_NAME}: not a JSON object")
    return doc


# --------------------------------------------------------------------------- refusals


@contextlib.contextmanager
def refusals(handle: Any, uri: str, framework: str) -> Iterator[None]:
    """Every error inside the block is a weightguard error, audited once on ``handle``.

    A framework's own exception (sentence-transformers' ``ValueError`` for a module path,
    a tokenizer's parse error ...) becomes a :class:`FormatError` naming the framework,
    chained to the original.
    """
    try:
        yield
    except WeightguardError as exc:
        handle.refuse(exc)
        raise
    except Exception as exc:
        err = FormatError(
            f"{uri}: {framework} refused the verified model files: "
            f"{type(exc).__name__}: {str(exc)[:300]}",
            hint="the signed files are not a model this framework loads; check the release",
        )
        handle.refuse(err)
        raise err from exc
    except BaseException as exc:  # cancelled (KeyboardInterrupt): audited, not converted
        handle.refuse(exc)
        raise


def audit_refusal(
    audit: Any, exc: WeightguardError, uri: str, env: Mapping[str, str] | None = None
) -> None:
    """Audit a refusal raised before any handle was opened (an unsupported option):
    ``load.denied`` on ``audit``, or on the audit log ``env`` (default: the process's
    environment) names when ``None``."""
    from weightguard.audit import AuditLog

    log = AuditLog.from_env(env) if audit is None else audit
    try:
        with contextlib.suppress(WeightguardError):  # the caller must see the original error
            log.emit(
                "load.denied",
                outcome="denied",
                reason=f"{type(exc).__name__}: {exc.message}",
                object={"uri": uri},
            )
    finally:
        if audit is None:
            log.close()
    exc.__dict__["_weightguard_audited"] = True


def check_policy(policy: Any) -> None:
    """A policy object, not a file name (which would read as "no policy")."""
    if isinstance(policy, (str, bytes, os.PathLike)):
        raise ConfigError(
            f"policy must be a weightguard.policy object, not the {type(policy).__name__} "
            f"{os.fsdecode(policy)[:200]!r}",
            hint="for a public key file pass policy=PublicKey.from_file(...) "
            "(from weightguard.policy import PublicKey)",
        )


@contextlib.contextmanager
def opened(
    source: str | os.PathLike[str], device: str, policy: Any, options: Mapping[str, Any]
) -> Iterator[tuple[Any, SideFiles]]:
    """``(handle, side files)`` of ``source`` opened with ``options`` (:data:`OPEN_OPTIONS`).

    The audit log is the caller's (``options["audit"]``) or the environment's, shared by
    the handle and the side files (whose key unwrap it records); closed here if opened
    here.
    """
    from weightguard._internal.foundation.keywords import take_renamed
    from weightguard.audit import AuditLog
    from weightguard.loader import open_model

    opts = dict(options)
    take_renamed(opts, RENAMED_OPTIONS, "open_model", stacklevel=5)
    audit = opts.pop("audit", None)
    own = audit is None
    log = AuditLog.from_env() if own else audit
    try:
        with open_model(source, device, policy=policy, audit=log, **opts) as handle:
            yield (
                handle,
                SideFiles(
                    handle,
                    os.fspath(source),
                    data_key=opts.get("data_key"),
                    key_options=opts.get("key_options"),
                    allow_key=opts.get("allow_key"),
                    audit=log,
                ),
            )
    finally:  # str(exc) tells hints in the caller's keywords (weightguard.vocabulary)
        if own:
            log.close()
