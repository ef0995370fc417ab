"""Sigstore keyless signing (OIDC identity, Fulcio certificate, Rekor entry)."""

from __future__ import annotations

from weightguard._internal.signing.signers.base import Signer
from weightguard.errors import (
    ConfigError,
    DependencyMissing,
    VerificationError,
)


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
