"""`weightguard sign` and `weightguard verify`: OpenSSF model-signing bundles."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from weightguard.errors import ConfigError
from weightguard_cli._audit_opt import audit_option
from weightguard_cli._output import activity, echo_json, quiet_option
from weightguard_cli._renamed import renamed
from weightguard_cli._sizes import parse_size
from weightguard_cli._trust_opt import policy_from_options, trust_options


@contextmanager
def _audit(spec: str | None) -> Iterator[Any]:
    from weightguard.audit import AuditLog

    log = AuditLog.open(spec)
    try:
        yield log
    finally:
        log.close()


def _password(var: str | None) -> bytearray | None:
    if var is None:
        return None
    value = os.environ.get(var)
    if value is None:
        raise ConfigError(f"environment variable {var} (--password-env) is not set")
    return bytearray(value.encode("utf-8"))


def _default_signature(model: str) -> str:
    """Where load, fetch and verify look when --signature is not given (the one rule)."""
    from weightguard.verifying import default_signature

    return default_signature(model, is_dir=os.path.isdir(model))


_PEM = click.Path(exists=True, dir_okay=False)


@click.command("sign")
@click.argument("model", type=click.Path(exists=True, path_type=str))
@click.option(
    "--signature",
    type=click.Path(path_type=str),
    help="Bundle to write (default: model.sig in a directory, <file>.sig for a file).",
)
@click.option(
    "--signing-key",
    "key",
    type=_PEM,
    help="EC private key PEM (P-256/384/521; create one with `weightguard keys create`).",
)
@renamed("--key", "--signing-key", "key", type=_PEM)
@click.option(
    "--password-env", metavar="VAR", help="Environment variable holding the key password."
)
@click.option("--signing-cert", "cert", type=_PEM, help="Signing certificate PEM.")
@renamed("--cert", "--signing-cert", "cert", type=_PEM)
@click.option(
    "--signing-chain",
    "cert_chain",
    multiple=True,
    type=_PEM,
    help="Intermediate/root certificates sent with the signing certificate (repeatable).",
)
@renamed("--cert-chain", "--signing-chain", "cert_chain", multiple=True, type=_PEM)
@click.option(
    "--signing-vault-key",
    "vault_key",
    metavar="URI",
    help="Transit signing key, vault://<mount>/<key> (ecdsa-p256).",
)
@renamed("--vault-key", "--signing-vault-key", "vault_key")
@click.option("--sigstore", is_flag=True, help="Sigstore keyless signing (OIDC, needs network).")
@click.option("--identity-token", metavar="TOKEN", help="OIDC token for --sigstore.")
@click.option("--sigstore-staging", is_flag=True, help="Use the Sigstore staging instance.")
@click.option(
    "--ignore-path", "ignore_paths", multiple=True, help="Relative path to leave unsigned."
)
@click.option("--allow-symlinks", is_flag=True, help="Follow symbolic links to files.")
@click.option(
    "--chunk-size",
    metavar="SIZE",
    default="4MiB",
    show_default=True,
    help="Chunk digest stride for plain safetensors files (e.g. 4MiB, 65536); "
    "encrypted artifacts use their record size.",
)
@click.option(
    "--chunk-digest",
    type=click.Choice(["blake3", "sha256"]),
    metavar="ALG",
    default="blake3",
    show_default=True,
    help="Per-chunk digest the secure loader checks: blake3 (~1.8x cheaper) or sha256.",
)
@click.option(
    "--hash",
    "hash_type",
    type=click.Choice(["blake3", "sha256"]),
    metavar="ALG",
    default="sha256",
    show_default=True,
    help="OMS whole-file digest (hash_type): sha256 (every model_signing verifier, CLI "
    "included) or blake3 (~2x less CPU; weightguard and the model_signing >= 1.1 API).",
)
@click.option(
    "--co-sign",
    "co_sign",
    metavar="NAME",
    help="Add a signature beside the existing one (release team + security team): "
    "written to model.sig.d/NAME.sig (<file>.sig.d/ for a file); model.sig stays as is.",
)
@click.option(
    "--replace",
    is_flag=True,
    help="Overwrite an existing signature file (without it, sign refuses to).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@quiet_option
@audit_option
def sign(
    model: str,
    signature: str | None,
    key: str | None,
    password_env: str | None,
    cert: str | None,
    cert_chain: tuple[str, ...],
    vault_key: str | None,
    sigstore: bool,
    identity_token: str | None,
    sigstore_staging: bool,
    ignore_paths: tuple[str, ...],
    allow_symlinks: bool,
    chunk_size: str,
    chunk_digest: str,
    hash_type: str,
    co_sign: str | None,
    replace: bool,
    as_json: bool,
    quiet: bool,
    audit_log: str | None,
) -> None:
    """Sign MODEL (file or directory, plain or encrypted) as an OMS bundle.

    An existing signature is never replaced silently: add a second one with
    --co-sign NAME, or overwrite with --replace."""
    from weightguard.signing import cosignature_path, primary_ignores_cosignatures, sign_model

    signer = _signer(
        key, password_env, cert, cert_chain, vault_key, sigstore, identity_token, sigstore_staging
    )
    if signature is None:
        signature = _default_signature(model)
    primary = signature
    if co_sign is not None:
        if not os.path.isfile(signature):
            raise ConfigError(
                f"--co-sign adds a signature beside {signature}, which does not exist",
                hint="sign the release first (without --co-sign)",
            )
        signature = str(cosignature_path(signature, co_sign))
        os.makedirs(os.path.dirname(signature), exist_ok=True)
    with _audit(audit_log) as audit, activity(f"signing {model}", quiet):
        result = sign_model(
            model,
            signature,
            signer,
            ignore_paths=ignore_paths,
            allow_symlinks=allow_symlinks,
            chunk_size=parse_size(chunk_size),
            chunk_algorithm=f"{chunk_digest}-chunked-v1",
            hash_type=hash_type,
            audit=audit,
            replace=replace,  # False unless --replace: an existing bundle is refused
        )
    if as_json:
        echo_json(
            {
                "signature": str(result.signature),
                "signer": result.signer,
                "signed_at": result.signed_at.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "bundle_sha256": result.bundle_digest,
                "chunk_algorithm": f"{chunk_digest}-chunked-v1",
                "hash_type": hash_type,
                "files": sorted(result.files),
            }
        )
    else:
        click.echo(f"signed {len(result.files)} file(s) -> {result.signature}")
        click.echo(f"signer: {result.signer}")
    if co_sign is not None and os.path.isdir(model) and not primary_ignores_cosignatures(primary):
        # weightguard verifies it either way (co-signatures are signatures, not files)
        click.echo(
            f"note: {primary} (not signed by weightguard) does not leave "
            f"{os.path.basename(primary)}.d/ out: `model_signing verify` of it now needs "
            f"--ignore-paths {os.path.basename(primary)}.d",
            err=True,
        )


def _signer(
    key: str | None,
    password_env: str | None,
    cert: str | None,
    cert_chain: tuple[str, ...],
    vault_key: str | None,
    sigstore: bool,
    identity_token: str | None,
    sigstore_staging: bool,
) -> Any:
    """The one signer the options name (a usage error unless exactly one)."""
    from weightguard.signing import (
        CertificateSigner,
        KeySigner,
        SigstoreSigner,
        VaultTransitSigner,
    )

    modes = sum([key is not None and cert is None, cert is not None, bool(vault_key), sigstore])
    if modes != 1:
        raise click.UsageError(
            "choose exactly one signer: --signing-key, --signing-cert with --signing-key, "
            "--signing-vault-key or --sigstore"
        )
    if cert is not None:
        if key is None:
            raise click.UsageError(
                "--signing-cert needs --signing-key (the certificate's private key)"
            )
        return CertificateSigner.from_files(key, cert, cert_chain, _password(password_env))
    if key is not None:
        return KeySigner.from_file(key, _password(password_env))
    if vault_key:
        return VaultTransitSigner(vault_key)
    return SigstoreSigner(identity_token, staging=sigstore_staging)


@click.command("verify")
@click.argument("model")
@click.option(
    "--signature",
    type=click.Path(dir_okay=False),
    help="Signature bundle (default: model.sig in a directory, <file>.sig for a file).",
)
@trust_options
@click.option(
    "--allow-unsigned",
    "allow_unsigned",
    multiple=True,
    metavar="PATTERN",
    help="Allow files matching this glob/prefix to be present but unsigned.",
)
@click.option("--allow-symlinks", is_flag=True, help="Follow symbolic links to files.")
@click.option(
    "--check-chunk-digests",
    is_flag=True,
    help="Also recompute weightguard's signed chunk digests (a second hash of every byte): "
    "refuses a bundle whose chunk digests disagree with its resource digests.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@quiet_option
@audit_option
def verify(
    model: str,
    signature: str | None,
    allow_unsigned: tuple[str, ...],
    allow_symlinks: bool,
    check_chunk_digests: bool,
    as_json: bool,
    quiet: bool,
    audit_log: str | None,
    **trust: Any,
) -> None:
    """Verify MODEL (a file, a directory, or a release in S3: s3://bucket/prefix/)
    against its signature and a trust policy.  Needs no data key: nothing is decrypted.
    An S3 release is copied (as released, encrypted) into a temporary directory,
    verified byte for byte there, and removed."""
    from weightguard.signing import verify_bundle

    policy = policy_from_options(trust)
    if model.startswith("s3://"):
        from weightguard.transfer import verify_release

        with _audit(audit_log) as audit, activity(f"verifying {model}", quiet), _allowable():
            m = verify_release(
                model,
                policy,
                signature=signature,
                allow_unsigned=allow_unsigned,
                audit=audit,
                check_chunk_digests=check_chunk_digests,
            )
        _report(model, signature or "the released signature", m, as_json)
        return
    if not os.path.exists(model):
        raise click.BadParameter(f"{model!r} does not exist", param_hint="'MODEL'")
    if signature is None:
        signature = _default_signature(model)
        if not os.path.isfile(signature):  # the same words as load and fetch
            from weightguard.errors import VerificationError

            raise VerificationError(
                f"{model}: no signature found (looked for {signature})",
                hint="sign the model with `weightguard sign`, or give the bundle's path "
                "with --signature",
            )
    with _audit(audit_log) as audit, activity(f"verifying {model}", quiet), _allowable():
        m = verify_bundle(
            model,
            signature,
            policy,
            allow_unsigned=allow_unsigned,
            allow_symlinks=allow_symlinks,
            audit=audit,
            check_chunk_digests=check_chunk_digests,
        )
    _report(model, signature, m, as_json)


@contextmanager
def _allowable() -> Iterator[None]:
    """Unsigned extra files: verify can allow them, so its hint says how (the library's
    hint names only what every entry point can do)."""
    from weightguard.errors import CoverageError

    try:
        yield
    except CoverageError as exc:
        if exc.message.startswith("files not covered by signature"):
            exc.hint += ", or allow them with --allow-unsigned PATTERN"
        raise


def _report(model: str, signature: str, m: Any, as_json: bool) -> None:
    if as_json:
        out: dict[str, Any] = {"verified": True, **m.to_dict()}
        echo_json(out)
        return
    when = m.signed_at.strftime("%Y-%m-%dT%H:%M:%SZ") if m.signed_at else "unknown"
    click.echo(f"OK: {model} matches {signature}")
    click.echo(f"signer:  {m.signer}")
    click.echo(f"time:    {when}" + (f" ({m.time_source})" if m.time_source else ""))
    click.echo(f"covered: {len(m.files)} file(s)")
    for n in sorted(m.files):
        click.echo(f"  {n}")
    if m.uncovered:
        click.echo(f"present but NOT covered: {len(m.uncovered)} file(s)")
        for n in m.uncovered:
            click.echo(f"  {n}")
    if m.unsafe:
        click.echo("WARNING: signer NOT verified (--unsafe-no-verification)", err=True)
