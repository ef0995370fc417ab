"""Sigstore keyless signing (OIDC identity, Fulcio certificate, Rekor entry), and the
proof a verifier runs with a trusted identity (:func:`prove_sigstore`, by sigstore-python)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from weightguard._internal.signing.signers.base import Signer
from weightguard.errors import (
    ConfigError,
    DependencyMissing,
    FormatError,
    VerificationError,
)

if TYPE_CHECKING:
    from weightguard._internal.signing.oms import Bundle


class SigstoreSigner(Signer):
    """Sigstore keyless signing (Fulcio certificate + Rekor entry; needs network).

    The OIDC identity token is ``identity_token`` if given, else an ambient CI
    credential (GitHub Actions, GitLab, Buildkite, cloud workload identity).
    """

    def __init__(self, identity_token: str | None = None, *, staging: bool = False) -> None:
        self._token = identity_token
        self.staging = staging

    def __repr__(self) -> str:
        token = "<given>" if self._token else "<ambient>"
        return f"<SigstoreSigner staging={self.staging} token={token}>"

    def describe(self) -> str:
        return "Sigstore keyless" + (" (staging)" if self.staging else "")

    def make_bundle(self, payload: bytes) -> bytes:
        try:
            from sigstore import dsse, oidc
            from sigstore.errors import Error as SigstoreError
            from sigstore.models import ClientTrustConfig
            from sigstore.sign import SigningContext
        except ImportError:
            raise DependencyMissing("Sigstore signing needs the sigstore package") from None
        try:
            token = self._token or oidc.detect_credential()
            if not token:
                raise ConfigError(
                    "no OIDC identity token for Sigstore signing",
                    hint="pass --identity-token, or run in CI with an ambient OIDC credential",
                )
            config = ClientTrustConfig.staging() if self.staging else ClientTrustConfig.production()
            ctx = SigningContext.from_trust_config(config)
            with ctx.signer(oidc.IdentityToken(token)) as signer:
                bundle = signer.sign_dsse(dsse.Statement(payload))
        except SigstoreError as exc:
            raise VerificationError(
                f"Sigstore signing failed: {exc}", hint="check network access and the token"
            ) from None
        return bundle.to_json().encode("utf-8")


# ------------------------------------------------------------------------ verification


def prove_sigstore(
    bundle: Bundle, *, path: str, identity: str, issuer: str, trusted_root: Any
) -> tuple[Any, datetime | None]:
    """Step 3 and 4 for a Sigstore bundle: sigstore-python verifies the chain to
    Fulcio, the SCT, the transparency log entry and the identity.  Returns the signing
    certificate and the log's integrated time (None if it has none); FormatError if not.
    """
    from sigstore.errors import Error as SigstoreError
    from sigstore.models import Bundle as SBundle
    from sigstore.verify import Verifier, policy

    from weightguard._internal.signing.oms import PAYLOAD_TYPE

    try:
        sb = SBundle.from_json(bundle.raw)
    except (SigstoreError, ValueError) as exc:
        raise FormatError(f"{path}: not a valid Sigstore bundle: {exc}") from exc
    verifier = Verifier(trusted_root=trusted_root)
    try:
        ptype, payload = verifier.verify_dsse(sb, policy.Identity(identity=identity, issuer=issuer))
    except SigstoreError as exc:
        raise FormatError(f"{path}: Sigstore verification failed: {exc}") from exc
    if ptype != PAYLOAD_TYPE or payload != bundle.payload:
        raise FormatError(f"{path}: Sigstore-verified payload differs from the envelope")
    t = sb.log_entry._inner.integrated_time
    return sb.signing_certificate, (datetime.fromtimestamp(t, tz=UTC) if t else None)
