"""Signed checkpoints of an audit log and their anchors outside the log.

A checkpoint says "log L had S records and the digest of record S-1 was H at time T".
It is signed with Ed25519: a local key file, or a Vault/OpenBao Transit key of type
ed25519 (the private key never leaves Vault).  The signed checkpoint is written into
the log as a record *and* published to an anchor the log writer cannot rewrite: an S3
object under Object Lock retention, or a Vault KV v2 secret written with
check-and-set.  The verifier compares the log with the newest anchored checkpoint, so a
cut-off tail is detected.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import os
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlparse

from weightguard._internal.audit.record import canonical
from weightguard._internal.foundation.s3 import audit_client as s3_client
from weightguard._internal.foundation.s3 import parse_s3_uri
from weightguard._internal.foundation.s3errors import s3_cause
from weightguard.errors import (
    AuditError,
    ConfigError,
    FormatError,
    VerificationError,
)

CHECKPOINT_TYPE = "weightguard.audit.checkpoint/v1"
MAX_ANCHOR_BYTES = 64 * 1024


def checkpoint_payload(checkpoint: dict[str, Any]) -> bytes:
    """The exact bytes that are signed: canonical JSON of the checkpoint body."""
    return canonical({"type": CHECKPOINT_TYPE, **checkpoint})


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def ed25519_key_id(public_raw: bytes) -> str:
    return "ed25519:" + hashlib.sha256(public_raw).hexdigest()[:16]


# ----------------------------------------------------------------------------- signers


class CheckpointSigner(Protocol):
    key_id: str

    def sign(self, payload: bytes) -> dict[str, str]:
        """Return ``{"alg": "ed25519", "key_id": ..., "value": <base64 signature>}``."""
        ...


class Ed25519FileSigner:
    """Signs with an Ed25519 private key from a PEM (PKCS#8) file.

    The key stays in this object; ``repr`` shows only the key id.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                data = bytearray(f.read(16 * 1024))
        except OSError as exc:
            raise ConfigError(
                f"cannot read audit checkpoint key {self.path}: {exc.strerror}",
                hint="set WEIGHTGUARD_AUDIT_SIGNING_KEY to a readable Ed25519 PEM key "
                "(create one with `weightguard audit keygen`)",
            ) from None
        try:
            key = serialization.load_pem_private_key(bytes(data), password=None)
        except (ValueError, TypeError):
            raise ConfigError(
                f"audit checkpoint key {self.path} is not an unencrypted PEM private key",
                hint="create one with `weightguard audit keygen`",
            ) from None
        finally:
            data[:] = b"\0" * len(data)
        if not isinstance(key, Ed25519PrivateKey):
            raise ConfigError(
                f"audit checkpoint key {self.path} is not an Ed25519 key",
                hint="create one with `weightguard audit keygen`",
            )
        self._key = key
        pub = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.key_id = ed25519_key_id(pub)

    def sign(self, payload: bytes) -> dict[str, str]:
        return {"alg": "ed25519", "key_id": self.key_id, "value": _b64(self._key.sign(payload))}

    def __repr__(self) -> str:
        return f"Ed25519FileSigner(key_id={self.key_id!r})"


def _parse_vault_uri(uri: str) -> tuple[str, str]:
    from weightguard._internal.foundation.vault import parse_vault_uri

    return parse_vault_uri(uri, what="audit checkpoint key")


def _vault_client(client: Any = None) -> Any:
    if client is not None:
        return client
    from weightguard._internal.foundation.vault import vault_client

    return vault_client()


_VAULT_DOING = {  # what map_vault_error says was being done ("... while <doing>")
    "Transit sign": "signing an audit checkpoint with {uri}",
    "Transit read-key": "reading the audit checkpoint key {uri}",
    "KV anchor write": "writing the audit anchor {uri}",
    "KV anchor list": "listing the audit anchors at {uri}",
    "KV anchor read": "reading the audit anchor {uri}",
}


def _vault_error(action: str, uri: str, exc: Exception, client: Any = None) -> AuditError:
    """One AuditError that keeps the cause in words (unreachable, TLS, expired token,
    missing permission: foundation.vault's mapping), not only its class name."""
    from weightguard._internal.foundation.vault import map_vault_error

    doing = _VAULT_DOING.get(action, "using {uri} for the audit").format(uri=uri)
    cause = map_vault_error(exc, doing, client=client)
    return AuditError(
        f"Vault {action} for {uri} failed: {cause.message}",
        hint=cause.hint or "check VAULT_ADDR, the token's policy and that the key/path exists",
    )


class TransitCheckpointSigner:
    """Signs with an ed25519 Transit key in Vault/OpenBao (``vault://transit/<name>``).

    Only the checkpoint bytes travel to Vault; the private key never enters the pod.
    """

    def __init__(self, uri: str, *, client: Any = None) -> None:
        from weightguard._internal.foundation.vault import VaultSession

        self.uri = uri
        self.mount, self.name = _parse_vault_uri(uri)
        self._session = VaultSession(client)  # logs in again when its token expires
        self.key_id = f"vault://{self.mount}/{self.name}"

    def sign(self, payload: bytes) -> dict[str, str]:
        try:
            resp = self._session.call(
                lambda c: c.secrets.transit.sign_data(
                    name=self.name, hash_input=_b64(payload), mount_point=self.mount
                )
            )
            sig = str(resp["data"]["signature"])
        except Exception as exc:  # hvac raises many types; map all to one message
            raise _vault_error("Transit sign", self.uri, exc, self._session.current) from None
        # vault:v<version>:<base64>
        try:
            _, ver, value = sig.split(":", 2)
            version = int(ver.lstrip("v"))
        except ValueError:
            raise AuditError(f"unexpected Transit signature format from {self.uri}") from None
        return {"alg": "ed25519", "key_id": f"{self.key_id}:v{version}", "value": value}

    def __repr__(self) -> str:
        return f"TransitCheckpointSigner({self.key_id!r})"


def signer_for(spec: str | os.PathLike[str], *, vault_client: Any = None) -> CheckpointSigner:
    """``vault://mount/key`` -> Transit signer; anything else is an Ed25519 PEM key file."""
    text = os.fspath(spec)
    if text.startswith(("vault://", "openbao://", "bao://")):
        return TransitCheckpointSigner(text, client=vault_client)
    if text.startswith("file://"):
        text = text[len("file://") :]
    return Ed25519FileSigner(text)


def generate_ed25519_keypair(private_path: str, public_path: str) -> str:
    """Write a new Ed25519 key pair (private 0600, atomic) and return the key id."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from weightguard.errors import DestinationError

    key = Ed25519PrivateKey.generate()
    priv = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    for path, data, mode in ((private_path, priv, 0o600), (public_path, pub, 0o644)):
        if os.path.exists(path):
            raise DestinationError(
                f"{path} already exists", hint="choose another path or remove it first"
            )
        d = os.path.dirname(os.path.abspath(path))
        tmp = os.path.join(d, f".{os.path.basename(path)}.tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    return ed25519_key_id(raw)


# ----------------------------------------------------------------------------- verifiers


@dataclass
class CheckpointVerifier:
    """Public keys that may sign checkpoints, by key id."""

    keys: dict[str, Any]  # key_id -> Ed25519PublicKey
    source: str

    def check(self, checkpoint: dict[str, Any], sig: Any) -> str | None:
        """None when ``sig`` is a valid signature over ``checkpoint``; else why not."""
        from cryptography.exceptions import InvalidSignature

        if not isinstance(sig, dict) or sig.get("alg") != "ed25519":
            return "missing or unsupported signature algorithm"
        key = self.keys.get(str(sig.get("key_id")))
        if key is None:
            return f"signed by unknown key {sig.get('key_id')!s:.80} (expected {self.source})"
        try:
            key.verify(_unb64(str(sig.get("value", ""))), checkpoint_payload(checkpoint))
        except (InvalidSignature, ValueError):
            return "signature does not verify"
        return None


def load_public_key_file(path: str | os.PathLike[str]) -> CheckpointVerifier:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    p = os.fspath(path)
    try:
        with open(p, "rb") as f:
            data = f.read(16 * 1024)
    except OSError as exc:
        raise ConfigError(f"cannot read checkpoint public key {p}: {exc.strerror}") from None
    key: Any
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError:
        try:  # accept the private key file too (the public half is derived)
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise ConfigError(
                f"{p} is not a PEM Ed25519 public key",
                hint="pass the .pub file written by `weightguard audit keygen`",
            ) from None
        if isinstance(key, Ed25519PrivateKey):
            key = key.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{p} is not an Ed25519 public key")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return CheckpointVerifier({ed25519_key_id(raw): key}, source=p)


def load_vault_public_keys(uri: str, *, client: Any = None) -> CheckpointVerifier:
    """Fetch every version's public key of an ed25519 Transit key (no secret needed)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    mount, name = _parse_vault_uri(uri)
    c = _vault_client(client)
    try:
        resp = c.secrets.transit.read_key(name=name, mount_point=mount)
        versions = resp["data"]["keys"]
    except Exception as exc:
        raise _vault_error("Transit read-key", uri, exc, c) from None
    keys: dict[str, Any] = {}
    for ver, info in versions.items():
        if isinstance(info, dict) and info.get("public_key"):
            keys[f"vault://{mount}/{name}:v{int(ver)}"] = Ed25519PublicKey.from_public_bytes(
                _unb64(str(info["public_key"]))
            )
    if not keys:
        raise ConfigError(
            f"Transit key {uri} has no public keys", hint="the key must be of type ed25519"
        )
    return CheckpointVerifier(keys, source=uri)


def verifier_for(spec: str, *, vault_client: Any = None) -> CheckpointVerifier:
    if spec.startswith(("vault://", "openbao://", "bao://")):
        return load_vault_public_keys(spec, client=vault_client)
    return load_public_key_file(spec[len("file://") :] if spec.startswith("file://") else spec)


# ----------------------------------------------------------------------------- anchors


class Anchor(Protocol):
    uri: str

    def publish(self, signed: dict[str, Any]) -> None:
        """Store a signed checkpoint ``{"checkpoint": {...}, "sig": {...}}``."""
        ...

    def latest(self, log_id: str) -> dict[str, Any] | None:
        """The anchored checkpoint with the largest size for ``log_id``, or None."""
        ...

    def log_ids(self) -> list[str]:
        """Every log id this anchor holds checkpoints for."""
        ...


def _parse_s3(uri: str) -> tuple[str, str]:
    """A sink's or anchor's ``s3://bucket/prefix``: the prefix without its slashes."""
    bucket, key = parse_s3_uri(uri, error=ConfigError, hint="use s3://bucket/prefix")
    return bucket, key.strip("/")


class S3Anchor:
    """Checkpoints as immutable objects ``<prefix>/<log id>/checkpoints/<size>.json``.

    Each object is written with Object Lock retention (``mode`` COMPLIANCE or GOVERNANCE,
    ``retention_days``), so neither the log writer nor an intruder with its credentials
    can delete or overwrite it before the retention ends.  The bucket must have been
    created with Object Lock enabled.
    """

    def __init__(
        self,
        uri: str,
        *,
        client: Any = None,
        retention_days: int = 365,
        mode: str = "GOVERNANCE",
    ) -> None:
        self.uri = uri
        self.bucket, self.prefix = _parse_s3(uri)
        self._client = client
        self.retention_days = retention_days
        self.mode = mode

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = s3_client()
        return self._client

    def _key(self, log_id: str, size: int) -> str:
        base = f"{self.prefix}/" if self.prefix else ""
        return f"{base}{log_id}/checkpoints/{size:012d}.json"

    def publish(self, signed: dict[str, Any]) -> None:
        cp = signed["checkpoint"]
        until = _dt.datetime.now(_dt.UTC) + _dt.timedelta(days=self.retention_days)
        body = canonical(signed)
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self._key(cp["log"], cp["size"]),
                Body=body,
                ContentType="application/json",
                ContentMD5=base64.b64encode(hashlib.md5(body).digest()).decode(),  # noqa: S324
                ObjectLockMode=self.mode,
                ObjectLockRetainUntilDate=until,
            )
        except Exception as exc:
            raise AuditError(
                f"cannot anchor audit checkpoint to {self.uri} ({s3_cause(exc)})",
                hint="check the bucket exists with Object Lock enabled and the S3 credentials",
            ) from None

    def log_ids(self) -> list[str]:
        base = f"{self.prefix}/" if self.prefix else ""
        out: list[str] = []
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base, Delimiter="/"
            )
            for page in pages:
                for cp in page.get("CommonPrefixes", []):
                    log_id = cp["Prefix"][len(base) :].strip("/")
                    if log_id and self._has_checkpoints(log_id):
                        out.append(log_id)
        except AuditError:
            raise
        except Exception as exc:
            raise AuditError(
                f"cannot list audit anchor {self.uri} ({s3_cause(exc)})",
                hint="check the S3 endpoint and credentials",
            ) from None
        return out

    def _has_checkpoints(self, log_id: str) -> bool:
        base = f"{self.prefix}/" if self.prefix else ""
        resp = self.client.list_objects_v2(
            Bucket=self.bucket, Prefix=f"{base}{log_id}/checkpoints/", MaxKeys=1
        )
        return bool(resp.get("Contents"))

    def latest(self, log_id: str) -> dict[str, Any] | None:
        base = f"{self.prefix}/" if self.prefix else ""
        prefix = f"{base}{log_id}/checkpoints/"
        best: str | None = None
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in pages:
                for obj in page.get("Contents", []):
                    k = obj["Key"]
                    if best is None or k > best:
                        best = k
            if best is None:
                return None
            resp = self.client.get_object(Bucket=self.bucket, Key=best)
            data = resp["Body"].read(MAX_ANCHOR_BYTES + 1)
        except Exception as exc:
            raise AuditError(
                f"cannot read audit anchor {self.uri} ({s3_cause(exc)})",
                hint="check the S3 endpoint and credentials",
            ) from None
        if len(data) > MAX_ANCHOR_BYTES:
            raise AuditError(f"anchor object {best} is too large")
        return _parse_anchor(data, f"s3://{self.bucket}/{best}")


class VaultKVAnchor:
    """Checkpoints in a Vault KV v2 secret ``<path>/<log id>``, written with check-and-set.

    CAS makes concurrent writers serialise; a checkpoint never replaces a larger one.
    KV v2 keeps the version history.
    """

    def __init__(self, uri: str, *, client: Any = None) -> None:
        p = urlparse(uri)
        if p.scheme not in ("vault-kv", "vaultkv", "openbao-kv"):
            raise ConfigError(f"not a Vault KV URI: {uri!r}", hint="use vault-kv://<mount>/<path>")
        self.uri = uri
        self.mount = p.netloc
        self.path = p.path.strip("/")
        if not self.mount:
            raise ConfigError(f"Vault KV URI {uri!r} needs a mount", hint="vault-kv://secret/path")
        from weightguard._internal.foundation.vault import VaultSession

        self._session = VaultSession(client)  # logs in again when its token expires

    def _secret_path(self, log_id: str) -> str:
        return f"{self.path}/{log_id}" if self.path else log_id

    def _read(self, log_id: str) -> tuple[dict[str, Any] | None, int]:
        import hvac.exceptions

        try:
            resp = self._session.call(
                lambda c: c.secrets.kv.v2.read_secret_version(
                    path=self._secret_path(log_id),
                    mount_point=self.mount,
                    raise_on_deleted_version=True,
                )
            )
        except hvac.exceptions.InvalidPath:
            return None, 0
        data = resp["data"]["data"]
        version = int(resp["data"]["metadata"]["version"])
        raw = data.get("signed")
        if not isinstance(raw, str) or len(raw) > MAX_ANCHOR_BYTES:
            raise AuditError(f"anchor {self.uri} for log {log_id} is malformed")
        return _parse_anchor(raw.encode(), self.uri), version

    def _write(self, log_id: str, text: str, cas: int) -> None:
        self._session.call(
            lambda c: c.secrets.kv.v2.create_or_update_secret(
                path=self._secret_path(log_id),
                secret={"signed": text},
                cas=cas,
                mount_point=self.mount,
            )
        )

    def publish(self, signed: dict[str, Any]) -> None:
        cp = signed["checkpoint"]
        for _ in range(8):
            try:
                current, version = self._read(cp["log"])
                if current is not None and int(current["checkpoint"]["size"]) >= int(cp["size"]):
                    return  # a newer checkpoint is already anchored
                self._write(cp["log"], canonical(signed).decode(), version)
                return
            except AuditError:
                raise
            except Exception as exc:
                import hvac.exceptions

                if isinstance(exc, hvac.exceptions.InvalidRequest) and "check-and-set" in str(exc):
                    continue  # another writer won the race; re-read and retry
                raise _vault_error(
                    "KV anchor write", self.uri, exc, self._session.current
                ) from None
        raise AuditError(f"Vault KV anchor {self.uri} kept changing; checkpoint not anchored")

    def log_ids(self) -> list[str]:
        import hvac.exceptions

        try:
            resp = self._session.call(
                lambda c: c.secrets.kv.v2.list_secrets(path=self.path, mount_point=self.mount)
            )
        except hvac.exceptions.InvalidPath:
            return []
        except Exception as exc:
            raise _vault_error("KV anchor list", self.uri, exc, self._session.current) from None
        keys = resp.get("data", {}).get("keys", [])
        return [str(k) for k in keys if isinstance(k, str) and not k.endswith("/")]

    def latest(self, log_id: str) -> dict[str, Any] | None:
        try:
            return self._read(log_id)[0]
        except AuditError:
            raise
        except Exception as exc:
            raise _vault_error("KV anchor read", self.uri, exc, self._session.current) from None


def _parse_anchor(data: bytes, where: str) -> dict[str, Any]:
    from weightguard._internal.foundation import boundedjson

    try:
        obj = boundedjson.loads(
            data, what=where, max_bytes=MAX_ANCHOR_BYTES, max_depth=8, floats=True
        )
        cp = obj["checkpoint"]
        _ = (str(cp["log"]), int(cp["size"]), str(cp["head"]), obj["sig"])
    except (FormatError, ValueError, KeyError, TypeError):
        raise VerificationError(
            f"anchored checkpoint {where} is malformed",
            hint="the anchor was written by something else or is corrupt",
        ) from None
    return obj


def anchor_for(uri: str, *, s3: Any = None, vault_client: Any = None, **options: Any) -> Anchor:
    if uri.startswith("s3://"):
        return S3Anchor(uri, client=s3, **options)
    if uri.startswith(("vault-kv://", "vaultkv://", "openbao-kv://")):
        return VaultKVAnchor(uri, client=vault_client)
    raise ConfigError(
        f"unsupported audit anchor {uri!r}",
        hint="use s3://bucket/prefix (Object Lock) or vault-kv://mount/path",
    )
