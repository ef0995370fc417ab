"""Audit records: canonical JSON, chain digests, the sanitizer and the subject.

A record is one JSON object per line.  Its digest is SHA-256 over the canonical
encoding of the parsed object (sorted keys, no whitespace, ASCII only), so a log
collector that re-serialises the line does not break the chain, while any change
of a value does.
"""

from __future__ import annotations

import datetime as _dt
import getpass
import hashlib
import json
import math
import os
import re
import socket
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

FORMAT_VERSION = 1
GENESIS = "sha256:" + "0" * 64
MAX_RECORD_BYTES = 16 * 1024  # a record larger than this is refused by writers and verifiers
MAX_STRING = 1024  # longer strings are truncated by the sanitizer
MAX_DEPTH = 4
MAX_ITEMS = 64
REDACTED = "[redacted]"

EVENTS = frozenset(
    {
        "encrypt",
        "decrypt",
        "rewrap",
        "sign",
        "verify.ok",
        "verify.failed",
        "load.start",
        "key.unwrap",
        "load.ok",
        "load.denied",
        "tamper.detected",
        "fetch",
        "push",
        "watermark.embed",
        "watermark.check",
        "fingerprint",
        "checkpoint",
        "log.rotate",
        "log.recover",
    }
)
OUTCOMES = frozenset({"ok", "denied", "error", "failed", "tamper"})


# What a writer killed inside ``write()`` leaves at the end of a file: a non-empty
# prefix of one canonical record line (``{``, then printable ASCII: canonical JSON
# escapes everything else), without its newline, at most one record long.
_TORN_RE = re.compile(rb'\{(?:"[\x20-\x7e]*)?')


def torn_fragment(data: bytes) -> bool:
    """Whether ``data`` (the bytes after a log's last newline) is a crash-torn record."""
    return 0 < len(data) <= MAX_RECORD_BYTES and _TORN_RE.fullmatch(data) is not None


def canonical(obj: Any) -> bytes:
    """The canonical encoding: sorted keys, no whitespace, ASCII, no NaN."""
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def parse_record(body: bytes, *, what: str) -> dict[str, Any]:
    """One audit line as a record: bounded JSON, with ``log``, ``seq`` and ``prev``.

    Raises :class:`AuditError` (never ``RecursionError``/``OverflowError``): verifiers
    report it, writers refuse to extend a log whose tail it is.
    """
    from weightguard._internal.foundation import boundedjson
    from weightguard.errors import AuditError

    rec = boundedjson.loads_canonical(  # canonical lines (all weightguard writes): fast
        body,
        what=what,
        max_bytes=MAX_RECORD_BYTES,
        # sanitize() nests at most MAX_DEPTH below a record field; slack for checkpoints
        max_depth=MAX_DEPTH + 4,
        floats=True,
        error=AuditError,
        hint="the log was edited or corrupted; keep it as evidence",
    )
    seq = rec.get("seq") if isinstance(rec, dict) else None
    if not (
        isinstance(rec, dict)
        and isinstance(rec.get("log"), str)
        and isinstance(seq, int)
        and not isinstance(seq, bool)
        and 0 <= seq < 2**63
        and isinstance(rec.get("prev"), str)
    ):
        raise AuditError(
            f"{what}: not an audit record (needs log, seq >= 0 and prev)",
            hint="the log was edited or corrupted; keep it as evidence",
        )
    return rec


def digest(record: Mapping[str, Any]) -> str:
    return "sha256:" + hashlib.sha256(canonical(record)).hexdigest()


def new_log_id() -> str:
    return str(uuid.uuid4())


@dataclass
class ChainState:
    """Where a log's chain stands: the next record's ``seq`` and ``prev``."""

    log_id: str
    next_seq: int = 0
    head: str = GENESIS
    last_is_checkpoint: bool = False

    def snapshot(self) -> tuple[int, str, bool]:
        return (self.next_seq, self.head, self.last_is_checkpoint)

    def restore(self, snapshot: tuple[int, str, bool]) -> None:
        self.next_seq, self.head, self.last_is_checkpoint = snapshot


def chain_record(body: dict[str, Any], state: ChainState) -> bytes:
    """Append ``body`` to ``state``'s chain; return the canonical line (with newline)."""
    from weightguard.errors import AuditError

    rec = dict(body)
    rec["log"] = state.log_id
    rec["seq"] = state.next_seq
    rec["prev"] = state.head
    line = canonical(rec)
    if len(line) > MAX_RECORD_BYTES:
        raise AuditError(
            f"audit record for event {body.get('event')!s:.40} is {len(line)} bytes "
            f"(limit {MAX_RECORD_BYTES})",
            hint="pass fewer or shorter object/extra fields",
        )
    state.head = "sha256:" + hashlib.sha256(line).hexdigest()
    state.next_seq += 1
    state.last_is_checkpoint = body.get("event") == "checkpoint"
    return line + b"\n"


def utc_now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> _dt.datetime:
    """Parse an ISO-8601 time (our records, or user input like 2025-01-31 / ...T10:00Z)."""
    t = text.strip()
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    value = _dt.datetime.fromisoformat(t)
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.UTC)
    return value


# ----------------------------------------------------------------------------- sanitizer

# Field names that must never carry a value into the log.  Exact safe names are allowed.
_SECRET_NAME = re.compile(
    r"(key|token|secret|passw|passphrase|credential|private|plaintext|cookie|session|"
    r"auth|bearer|jwt|signature|cipher|wrapped|nonce|seed)",
    re.IGNORECASE,
)
SAFE_NAMES = frozenset(
    {
        "key_id",
        "key_uri",
        "key_version",
        "key_provider",
        "key_versions",
        "checkpoint_key_id",
    }
)
# Well-known secret shapes, anywhere in a string.
_SECRET_SHAPES = re.compile(
    r"(hv[sbr]\.[A-Za-z0-9_\-]{20,}"  # Vault/OpenBao tokens
    r"|\bs\.[A-Za-z0-9]{24}\b"  # legacy Vault tokens
    r"|vault:v\d+:[A-Za-z0-9+/=]+"  # Vault Transit ciphertext / signatures
    r"|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.?[A-Za-z0-9_\-]*"  # JWT
    r"|-----BEGIN [A-Z ]*-----"  # PEM
    r"|\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"  # AWS access key ids
    r"|\bgh[pousr]_[A-Za-z0-9]{20,})"
)
# Each shape above contains one of these literally: a text holding none of them has no
# secret shape, found by substring tests (the alternation tries every position).
_SHAPE_LITERALS = ("hv", "s.", "vault:v", "eyJ", "-----BEGIN ", "AKIA", "ASIA", "gh")


def _may_have_shape(text: str) -> bool:
    return any(lit in text for lit in _SHAPE_LITERALS)


_DIGEST = re.compile(r"^(sha256|sha384|sha512):[0-9a-f]{64,128}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
# identifiers (not credentials) that are UUIDs; kept when the field has one of these names
ID_NAMES = frozenset(
    {"request_id", "vault_request_id", "entity_id", "vault_entity_id", "k8s_pod_uid", "log_id"}
)
_TOKEN_SPLIT = re.compile(r"[\s,;:@?&=()\[\]{}<>\"'|]+")
_BLOB_CHARS = re.compile(r"^[A-Za-z0-9+/_\-.~]+$")
MIN_BLOB = 20  # shorter tokens are not treated as possible key material


def _entropy(token: str) -> float:
    counts: dict[str, int] = {}
    for ch in token:
        counts[ch] = counts.get(ch, 0) + 1
    n = len(token)
    return -sum(c / n * math.log2(c / n) for c in counts.values())


_WORD_SPLIT = re.compile(r"[-._~+/]")
_RANDOM_CASE = re.compile(r"[A-Z][a-z][A-Z]|[A-Z]{3}")


def _random_letters(letters: str) -> bool:
    """Mixed-case letters that do not look like words: few vowels (random ~19%, words
    ~40%) or case patterns words rarely have (aBc, ABC)."""
    if not (any(c.isupper() for c in letters) and any(c.islower() for c in letters)):
        return False
    vowels = sum(1 for c in letters if c in "aeiouAEIOU")
    return vowels < 0.3 * len(letters) or bool(_RANDOM_CASE.search(letters))


def _wordish(piece: str) -> bool:
    if len(piece) < 8 or piece.isdigit():
        return True
    return piece.isalpha() and not _random_letters(piece)


def _looks_like_blob(token: str) -> bool:
    """A long, random-looking token: hex/base64/base64url key material or a token.

    File names such as ``model-00001-of-00004.safetensors`` (only words, numbers and
    short pieces between separators) are not blobs; random bytes in hex or base64
    almost always contain a long piece mixing letters and digits or random-case
    letters.  About 0.002% of random base64 keys of 16 bytes slip through (measured);
    sanitize() also redacts by field name, and callers must never pass keys at all.
    """
    if len(token) < MIN_BLOB or not _BLOB_CHARS.match(token):
        return False
    core = _WORD_SPLIT.sub("", token)
    if not any(c.isdigit() for c in core):
        return _random_letters(core) and _entropy(core) >= 3.0
    if not any(c.isalpha() for c in core):
        return False
    if all(_wordish(p) for p in _WORD_SPLIT.split(token)):
        return False
    # hex (<= 4 bits/char) and base64 (<= 6 bits/char) of random bytes sit near the max;
    # words, paths and version strings sit far below.
    limit = 3.0 if all(c in "0123456789abcdefABCDEF" for c in core) else 3.5
    return _entropy(core) >= limit


def looks_secret(text: str) -> bool:
    """True when ``text`` contains something that may be key material or a credential."""
    if _DIGEST.match(text):
        return False
    if _may_have_shape(text) and _SECRET_SHAPES.search(text):
        return True
    return any(_looks_like_blob(tok) for tok in _TOKEN_SPLIT.split(text))


_URI_IN_TEXT = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.\-]*://[^\s'\"<>()\[\]{},;]+")


# Shorter than a blob and only letters, digits and "_" (field names, "cpu", "ok"): no
# secret shape fits (each needs ".", ":", "-" or 20 characters), no URI, one word that
# is not a blob, so scrub_text returns it as it is: said at once, as most keys are.
_SHORT_WORD = re.compile(rf"[A-Za-z0-9_]{{0,{MIN_BLOB - 1}}}")


_WORD_SEPARATORS = re.compile(r"(\s+|[,;:@?&=()\[\]{}<>\"'|])")
_URI_PARTS = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.\-]*://)([^/?#]*@)?([^?#]*)")
_QUERY = re.compile(r"[?#]")


def _scrub_words(text: str) -> str:
    out = _SECRET_SHAPES.sub(REDACTED, text) if _may_have_shape(text) else text
    parts = _WORD_SEPARATORS.split(out)
    return "".join(REDACTED if _looks_like_blob(p) else p for p in parts)


def scrub_text(text: str) -> str:
    """Replace secret-looking parts of free text (reasons, messages) by ``[redacted]``.

    URIs in the text are kept (minus user-info, query and fragment, where presigned
    signatures and tokens live); everything else is checked word by word.
    """
    if _SHORT_WORD.fullmatch(text) or _DIGEST.match(text):
        return text
    pieces: list[str] = []
    pos = 0
    for m in _URI_IN_TEXT.finditer(text):
        pieces.append(_scrub_words(text[pos : m.start()]))
        pieces.append(scrub_uri(m.group(0)))
        pos = m.end()
    pieces.append(_scrub_words(text[pos:]))
    out = "".join(pieces)
    if len(out) > MAX_STRING:
        out = out[:MAX_STRING] + "...[truncated]"
    return out


# Identifier fields (locations, key ids, signer identities, digests): kept as given,
# minus URI user-info/query/fragment, unless they contain a known credential shape.
URI_NAMES = frozenset(
    {
        "uri",
        "path",
        "file",
        "key_uri",
        "key_id",
        "key_provider",
        "signer",
        "digest",
        "artifact_digest",
        "bundle_digest",
        "artifact",
        "source",
        "destination",
        "url",
    }
)


def scrub_uri(text: str) -> str:
    """Artifact locations: drop user-info and query/fragment (presigned-URL signatures,
    tokens); keep the path as is (content hashes in paths are not secrets)."""
    m = _URI_PARTS.match(text)
    out = (m.group(1) + m.group(3)) if m else _QUERY.split(text, maxsplit=1)[0]
    if _may_have_shape(out) and _SECRET_SHAPES.search(out):
        return REDACTED
    return out[:MAX_STRING]


def secret_name(name: str) -> bool:
    return name not in SAFE_NAMES and bool(_SECRET_NAME.search(name))


def sanitize(value: Any, *, name: str = "", depth: int = 0) -> Any:
    """Return a JSON-safe copy of ``value`` with anything secret-looking removed.

    * fields whose name suggests a secret (key, token, secret, password, ...) are
      replaced by ``[redacted]`` (exact allowed names: key_id, key_uri, key_version, ...);
    * bytes-like values are never logged (they may be plaintext or key bytes);
    * strings with token shapes or long high-entropy runs are redacted in place;
    * nesting, list length and string length are bounded.
    """
    if name and secret_name(name):
        return REDACTED
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return round(value, 6) if math.isfinite(value) else None
    if isinstance(value, str):
        if name in ID_NAMES and _UUID.match(value):
            return value
        if name in URI_NAMES:
            return scrub_uri(value)
        return scrub_text(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return REDACTED
    if depth >= MAX_DEPTH:
        return "[too deep]"
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for i, (k, v) in enumerate(value.items()):
            if i >= MAX_ITEMS:
                out["_truncated"] = True
                break
            key = scrub_text(str(k))[:128]
            out[key] = sanitize(v, name=key, depth=depth + 1)
        return out
    if isinstance(value, list | tuple | set | frozenset):
        items = list(value)
        res = [sanitize(v, depth=depth + 1) for v in items[:MAX_ITEMS]]
        if len(items) > MAX_ITEMS:
            res.append("[truncated]")
        return res
    if isinstance(value, os.PathLike):
        return scrub_text(os.fspath(value)) if isinstance(os.fspath(value), str) else REDACTED
    # Anything else (objects with a repr that may show secrets) is named by type only.
    return f"[{type(value).__name__}]"


# ----------------------------------------------------------------------------- subject

PODINFO_DIR_DEFAULT = "/etc/podinfo"
SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"

# subject field -> (env vars in order, downward-API file names in order)
_K8S_FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "k8s_namespace": (("WEIGHTGUARD_K8S_NAMESPACE", "POD_NAMESPACE"), ("namespace",)),
    "k8s_pod": (("WEIGHTGUARD_K8S_POD", "POD_NAME"), ("name", "pod_name", "podName")),
    "k8s_service_account": (
        ("WEIGHTGUARD_K8S_SERVICE_ACCOUNT", "POD_SERVICE_ACCOUNT", "SERVICE_ACCOUNT"),
        ("serviceAccountName", "service_account"),
    ),
    "k8s_node": (("WEIGHTGUARD_K8S_NODE", "NODE_NAME"), ("nodeName", "node_name")),
    "k8s_pod_uid": (("WEIGHTGUARD_K8S_POD_UID", "POD_UID"), ("uid", "pod_uid")),
}


def _read_small(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            data = f.read(254)
    except OSError:
        return None
    text = data.decode("utf-8", "replace").strip()
    return text or None


def collect_subject(
    env: Mapping[str, str] | None = None,
    *,
    podinfo_dir: str | None = None,
    sa_namespace_file: str | None = None,
) -> dict[str, Any]:
    """Who is acting: OS user, host, pid and, in Kubernetes, namespace/pod/SA/node.

    Kubernetes fields come from environment variables (downward API ``env``) or from
    files of a downward-API volume in ``podinfo_dir`` (env WEIGHTGUARD_PODINFO_DIR,
    default /etc/podinfo).  The service-account *token* is never read.
    """
    env = os.environ if env is None else env
    subject: dict[str, Any] = {"pid": os.getpid()}
    try:
        subject["user"] = getpass.getuser()
    except (KeyError, OSError):
        subject["uid"] = os.getuid()
    subject["host"] = socket.gethostname()
    pdir = podinfo_dir or env.get("WEIGHTGUARD_PODINFO_DIR") or PODINFO_DIR_DEFAULT
    for field, (env_names, file_names) in _K8S_FIELDS.items():
        value: str | None = None
        for e in env_names:
            if env.get(e):
                value = env[e]
                break
        if value is None and os.path.isdir(pdir):
            for fname in file_names:
                value = _read_small(os.path.join(pdir, fname))
                if value is not None:
                    break
        if value is None and field == "k8s_namespace":
            value = _read_small(
                sa_namespace_file or env.get("WEIGHTGUARD_SA_NAMESPACE_FILE") or SA_NAMESPACE_FILE
            )
        if value is not None:
            subject[field] = value
    for field, env_name in (
        ("vault_entity_id", "WEIGHTGUARD_VAULT_ENTITY_ID"),
        ("vault_role", "WEIGHTGUARD_VAULT_ROLE"),
    ):
        if env.get(env_name):
            subject[field] = env[env_name]
    return sanitize(subject)
