"""One vocabulary: each concept's CLI option, environment variable and Python keyword.

docs/cli.md shows :data:`TERMS` as a table (docgen); tests/cli/test_vocabulary.py checks
that every option exists on the commands listed, every variable is read, and every
keyword is a parameter of the function named.  Importing this module is cheap.
"""

from __future__ import annotations

from dataclasses import dataclass

_TRUSTING = ("verify", "load", "fetch", "bom", "report")


@dataclass(frozen=True)
class Term:
    concept: str
    option: str  # the CLI spelling (its old spellings: the "Renamed options" table)
    commands: tuple[str, ...]  # commands taking it ("audit verify" for a subcommand)
    env: str = ""  # environment variable (integrations: vLLM, KServe, Kubernetes)
    python: tuple[str, ...] = ()  # "module:function(keyword)" taking the same thing


# Commands that read or write model bytes: each has -q/--quiet and --json.
_BYTE_COMMANDS = (
    "encrypt",
    "decrypt",
    "rewrap",
    "inspect",
    "sign",
    "verify",
    "load",
    "fetch",
    "push",
    "watermark embed",
    "watermark check",
)

TERMS: tuple[Term, ...] = (
    Term(
        "trusted signer public key",
        "--trust-key",
        (*_TRUSTING, "watermark embed", "watermark check"),
        "WEIGHTGUARD_TRUST_KEY",
        ("weightguard.policy:trust_policy(public_keys)",),
    ),
    Term(
        "trusted CA root (then intermediates)",
        "--trust-chain",
        _TRUSTING,
        "WEIGHTGUARD_TRUST_CHAIN",
        ("weightguard.policy:trust_policy(chain)",),
    ),
    Term(
        "trusted Vault Transit signing key",
        "--trust-vault-key",
        _TRUSTING,
        "WEIGHTGUARD_TRUST_VAULT_KEY",
        ("weightguard.policy:trust_policy(vault_key)",),
    ),
    Term(
        "Sigstore identity",
        "--identity",
        _TRUSTING,
        "WEIGHTGUARD_TRUST_IDENTITY",
        ("weightguard.policy:trust_policy(identity)",),
    ),
    Term(
        "Sigstore OIDC issuer",
        "--issuer",
        _TRUSTING,
        "WEIGHTGUARD_TRUST_ISSUER",
        ("weightguard.policy:trust_policy(issuer)",),
    ),
    Term(
        "Sigstore trusted root",
        "--trust-root",
        _TRUSTING,
        "WEIGHTGUARD_TRUST_ROOT",
        ("weightguard.policy:trust_policy(trust_root)",),
    ),
    Term(
        "every trusted signer required (co-signed)",
        "--require-all",
        _TRUSTING,
        "",
        ("weightguard.policy:trust_policy(require_all)",),
    ),
    Term(
        "skip signature verification (unsafe)",
        "--unsafe-no-verification",
        (*_TRUSTING, "watermark embed", "watermark check"),
        "",
        ("weightguard.policy:trust_policy(unsafe)",),
    ),
    Term(
        "signature bundle",
        "--signature",
        ("sign", *_TRUSTING, "watermark embed", "watermark check"),
        "",
        (
            "weightguard.signing:sign_model(signature)",
            "weightguard.verifying:verify_bundle(signature)",
            "weightguard.loader:load_file(signature)",
        ),
    ),
    Term(
        "unsigned files allowed (glob or path)",
        "--allow-unsigned",
        ("verify", "bom", "report"),
        "",
        ("weightguard.verifying:verify_bundle(allow_unsigned)",),
    ),
    Term(
        "signing key (EC private key PEM)",
        "--signing-key",
        ("sign", "keys create"),
        "",
        ("weightguard.signing:CertificateSigner.from_files(key_path)",),
    ),
    Term(
        "signing certificate",
        "--signing-cert",
        ("sign",),
        "",
        ("weightguard.signing:CertificateSigner.from_files(cert_path)",),
    ),
    Term(
        "certificates sent with the signing certificate",
        "--signing-chain",
        ("sign",),
        "",
        ("weightguard.signing:CertificateSigner.from_files(chain_paths)",),
    ),
    Term(
        "Vault Transit signing key (signs)",
        "--signing-vault-key",
        ("sign",),
        "",
        ("weightguard.signing:VaultTransitSigner(uri)",),
    ),
    Term(
        "chunk size (4MiB, 65536)",
        "--chunk-size",
        ("encrypt", "sign"),
        "",
        (
            "weightguard.crypt:encrypt_model(chunk_size)",
            "weightguard.signing:sign_model(chunk_size)",
        ),
    ),
    Term(
        "data key (key provider URI)",
        "--data-key",
        ("encrypt", "decrypt", "rewrap", "inspect", "load", "fetch"),
        "",
        (
            "weightguard.crypt:encrypt_model(key_uri)",
            "weightguard.crypt:decrypt_model(key_uri)",
            "weightguard.loader:load_file(key)",
        ),
    ),
    Term(
        "data keys allowed (URI patterns)",
        "--allow-key",
        ("decrypt", "rewrap", "inspect", "load", "fetch"),
        "WEIGHTGUARD_ALLOWED_KEYS",
        ("weightguard.loader:load_file(allowed_keys)",),
    ),
    Term(
        "audit checkpoint public key",
        "--checkpoint-key",
        ("audit verify", "report"),
        "",
        ("weightguard.audit:verify_log(checkpoint_key)",),
    ),
    Term(
        "audit checkpoint Vault Transit key",
        "--checkpoint-vault-key",
        ("audit verify", "report"),
        "",
        ("weightguard.audit:verify_log(vault_key)",),
    ),
    Term(
        "accept an audit log without checkpoint signatures",
        "--allow-unsigned-log",
        ("audit verify",),
    ),
    Term(
        "audit log destination",
        "--audit-log",
        ("encrypt", "decrypt", "rewrap", "sign", "verify", "load", "fetch", "push"),
        "WEIGHTGUARD_AUDIT_LOG",
        ("weightguard.loader:load_file(audit)",),
    ),
    Term(
        "replace an existing output",
        "--replace",
        ("sign", "fetch", "push", "watermark embed"),
        "",
        (
            "weightguard.signing:sign_model(replace)",
            "weightguard.transfer:fetch_model(replace)",
            "weightguard.watermark:embed_file(overwrite)",
        ),
    ),
    Term(
        "no progress display",
        "--quiet",
        _BYTE_COMMANDS,
    ),
    Term(
        "machine-readable output",
        "--json",
        (*_BYTE_COMMANDS, "audit verify"),
    ),
)


def table() -> list[str]:
    """The vocabulary as Markdown table lines (docs/cli.md)."""
    out = [
        "| concept | CLI option | commands | environment variable | Python keyword |",
        "| --- | --- | --- | --- | --- |",
    ]
    for t in TERMS:
        env = f"`{t.env}`" if t.env else "-"
        py = ", ".join(f"`{p.split(':', 1)[1]}`" for p in t.python) or "-"
        cmds = ", ".join(t.commands)
        out.append(f"| {t.concept} | `{t.option}` | {cmds} | {env} | {py} |")
    return out
