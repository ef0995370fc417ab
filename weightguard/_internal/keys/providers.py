"""Key providers: wrap and unwrap per-file data keys (envelope encryption).

Providers are addressed by URI:

* ``vault://<transit-mount>/<key>`` -- Vault/OpenBao Transit.  The key must be created
  with ``derived=true``; the per-model *context* selects a derived key, so a grant that
  lets a pod decrypt one model's data keys does not open another's.  The key version is
  recorded.  ``unwrap_many``/``wrap_many`` are one batch request.
* ``awskms://<key-id | key-arn | alias/name>`` -- AWS KMS; the context is bound as the
  EncryptionContext ``{"weightguard:context": <context>}``.  Endpoint override:
  ``AWS_ENDPOINT_URL_KMS`` or ``provider_for(uri, endpoint_url=...)``.
* ``file://<path>`` -- a local 32-byte key-encryption key, for development and tests
  only (a warning is printed on stderr each time one is used).

Data keys are returned as ``bytearray`` so the holder can wipe them
(:func:`weightguard._internal.foundation.memory.wipe`).  Heavy clients (hvac, boto3) are imported
only when a provider is used.
"""

from __future__ import annotations

import base64
import errno
import fnmatch
import hashlib
import hmac
import logging
import os
import re
import stat
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from weightguard._internal.foundation.memory import wipe
from weightguard._internal.foundation.uris import is_vault_uri
from weightguard.errors import (
    ConfigError,
    DependencyMissing,
    KeyAccessDenied,
    KeyProviderError,
    KeyUnavailableError,
    KeyVersionRetired,
    WeightguardError,
    WrongKeyError,
)
from weightguard.manifest import WrappedKey

# Key providers are part of encryption: their messages go where crypt's do.
_log = logging.getLogger("weightguard.crypt")

__all__ = [
    "ALLOW_KEY_ENV",
    "DATA_KEY_SIZE",
    "AwsKmsProvider",
    "FileKeyProvider",
    "KeyProvider",
    "VaultTransitProvider",
    "WrappedKey",
    "allowed_key_patterns",
    "choose_key_uri",
    "create_key_file",
    "provider_for",
    "validate_context",
]

DATA_KEY_SIZE = 32
MAX_CONTEXT_LEN = 512
_FILE_WRAP_AAD = b"weightguard/v1 file-wrap\x00"
_FILE_KID_LABEL = b"weightguard/v1 key id"
_VAULT_VERSION = re.compile(r"^vault:v(\d+):")
ALLOW_KEY_ENV = "WEIGHTGUARD_ALLOW_KEY"  # spelled as --allow-key (weightguard.vocabulary)
OLD_ALLOW_KEY_ENV = "WEIGHTGUARD_ALLOWED_KEYS"  # read until the next release, with a warning
MAX_KEY_FILE = 4096  # 32 raw bytes or 64 hex digits plus whitespace; anything else is wrong
_KEY_URI_CHARS = re.compile(r"^[A-Za-z0-9._~:/@+=,*-]+$")


# --------------------------------------------------------------------------- key choice
#
# The wrapped-key reference in an artifact header cannot be authenticated before the
# key is known (the MAC needs the data key), so it is attacker-controlled input.  The
# caller decides which references may be used; the header only picks among them.


def allowed_key_patterns(allowed: Iterable[str] | str | None = None) -> tuple[str, ...]:
    """The caller's allow-list: ``allowed`` plus ``$WEIGHTGUARD_ALLOW_KEY`` (and the
    previous release's ``$WEIGHTGUARD_ALLOWED_KEYS``, with a FutureWarning).

    The variable holds patterns separated by commas or whitespace.  Patterns are
    shell-style (``vault://transit/*``, ``awskms://alias/models-*``); a ``file://``
    entry only ever matches the identical URI (a wildcard would let an artifact pick
    any file the process can read).
    """
    out: list[str] = []
    if isinstance(allowed, str):
        allowed = [allowed]
    for p in allowed or ():
        if not isinstance(p, str) or not p.strip():
            raise ConfigError("an allowed key pattern must be a non-empty string")
        out.append(p.strip())
    env = os.environ.get(ALLOW_KEY_ENV, "")
    old = os.environ.get(OLD_ALLOW_KEY_ENV, "")
    if old:
        warnings.warn(
            f"{OLD_ALLOW_KEY_ENV} is deprecated: use {ALLOW_KEY_ENV} (the old name is read "
            "until the next release)",
            FutureWarning,
            stacklevel=2,
        )
        env = f"{env},{old}"
    out.extend(p for p in re.split(r"[\s,]+", env) if p)
    return tuple(out)


def _matches(uri: str, pattern: str) -> bool:
    if pattern.startswith("file://") or uri.startswith("file://"):
        return hmac.compare_digest(uri.encode(), pattern.encode())
    return fnmatch.fnmatchcase(uri, pattern)


def choose_key_uri(
    header_uri: str,
    *,
    key: str | None = None,
    allowed: Iterable[str] | str | None = None,
    where: str = "the artifact",
) -> str:
    """The key URI to use for an artifact whose header names ``header_uri``.

    ``key`` (the caller's explicit choice) always wins.  Otherwise the header's
    reference is used only if the caller allows it: it must match a pattern of
    :func:`allowed_key_patterns`; with no patterns configured, ``vault://`` and
    ``awskms://`` references are allowed (they reach only the caller's configured
    server with the caller's credentials) and ``file://`` ones never are.  Refusals
    are :class:`KeyAccessDenied` before any provider is contacted.
    """
    if key is not None:
        return key
    shown = repr(header_uri[:200]) if isinstance(header_uri, str) else "a non-string"
    hint = (
        "name the key yourself (--data-key URI), or allow the reference with --allow-key "
        f"PATTERN or {ALLOW_KEY_ENV}"
    )
    if (
        not isinstance(header_uri, str)
        or not _KEY_URI_CHARS.match(header_uri)
        or "/../" in header_uri + "/"
        or "/./" in header_uri + "/"
    ):
        raise KeyAccessDenied(f"{where} names key {shown}, which is not a valid key URI", hint=hint)
    patterns = allowed_key_patterns(allowed)
    if any(_matches(header_uri, p) for p in patterns):
        return header_uri
    if header_uri.startswith("file://"):
        raise KeyAccessDenied(
            f"{where} names key file {shown}; a key file is used only when the caller names it",
            hint=hint,
        )
    if not patterns and (is_vault_uri(header_uri) or header_uri.startswith("awskms://")):
        return header_uri
    raise KeyAccessDenied(
        f"{where} names key {shown}, which is not in the allowed keys "
        f"({', '.join(patterns)[:300] or 'none'})",
        hint=hint,
    )


@runtime_checkable
class KeyProvider(Protocol):
    """Wraps/unwraps 32-byte data keys.  Returned keys are ``bytearray``; caller wipes."""

    uri: str

    def generate(self, context: str) -> tuple[bytearray, WrappedKey]: ...
    def generate_many(self, context: str, count: int) -> list[tuple[bytearray, WrappedKey]]: ...
    def wrap(self, data_key: bytearray, context: str) -> WrappedKey: ...
    def wrap_many(self, data_keys: Sequence[bytearray], context: str) -> list[WrappedKey]: ...
    def unwrap(self, wrapped: WrappedKey) -> bytearray: ...
    def unwrap_many(self, wrapped: Sequence[WrappedKey]) -> list[bytearray]: ...


def validate_context(context: str) -> str:
    """Check a key context (model identity): 1..512 printable characters."""
    if not isinstance(context, str) or not context or len(context) > MAX_CONTEXT_LEN:
        raise ConfigError(
            f"key context must be 1..{MAX_CONTEXT_LEN} characters",
            hint="pass --context with the model's identity, e.g. org/model-name",
        )
    if not context.isprintable():
        raise ConfigError("key context must contain printable characters only")
    return context


class _BaseProvider:
    """generate/wrap/unwrap in terms of the batch operations."""

    uri: str

    def __repr__(self) -> str:
        return f"{type(self).__name__}(uri={self.uri!r})"

    def wrap_many(self, data_keys: Sequence[bytearray], context: str) -> list[WrappedKey]:
        raise NotImplementedError

    def unwrap_many(self, wrapped: Sequence[WrappedKey]) -> list[bytearray]:
        raise NotImplementedError

    def generate(self, context: str) -> tuple[bytearray, WrappedKey]:
        return self.generate_many(context, 1)[0]

    def generate_many(self, context: str, count: int) -> list[tuple[bytearray, WrappedKey]]:
        keys = [bytearray(os.urandom(DATA_KEY_SIZE)) for _ in range(count)]
        try:
            wrapped = self.wrap_many(keys, context) if count else []
        except BaseException:
            for k in keys:
                wipe(k)
            raise
        return list(zip(keys, wrapped, strict=True))

    def wrap(self, data_key: bytearray, context: str) -> WrappedKey:
        return self.wrap_many([data_key], context)[0]

    def unwrap(self, wrapped: WrappedKey) -> bytearray:
        return self.unwrap_many([wrapped])[0]


def _check_key(key: bytes | bytearray, where: str) -> bytearray:
    if len(key) != DATA_KEY_SIZE:
        raise WrongKeyError(f"{where} returned a {len(key)}-byte data key, expected 32")
    return bytearray(key)


# --------------------------------------------------------------------------- file


def create_key_file(path: str | os.PathLike[str]) -> Path:
    """Create a new development key file (32 random bytes, hex, mode 0600)."""
    p = Path(path)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(os.urandom(DATA_KEY_SIZE).hex() + "\n")
    return p


class FileKeyProvider(_BaseProvider):
    """``file://<path>``: a local key-encryption key.  Development and tests only.

    The file holds 32 bytes, raw or as 64 hex digits.  Wrapping is AES-256-GCM under
    that key with the context as associated data; the wrapped form is
    ``wgfile:v1:<key id>:<base64(nonce || ciphertext || tag)>`` where the key id is
    the first 8 bytes of HMAC-SHA256(key, "weightguard/v1 key id") in hex.
    """

    name = "file"

    def __init__(self, uri: str, *, quiet: bool = False) -> None:
        self.uri = uri
        raw = uri[len("file://") :]
        if not raw:
            raise ConfigError(f"key URI {uri!r} has no path", hint="use file:///path/to/key")
        self.path = Path(raw)
        self.quiet = quiet

    def _warn(self) -> None:
        if not self.quiet:
            _log.warning(
                "using development key file %s; not for production (use vault:// or awskms://)",
                self.path,
            )

    def _read_bounded(self) -> bytearray:
        """The key file's bytes: a regular file of at most MAX_KEY_FILE bytes.

        O_NONBLOCK so that opening a FIFO does not wait for a writer; fstat on the open
        descriptor (not the name) so that the check and the read see the same file.
        """
        flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
        flags |= getattr(os, "O_NOCTTY", 0)
        fd = os.open(self.path, flags)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise KeyProviderError(
                    f"key file {self.path} is not a regular file",
                    hint="point the key URI at a regular file holding the 32-byte key",
                )
            if st.st_size > MAX_KEY_FILE:
                raise KeyProviderError(
                    f"key file {self.path} is {st.st_size} bytes; a key file holds 32 bytes "
                    "(raw or 64 hex digits)"
                )
            data = bytearray()
            while len(data) <= MAX_KEY_FILE:
                try:
                    chunk = os.read(fd, MAX_KEY_FILE + 1 - len(data))
                except BlockingIOError:  # pragma: no cover - regular files do not block
                    raise OSError(errno.EAGAIN, "would block") from None
                if not chunk:
                    return data
                data += chunk
            wipe(data)
            raise KeyProviderError(f"key file {self.path} grew past {MAX_KEY_FILE} bytes")
        finally:
            os.close(fd)

    def _load(self) -> bytearray:
        self._warn()
        try:
            data = self._read_bounded()
        except FileNotFoundError:
            raise KeyUnavailableError(
                f"key file {self.path} does not exist",
                hint="create one with `weightguard keys create --data-key PATH`, or fix the URI",
            ) from None
        except PermissionError:
            raise KeyAccessDenied(f"cannot read key file {self.path}: permission denied") from None
        except OSError as exc:
            raise KeyUnavailableError(f"cannot read key file {self.path}: {exc.strerror}") from None
        try:
            if len(data) == DATA_KEY_SIZE:
                return bytearray(data)
            text = bytes(data).strip()
            if len(text) == 2 * DATA_KEY_SIZE:
                try:
                    return bytearray(bytes.fromhex(text.decode("ascii")))
                except (ValueError, UnicodeDecodeError):
                    pass
            raise KeyProviderError(
                f"key file {self.path} must hold 32 bytes (raw or 64 hex digits)",
                hint="create one with `weightguard keys create --data-key PATH`",
            )
        finally:
            wipe(data)

    @staticmethod
    def _kid(kek: bytearray) -> str:
        return hmac.new(bytes(kek), _FILE_KID_LABEL, hashlib.sha256).digest()[:8].hex()

    def wrap_many(self, data_keys: Sequence[bytearray], context: str) -> list[WrappedKey]:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        validate_context(context)
        kek = self._load()
        try:
            aead, kid = AESGCM(kek), self._kid(kek)
            out = []
            for dk in data_keys:
                nonce = os.urandom(12)
                ct = aead.encrypt(nonce, bytes(dk), _FILE_WRAP_AAD + context.encode("utf-8"))
                blob = base64.b64encode(nonce + ct).decode("ascii")
                out.append(
                    WrappedKey(self.name, self.uri, None, context, f"wgfile:v1:{kid}:{blob}")
                )
            return out
        finally:
            wipe(kek)

    def unwrap_many(self, wrapped: Sequence[WrappedKey]) -> list[bytearray]:
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        kek = self._load()
        out: list[bytearray] = []
        try:
            aead, kid = AESGCM(kek), self._kid(kek)
            for w in wrapped:
                parts = w.ciphertext.split(":")
                if len(parts) != 4 or parts[:2] != ["wgfile", "v1"] or w.provider != self.name:
                    raise WrongKeyError(
                        f"the artifact's key was wrapped by {w.provider!r} ({w.uri}), not by a "
                        "key file",
                        hint=f"decrypt with --data-key {w.uri}",
                    )
                if parts[2] != kid:
                    raise WrongKeyError(
                        f"key file {self.path} (key id {kid}) is not the key this artifact was "
                        f"wrapped with (key id {parts[2][:16]})"
                    )
                try:
                    blob = base64.b64decode(parts[3], validate=True)
                    dk = aead.decrypt(
                        blob[:12], blob[12:], _FILE_WRAP_AAD + w.context.encode("utf-8")
                    )
                except (InvalidTag, ValueError):
                    raise WrongKeyError(
                        f"key file {self.path} cannot unwrap the data key (wrong key or "
                        "context, or a modified wrapped key)"
                    ) from None
                out.append(_check_key(dk, "key file"))
            return out
        except BaseException:
            for k in out:
                wipe(k)
            raise
        finally:
            wipe(kek)


# --------------------------------------------------------------------------- vault


_VAULT_OPERATIONS = {
    "encrypt": "wrapping a data key with {uri}",
    "decrypt": "unwrapping the data key with {uri}",
    "read the key of": "reading the Transit key {uri}",
}


class _BatchItemError(KeyProviderError):
    """The error text Vault returned for one item of a batch request."""


def _vault_error(exc: BaseException, uri: str, op: str, client: Any = None) -> Exception:
    """Map an hvac/requests error (or a batch item's error text) to weightguard errors."""
    if isinstance(exc, WeightguardError) and not isinstance(exc, _BatchItemError):
        return exc  # already typed and worded (e.g. a refused login): keep it as it is
    text = str(exc).lower()
    if "disallowed by policy" in text or "min_decryption_version" in text:
        return KeyVersionRetired(
            f"{uri}: the artifact's data key was wrapped with a key version below the "
            "Transit key's min_decryption_version",
            hint="rewrap the artifact to the current key version with `weightguard rewrap` "
            "(using a token that may still decrypt the old version), or lower "
            "min_decryption_version",
        )
    if "message authentication failed" in text or "invalid ciphertext" in text:
        return WrongKeyError(
            f"Vault could not {op} the data key with {uri}: wrong key or context (model "
            "identity), or a modified wrapped key",
            hint="use the key and --context the artifact was encrypted with "
            "(see `weightguard inspect`)",
        )
    if isinstance(exc, _BatchItemError):
        return KeyProviderError(f"Vault failed to {op} with {uri}: {str(exc)[:200]}")
    from weightguard._internal.foundation.vault import map_vault_error

    operation = _VAULT_OPERATIONS.get(op, op + " {uri}").format(uri=uri)
    return map_vault_error(exc, operation, client=client)


class VaultTransitProvider(_BaseProvider):
    """``vault://<mount>/<key>``: Vault/OpenBao Transit with derived keys."""

    name = "vault-transit"

    def __init__(self, uri: str, *, client: Any = None, **client_options: Any) -> None:
        self.uri = uri
        from weightguard._internal.foundation.vault import parse_vault_uri

        self.mount, self.key = parse_vault_uri(uri, what="data key")
        from weightguard._internal.foundation.vault import VaultSession

        # logs in again when its token expires (a provider may outlive a login's TTL)
        self._session = VaultSession(client, **client_options)
        self._checked_derived = False

    @property
    def _client(self) -> Any:
        return self._session.current

    def client(self) -> Any:
        return self._session.client()

    def _post(self, op: str, payload: dict[str, Any]) -> dict[str, Any]:
        path = f"/v1/{self.mount}/{op}/{self.key}"
        try:
            resp = self._session.call(lambda c: c.adapter.post(path, json=payload))
        except Exception as exc:
            raise _vault_error(exc, self.uri, op, self._client) from None
        if not isinstance(resp, dict):
            raise KeyProviderError(f"unexpected Vault response to {op} on {self.uri}")
        return resp

    def _check_derived(self) -> None:
        if self._checked_derived:
            return
        try:
            info = self._session.call(lambda c: c.adapter.get(f"/v1/{self.mount}/keys/{self.key}"))
        except Exception as exc:
            err = _vault_error(exc, self.uri, "read the key of", self._client)
            if isinstance(err, KeyProviderError) and "path not found" in str(err):
                raise KeyProviderError(
                    f"Transit key {self.uri} does not exist",
                    hint="create it with `bao write -f <mount>/keys/<name> derived=true`",
                ) from None
            if isinstance(err, KeyAccessDenied):  # no read permission: Vault enforces anyway
                self._checked_derived = True
                return
            raise err from None
        data = info.get("data", {}) if isinstance(info, dict) else {}
        if not data.get("derived", False):
            raise ConfigError(
                f"Transit key {self.uri} is not a derived key, so the per-model context "
                "would not separate models",
                hint="create a key with `bao write -f <mount>/keys/<name> derived=true`",
            )
        self._checked_derived = True

    @staticmethod
    def _ctx(context: str) -> str:
        return base64.b64encode(context.encode("utf-8")).decode("ascii")

    @staticmethod
    def _results(resp: dict[str, Any], count: int, uri: str, op: str) -> list[dict[str, Any]]:
        results = (resp.get("data") or {}).get("batch_results")
        if not isinstance(results, list) or len(results) != count:
            raise KeyProviderError(f"Vault returned a malformed batch {op} result for {uri}")
        for item in results:
            if isinstance(item, dict) and item.get("error"):
                raise _vault_error(_BatchItemError(str(item["error"])), uri, op)
        return results

    def wrap_many(self, data_keys: Sequence[bytearray], context: str) -> list[WrappedKey]:
        validate_context(context)
        self._check_derived()
        ctx = self._ctx(context)
        batch = [
            {"plaintext": base64.b64encode(bytes(dk)).decode("ascii"), "context": ctx}
            for dk in data_keys
        ]
        results = self._results(
            self._post("encrypt", {"batch_input": batch}), len(batch), self.uri, "encrypt"
        )
        out = []
        for item in results:
            ct = str(item.get("ciphertext", ""))
            m = _VAULT_VERSION.match(ct)
            if not m:
                raise KeyProviderError(f"Vault returned an unexpected ciphertext for {self.uri}")
            out.append(WrappedKey(self.name, self.uri, int(m.group(1)), context, ct))
        return out

    def unwrap_many(self, wrapped: Sequence[WrappedKey]) -> list[bytearray]:
        if not wrapped:
            return []
        for w in wrapped:
            if w.provider != self.name:
                raise WrongKeyError(
                    f"the artifact's key was wrapped by {w.provider!r} ({w.uri}), not by Vault",
                    hint=f"decrypt with --data-key {w.uri}",
                )
        batch = [{"ciphertext": w.ciphertext, "context": self._ctx(w.context)} for w in wrapped]
        results = self._results(
            self._post("decrypt", {"batch_input": batch}), len(batch), self.uri, "decrypt"
        )
        out: list[bytearray] = []
        try:
            for item in results:
                try:
                    dk = base64.b64decode(str(item.get("plaintext", "")), validate=True)
                except ValueError:
                    raise KeyProviderError(
                        f"Vault returned a malformed plaintext for {self.uri}"
                    ) from None
                out.append(_check_key(dk, f"Vault ({self.uri})"))
        except BaseException:
            for k in out:
                wipe(k)
            raise
        return out


# --------------------------------------------------------------------------- aws kms


def _kms_error(exc: BaseException, uri: str, op: str) -> Exception:
    import botocore.exceptions as bx

    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectTimeoutError | bx.ReadTimeoutError):
        return KeyUnavailableError(f"cannot reach AWS KMS to {op} with {uri}")
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return KeyAccessDenied(f"no AWS credentials to {op} with {uri}")
    if isinstance(exc, bx.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in (
            "AccessDeniedException",
            "UnrecognizedClientException",
            "InvalidSignatureException",
            "ExpiredTokenException",
        ):
            return KeyAccessDenied(f"AWS KMS denied {op} with {uri} ({code})")
        if code in ("InvalidCiphertextException", "IncorrectKeyException"):
            return WrongKeyError(
                f"AWS KMS could not {op} the data key with {uri} (wrong key or encryption "
                "context, or a modified wrapped key)"
            )
        if code == "NotFoundException":
            return KeyProviderError(f"AWS KMS key {uri} does not exist", hint="check the key id")
        if code in ("DisabledException", "KMSInvalidStateException"):
            return KeyProviderError(
                f"AWS KMS key {uri} is disabled or pending deletion ({code})",
                hint="enable the key, or rewrap the artifact to another key",
            )
        if code in ("ThrottlingException", "KMSInternalException", "DependencyTimeoutException"):
            return KeyUnavailableError(f"AWS KMS is unavailable for {op} with {uri} ({code})")
        return KeyProviderError(f"AWS KMS failed to {op} with {uri} ({code})")
    if isinstance(exc, bx.BotoCoreError):
        return KeyUnavailableError(f"AWS KMS {op} with {uri} failed: {type(exc).__name__}")
    return KeyProviderError(f"AWS KMS {op} with {uri} failed: {type(exc).__name__}")


class AwsKmsProvider(_BaseProvider):
    """``awskms://<key-id | arn | alias/name>``; the context is the EncryptionContext."""

    name = "aws-kms"
    context_key = "weightguard:context"

    def __init__(
        self,
        uri: str,
        *,
        client: Any = None,
        endpoint_url: str | None = None,
        region: str | None = None,
    ) -> None:
        self.uri = uri
        self.key_id = uri[len("awskms://") :]
        if not self.key_id:
            raise ConfigError(f"key URI {uri!r} has no key id", hint="use awskms://<key-id-or-arn>")
        self._client = client
        self.endpoint_url = endpoint_url
        self.region = region
        if region is None and self.key_id.startswith("arn:"):
            parts = self.key_id.split(":")
            if len(parts) > 3 and parts[3]:
                self.region = parts[3]

    def client(self) -> Any:
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError as exc:  # pragma: no cover
                raise DependencyMissing(f"AWS KMS support needs boto3: {exc}") from None
            self._client = boto3.client(
                "kms",
                endpoint_url=self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_KMS") or None,
                region_name=self.region
                or os.environ.get("AWS_REGION")
                or os.environ.get("AWS_DEFAULT_REGION")
                or "us-east-1",
                config=Config(
                    retries={"max_attempts": 3, "mode": "standard"},
                    connect_timeout=5,
                    read_timeout=30,
                ),
            )
        return self._client

    def _ec(self, context: str) -> dict[str, str]:
        return {self.context_key: context}

    def wrap_many(self, data_keys: Sequence[bytearray], context: str) -> list[WrappedKey]:
        validate_context(context)
        out = []
        for dk in data_keys:
            try:
                resp = self.client().encrypt(
                    KeyId=self.key_id, Plaintext=bytes(dk), EncryptionContext=self._ec(context)
                )
            except Exception as exc:
                raise _kms_error(exc, self.uri, "encrypt") from None
            blob = base64.b64encode(resp["CiphertextBlob"]).decode("ascii")
            out.append(WrappedKey(self.name, self.uri, None, context, blob))
        return out

    def unwrap_many(self, wrapped: Sequence[WrappedKey]) -> list[bytearray]:
        out: list[bytearray] = []
        try:
            for w in wrapped:
                if w.provider != self.name:
                    raise WrongKeyError(
                        f"the artifact's key was wrapped by {w.provider!r} ({w.uri}), not by "
                        "AWS KMS",
                        hint=f"decrypt with --data-key {w.uri}",
                    )
                try:
                    blob = base64.b64decode(w.ciphertext, validate=True)
                except ValueError:
                    raise WrongKeyError(f"malformed AWS KMS wrapped key for {w.uri}") from None
                try:
                    resp = self.client().decrypt(
                        CiphertextBlob=blob,
                        KeyId=self.key_id,
                        EncryptionContext=self._ec(w.context),
                    )
                except Exception as exc:
                    raise _kms_error(exc, self.uri, "decrypt") from None
                out.append(_check_key(resp["Plaintext"], f"AWS KMS ({self.uri})"))
        except BaseException:
            for k in out:
                wipe(k)
            raise
        return out


# --------------------------------------------------------------------------- factory


def provider_for(uri: str, **options: Any) -> KeyProvider:
    """The key provider for ``uri`` (``vault://``, ``awskms://``, ``file://``).

    Options: ``client`` (a ready hvac/boto3 client), Vault ``addr``/``token``/``auth``
    (passed to ``vault_client``), KMS ``endpoint_url``/``region``, file ``quiet``.
    """
    if not isinstance(uri, str):
        raise ConfigError("key URI must be a string")
    if is_vault_uri(uri):
        return VaultTransitProvider(uri, **options)
    if uri.startswith("awskms://"):
        return AwsKmsProvider(uri, **options)
    if uri.startswith("file://"):
        return FileKeyProvider(uri, **options)
    raise ConfigError(
        f"unsupported key URI {uri[:100]!r}",
        hint="use vault://<transit-mount>/<key>, awskms://<key-id-or-arn> or file://<path>",
    )
