"""Tamper-evident access audit log.

>>> log = AuditLog.from_env()                      # WEIGHTGUARD_AUDIT_LOG
>>> log.emit("load.ok", object={"uri": "s3://models/llama", "key_id": "vault://transit/m"},
...          bytes=123, duration_s=0.42)
>>> log.close()

Every record is one canonical JSON line carrying the digest of the previous record
(``prev``); signed checkpoints are written every N records / T seconds and anchored
outside the log.  See docs/audit.md for the schema and ``verify_log`` for the checks.
"""

from __future__ import annotations

import atexit
import contextlib
import inspect
import logging
import os
import re
import threading
import weakref
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from weightguard._internal.audit.chain import Checkpointer
from weightguard._internal.audit.checkpoint import (
    Anchor,
    CheckpointSigner,
    Ed25519FileSigner,
    S3Anchor,
    TransitCheckpointSigner,
    VaultKVAnchor,
    anchor_for,
    generate_ed25519_keypair,
    signer_for,
)
from weightguard._internal.audit.readers import log_size, read_records
from weightguard._internal.audit.record import (
    FORMAT_VERSION,
    collect_subject,
    parse_time,
    sanitize,
    scrub_text,
    utc_now,
)
from weightguard._internal.audit.sinks import (
    FileSink,
    MemorySink,
    S3Sink,
    Sink,
    StreamSink,
)
from weightguard.errors import AuditError, ConfigError

if TYPE_CHECKING:
    from weightguard._internal.audit.verify import (
        LogSummary,
        Problem,
        VerifyResult,
        verify_log,
    )

# The log's verification (``verify_log`` and its result types) loads on first use: writing
# events (every load) does not need it, and its five dataclasses cost ~3 ms to import.
_VERIFY_NAMES = frozenset({"LogSummary", "Problem", "VerifyResult", "verify_log"})


def __getattr__(name: str) -> object:
    if name in _VERIFY_NAMES:
        from weightguard._internal.audit import verify

        value = getattr(verify, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_log = logging.getLogger("weightguard.audit")

__all__ = [
    "DEFAULT_LOG_PATH",
    "STEP_EVENTS",
    "Anchor",
    "AuditLog",
    "CheckpointSigner",
    "Ed25519FileSigner",
    "FileSink",
    "LogSummary",
    "MemorySink",
    "Problem",
    "S3Anchor",
    "S3Sink",
    "Sink",
    "StreamSink",
    "TransitCheckpointSigner",
    "VaultKVAnchor",
    "VerifyResult",
    "default_log_spec",
    "generate_checkpoint_key",
    "log_size",
    "parse_time",
    "read_records",
    "verify_log",
]

ENV_LOG = "WEIGHTGUARD_AUDIT_LOG"
ENV_SIGNING_KEY = "WEIGHTGUARD_AUDIT_SIGNING_KEY"
ENV_ANCHOR = "WEIGHTGUARD_AUDIT_ANCHOR"
ENV_CHECKPOINT_EVERY = "WEIGHTGUARD_AUDIT_CHECKPOINT_EVERY"
ENV_CHECKPOINT_SECONDS = "WEIGHTGUARD_AUDIT_CHECKPOINT_SECONDS"
ENV_SYNC = "WEIGHTGUARD_AUDIT_SYNC"
ENV_MAX_BYTES = "WEIGHTGUARD_AUDIT_MAX_BYTES"
ENV_FAIL_OPEN = "WEIGHTGUARD_AUDIT_FAIL_OPEN"
ENV_S3_RETENTION_DAYS = "WEIGHTGUARD_AUDIT_S3_RETENTION_DAYS"
ENV_S3_LOCK_MODE = "WEIGHTGUARD_AUDIT_S3_LOCK_MODE"

#: Used when WEIGHTGUARD_AUDIT_LOG is unset outside Kubernetes.
DEFAULT_LOG_PATH = "~/.local/state/weightguard/audit.jsonl"

#: Events that are steps towards a decision, not decisions: written at once, made
#: durable by the decision that follows them (see :meth:`AuditLog.emit`).
STEP_EVENTS = frozenset({"load.start", "verify.ok", "key.unwrap"})

_NAME_RE = re.compile(r"^[a-z][a-z0-9_.\-]{0,63}$")


def default_log_spec(env: Mapping[str, str] | None = None) -> str:
    """Where events go when WEIGHTGUARD_AUDIT_LOG is unset.

    In Kubernetes (KUBERNETES_SERVICE_HOST set) it is ``-`` (stdout, collected by the
    cluster's log pipeline); elsewhere ``$XDG_STATE_HOME/weightguard/audit.jsonl``
    (``~/.local/state/weightguard/audit.jsonl``).  Auditing is never silently off.
    """
    env = os.environ if env is None else env
    if env.get("KUBERNETES_SERVICE_HOST"):
        return "-"
    state = env.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(state, "weightguard", "audit.jsonl")


def generate_checkpoint_key(private_path: str, public_path: str | None = None) -> str:
    """Create an Ed25519 checkpoint key pair (``<private>.pub`` by default); return key id."""
    return generate_ed25519_keypair(private_path, public_path or private_path + ".pub")


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if value < 0:
        raise ConfigError(f"{name} must not be negative")
    return value


def _sink_for(spec: str, options: Mapping[str, Any]) -> Sink:
    spec = spec.strip()
    if spec == "-":
        return StreamSink()
    if spec.startswith("s3://"):
        return S3Sink(
            spec,
            client=options.get("s3_client"),
            sync=options.get("sync", "event"),
            retention_days=options.get("retention_days", 365),
            lock_mode=options.get("lock_mode", "GOVERNANCE"),
        )
    if "://" in spec and not spec.startswith("file://"):
        raise ConfigError(
            f"unsupported audit log destination {spec!r}",
            hint="use a file path, '-' for stdout or s3://bucket/prefix",
        )
    if spec.startswith("file://"):
        spec = spec[len("file://") :]
    return FileSink(
        os.path.expanduser(spec),
        sync=options.get("sync", "event"),
        max_bytes=options.get("max_bytes"),
        anchor=options.get("file_anchor"),
    )


def _takes_durable(sink: Sink) -> bool:
    """Whether a sink's ``append`` takes ``durable`` (sinks written before it may not)."""
    if isinstance(sink, FileSink | StreamSink | S3Sink | MemorySink):
        return True
    try:
        return "durable" in inspect.signature(sink.append).parameters
    except (TypeError, ValueError):
        return False


_open_logs: weakref.WeakSet[AuditLog] = weakref.WeakSet()


@atexit.register
def _close_open_logs() -> None:  # final checkpoints on interpreter exit
    for log in list(_open_logs):
        with contextlib.suppress(Exception):
            log.close()


class AuditLog:
    """Writes access events to one or more sinks (fan-out), chained and checkpointed.

    ``sinks``: a destination string (path, ``-`` for stdout, ``s3://bucket/prefix``;
    several separated by commas), a sink object, or a sequence of either.  ``None``
    uses :func:`default_log_spec`.

    ``signing_key``: an Ed25519 PEM key file, ``vault://transit/<key>``, or a signer
    object; with it a signed checkpoint is written every ``checkpoint_every`` records
    and at the first event ``checkpoint_interval_s`` seconds after the last one, and
    at :meth:`close`.  ``anchor`` (``s3://bucket/prefix`` under Object Lock, or
    ``vault-kv://mount/path``) receives every checkpoint.

    ``fail_closed`` (default True): :meth:`emit` raises :class:`AuditError` when a
    sink cannot write, so the caller refuses the access.  With ``fail_closed=False``
    the failure is reported once on stderr and the event is lost.
    """

    def __init__(
        self,
        sinks: str | Sink | Sequence[str | Sink] | None = None,
        *,
        signing_key: str | os.PathLike[str] | CheckpointSigner | None = None,
        anchor: str | Anchor | None = None,
        checkpoint_every: int = 1000,
        checkpoint_interval_s: float = 300.0,
        sync: str = "event",
        max_bytes: int | None = None,
        fail_closed: bool = True,
        subject: Mapping[str, Any] | None = None,
        podinfo_dir: str | None = None,
        s3_client: Any = None,
        vault_client: Any = None,
        retention_days: int = 365,
        lock_mode: str = "GOVERNANCE",
    ) -> None:
        signer: CheckpointSigner | None
        if signing_key is None or hasattr(signing_key, "sign"):
            signer = signing_key  # type: ignore[assignment]
        else:
            signer = signer_for(signing_key, vault_client=vault_client)
        anc: Anchor | None
        if anchor is None or not isinstance(anchor, str):
            anc = anchor
        else:
            anc = anchor_for(
                anchor,
                s3=s3_client,
                vault_client=vault_client,
                **(
                    {"retention_days": retention_days, "mode": lock_mode}
                    if anchor.startswith("s3://")
                    else {}
                ),
            )
        options = {
            "sync": sync,
            "max_bytes": max_bytes,
            "file_anchor": anc,
            "s3_client": s3_client,
            "retention_days": retention_days,
            "lock_mode": lock_mode,
        }
        if sinks is None:
            sinks = default_log_spec()
        items: list[str | Sink] = (
            [s for s in sinks.split(",") if s.strip()] if isinstance(sinks, str) else []
        )
        if not isinstance(sinks, str):
            items = list(sinks) if isinstance(sinks, Sequence) else [sinks]
        if not items:
            raise ConfigError("no audit sink given", hint="set WEIGHTGUARD_AUDIT_LOG")
        self.sinks: list[Sink] = [_sink_for(s, options) if isinstance(s, str) else s for s in items]
        if anc is not None:
            for s in self.sinks:
                if isinstance(s, S3Sink):
                    s.anchor = anc
        self.checkpointer = Checkpointer(
            signer, anc, every=checkpoint_every, interval_s=checkpoint_interval_s
        )
        self.fail_closed = fail_closed
        self._base_subject = collect_subject(podinfo_dir=podinfo_dir)
        if subject:
            self._base_subject.update(sanitize(dict(subject)))
        self._warned = False
        self._closed = False
        self._lock = threading.Lock()
        _open_logs.add(self)

    # -- construction from configuration -------------------------------------------
    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> AuditLog:
        """Build from WEIGHTGUARD_AUDIT_* variables (see docs/audit.md)."""
        env = os.environ if env is None else env
        spec = env.get(ENV_LOG) or default_log_spec(env)
        return cls._from(spec, env, overrides)

    @classmethod
    def open(cls, spec: str | None = None, **overrides: Any) -> AuditLog:
        """``spec`` as given by ``--audit-log`` (path, ``-``, ``s3://``); None = from_env."""
        if spec is None or not spec.strip():
            return cls.from_env(**overrides)
        return cls._from(spec, os.environ, overrides)

    @classmethod
    def _from(cls, spec: str, env: Mapping[str, str], overrides: Mapping[str, Any]) -> AuditLog:
        sync = env.get(ENV_SYNC) or "event"
        kwargs: dict[str, Any] = {
            "signing_key": env.get(ENV_SIGNING_KEY) or None,
            "anchor": env.get(ENV_ANCHOR) or None,
            "checkpoint_every": _int_env(env, ENV_CHECKPOINT_EVERY, 1000),
            "checkpoint_interval_s": float(_int_env(env, ENV_CHECKPOINT_SECONDS, 300)),
            "sync": sync,
            "max_bytes": _int_env(env, ENV_MAX_BYTES, 0) or None,
            "fail_closed": env.get(ENV_FAIL_OPEN, "") not in ("1", "true", "yes"),
            "retention_days": _int_env(env, ENV_S3_RETENTION_DAYS, 365),
            "lock_mode": env.get(ENV_S3_LOCK_MODE) or "GOVERNANCE",
        }
        kwargs.update(overrides)
        return cls(spec, **kwargs)

    # -- API -------------------------------------------------------------------------
    def set_subject(self, **fields: Any) -> None:
        """Add subject fields for all later events (e.g. vault_entity_id, vault_role)."""
        self._base_subject.update(sanitize(fields))

    def emit(
        self,
        event: str,
        *,
        outcome: str = "ok",
        reason: str | None = None,
        object: Mapping[str, Any] | None = None,
        bytes: int | None = None,
        duration_s: float | None = None,
        durable: bool | None = None,
        **extra: Any,
    ) -> None:
        """Append one event.  Raises AuditError (fail-closed) when it cannot be written.

        ``durable``: whether ``emit`` returns only once the event is on disk (with the
        file sink's default ``sync="event"``).  By default every event is, except the
        steps that lead to a decision (:data:`STEP_EVENTS`: ``load.start``,
        ``verify.ok``, ``key.unwrap``): those are written at once, so a crashed
        process leaves them in the log (a ``load.start`` without a decision says the
        load did not complete), and reach the disk with the next durable event -- the
        load's ``load.ok`` / ``load.denied``, fsynced before the caller gets anything
        -- or at :meth:`close`.  One fsync per load instead of four.

        ``object``: artifact ``uri``, ``digest``, ``key_provider``, ``key_id``,
        ``key_version``, ``signer``, ...; ``extra``: other context (``subject=`` adds
        subject fields for this event, e.g. ``vault_request_id``).  Everything is
        sanitized: secret-named fields, bytes and token-like strings are redacted.
        """
        if not isinstance(event, str) or not _NAME_RE.match(event):
            raise AuditError(f"invalid audit event name {str(event)[:40]!r}")
        if not isinstance(outcome, str) or not _NAME_RE.match(outcome):
            raise AuditError(f"invalid audit outcome {str(outcome)[:40]!r}")
        if self._closed:
            raise AuditError("audit log is closed", hint="create a new AuditLog")
        subject = dict(self._base_subject)
        extra_subject = extra.pop("subject", None)
        if isinstance(extra_subject, Mapping):
            subject.update(sanitize(dict(extra_subject)))
        body: dict[str, Any] = {
            "v": FORMAT_VERSION,
            "time": utc_now(),
            "event": event,
            "outcome": outcome,
            "subject": subject,
        }
        if reason is not None:
            body["reason"] = scrub_text(str(reason))
        if object:
            body["object"] = sanitize(dict(object))
        if bytes is not None:
            body["bytes"] = int(bytes)
        if duration_s is not None:
            body["duration_s"] = round(float(duration_s), 6)
        if extra:
            body["extra"] = sanitize(extra)
        if durable is None:
            durable = event not in STEP_EVENTS
        if durable:
            self._dispatch(lambda sink: sink.append(body, self.checkpointer))
        else:
            self._dispatch(
                lambda sink: (
                    sink.append(body, self.checkpointer, durable=False)
                    if _takes_durable(sink)
                    else sink.append(body, self.checkpointer)
                )
            )

    def checkpoint(self) -> None:
        """Write (and anchor) a signed checkpoint now on every sink, if a key is set."""
        self._dispatch(lambda sink: sink.checkpoint(self.checkpointer))

    def flush(self) -> None:
        self._dispatch(lambda sink: sink.flush())

    def close(self) -> None:
        """Final checkpoint (if signing), flush, release files.  Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        _open_logs.discard(self)
        self._dispatch(lambda sink: sink.close(self.checkpointer))

    def _dispatch(self, action: Any) -> None:
        first: AuditError | None = None
        for sink in self.sinks:  # try every sink even if one fails
            try:
                action(sink)
            except AuditError as exc:
                first = first or exc
            except OSError as exc:
                first = first or AuditError(f"audit sink {sink.name} failed: {exc.strerror}")
        if first is None:
            return
        if self.fail_closed:
            raise first
        if not self._warned:
            self._warned = True
            _log.warning("audit event lost (fail-open): %s", first)

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"AuditLog(sinks={[s.name for s in self.sinks]!r}, fail_closed={self.fail_closed})"
