"""The one exception hierarchy of weightguard.

Every error says what failed and what the user can do about it.  Messages never
contain key material, tokens or plaintext: callers pass names, URIs, indices and
sizes only.
"""

from __future__ import annotations

from weightguard.vocabulary import told

__all__ = [
    "AuditError",
    "ConfigError",
    "CoverageError",
    "DependencyMissing",
    "DestinationError",
    "DeviceError",
    "FormatError",
    "IntegrityError",
    "KeyAccessDenied",
    "KeyProviderError",
    "KeyUnavailableError",
    "KeyVersionRetired",
    "PolicyError",
    "SourceError",
    "TruncatedError",
    "UnsafeOptionRequired",
    "VerificationError",
    "WatermarkError",
    "WeightguardError",
    "WrongKeyError",
]


class WeightguardError(Exception):
    """Base class.  ``hint`` tells the user what to do next, written once in the
    options' spelling (``--signature``); ``str(exc)`` tells it in the reader's words:
    a Python caller reads the keyword (``signature=``), the command line the option
    (:mod:`weightguard.vocabulary`)."""

    default_hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint if hint is not None else self.default_hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message} ({told(self.hint)})"
        return self.message


class ConfigError(WeightguardError):
    """Bad or missing configuration (environment, options, files)."""

    default_hint = "check the command-line options and environment variables"


class UnsafeOptionRequired(ConfigError):
    """A security check would be skipped; the caller must opt in explicitly."""


class FormatError(WeightguardError):
    """Input is not a well-formed artifact, safetensors file or signature bundle."""

    default_hint = "the file is corrupt or not of the expected kind"


class TruncatedError(FormatError):
    """Input ended before its declared size."""

    default_hint = "the file was cut short; fetch it again"


class IntegrityError(WeightguardError):
    """Authenticated data failed its check: tampering or corruption.

    ``path`` and ``chunk`` locate the failure when known.
    """

    default_hint = "the artifact was modified after release; do not use it, fetch it again"

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        chunk: int | None = None,
        hint: str | None = None,
    ) -> None:
        self.path = path
        self.chunk = chunk
        where = []
        if path is not None:
            where.append(str(path))
        if chunk is not None:
            where.append(f"chunk {chunk}")
        if where:
            message = f"{message} [{', '.join(where)}]"
        super().__init__(message, hint=hint)


class KeyProviderError(WeightguardError):
    """A key provider (Vault/OpenBao, AWS KMS, key file) could not wrap or unwrap."""

    default_hint = "check the key URI and the provider's credentials"


class KeyUnavailableError(KeyProviderError):
    """The provider could not be reached."""

    default_hint = "check that the key service is reachable (VAULT_ADDR / AWS endpoint)"


class KeyAccessDenied(KeyProviderError):
    """The provider refused: missing permission, bad or expired credentials."""

    default_hint = "check the token/role and that its policy allows this key"


class KeyVersionRetired(KeyProviderError):
    """The artifact's key version is below the provider's minimum decryption version."""

    default_hint = "rewrap the artifact to the current key version with `weightguard rewrap`"


class WrongKeyError(KeyProviderError):
    """The key does not open this artifact (key commitment or unwrap failed)."""

    default_hint = "use the key the artifact was encrypted with (see `weightguard inspect`)"


class VerificationError(WeightguardError):
    """A signature, certificate or bundle failed to verify."""

    default_hint = "the model is not signed by the expected signer, or was changed after signing"


class PolicyError(VerificationError):
    """The signature is valid but does not satisfy the verification policy."""

    default_hint = "check the expected identity, issuer, key or root"


class CoverageError(VerificationError):
    """The signature does not cover every file that matters."""

    default_hint = "re-sign the whole model, or allow the extra files by pattern"


class SourceError(WeightguardError):
    """Reading the artifact from its source (file, S3) failed."""

    default_hint = "check the path or URI, credentials and network"


class DestinationError(WeightguardError):
    """Writing output failed (permissions, disk full); nothing was left half-written."""

    default_hint = "check the output location is writable and has space"


class AuditError(WeightguardError):
    """The audit log could not be written or does not verify."""

    default_hint = "check the audit sink (WEIGHTGUARD_AUDIT_LOG) is writable"


class WatermarkError(WeightguardError):
    """Watermark embedding or detection could not run on this input."""


class DeviceError(WeightguardError):
    """The target device failed (CUDA unavailable, out of memory)."""

    default_hint = "check the device and free memory, or load to CPU"


class DependencyMissing(ConfigError):
    """An optional dependency is not installed."""

    default_hint = "install it with pip"
