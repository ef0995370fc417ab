"""Trust-anchor options shared by `verify`, `load` and `fetch`.

    @trust_options
    def cmd(..., **opts): policy = policy_from_options(opts)

The options arrive as keyword arguments named keys, cert_chain, vault_key, identity,
issuer, offline, trust_root, unsafe_no_verification,
trust_intermediate.  Importing this module is cheap.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click

from weightguard.errors import ConfigError
from weightguard_cli._renamed import renamed

F = TypeVar("F", bound=Callable[..., Any])

TRUST_KEYS = (
    "keys",
    "cert_chain",
    "vault_key",
    "identity",
    "issuer",
    "offline",
    "trust_root",
    "unsafe_no_verification",
    "trust_intermediate",
)


def _old_key_value(value: str) -> None:
    # `--key` was the data-key URI in encrypt/decrypt: say so rather than "no such file".
    if "://" in value:
        raise click.UsageError(
            "--key (now --trust-key) takes a public key file, not a URI; "
            f"give the data key as --data-key {value}"
        )
    if not os.path.isfile(value):
        raise click.UsageError(
            f"Invalid value for '--key' (now --trust-key): File {value!r} does not exist."
        )


def trust_options(f: F) -> F:
    """Add the trust-anchor options to a click command."""
    pem = click.Path(exists=True, dir_okay=False)
    opts = [
        click.option(
            "--trust-key",
            "keys",
            multiple=True,
            type=pem,
            help="Trusted EC public key PEM of the signer (repeatable: any of).",
        ),
        renamed("--key", "--trust-key", "keys", multiple=True, check=_old_key_value),
        click.option(
            "--trust-chain",
            "cert_chain",
            multiple=True,
            type=pem,
            help="Trusted root CA PEM; further files are intermediates.",
        ),
        renamed("--cert-chain", "--trust-chain", "cert_chain", multiple=True, type=pem),
        click.option(
            "--trust-intermediate",
            "trust_intermediate",
            is_flag=True,
            help="Let --trust-chain's first certificate be an intermediate CA trusted as "
            "the anchor (default: only a self-signed root is, as in model_signing).",
        ),
        click.option(
            "--trust-vault-key",
            "vault_key",
            metavar="URI",
            help="Trusted Vault Transit signing key, vault://<mount>/<key> (every version).",
        ),
        renamed("--vault-key", "--trust-vault-key", "vault_key"),
        click.option(
            "--require-all",
            "require_all",
            is_flag=True,
            help="Every trust anchor given must have signed, each with a signature of its "
            "own (model.sig and the co-signatures in model.sig.d/), instead of any one.",
        ),
        click.option("--identity", help="Sigstore certificate identity (email or URI)."),
        click.option("--issuer", help="Sigstore OIDC issuer URL."),
        click.option(
            "--offline/--online",
            default=True,
            show_default=True,
            help="Sigstore: use the trusted root shipped with sigstore (no network).",
        ),
        click.option(
            "--trust-root",
            type=click.Path(exists=True, dir_okay=False),
            help="Sigstore trusted_root.json to use instead.",
        ),
        click.option(
            "--unsafe-no-verification",
            is_flag=True,
            help="UNSAFE: do not check who signed (only accidental corruption is found).",
        ),
    ]
    for option in reversed(opts):
        f = option(f)
    return f


def policy_from_options(opts: Mapping[str, Any]) -> Any:
    """The policy the options describe; a missing or conflicting anchor is a usage error."""
    from weightguard.policy import trust_policy

    try:
        policy = trust_policy(
            trust_key=opts["keys"],
            trust_chain=opts["cert_chain"],
            trust_vault_key=opts["vault_key"],
            identity=opts["identity"],
            issuer=opts["issuer"],
            trust_root=opts["trust_root"],
            offline=opts["offline"],
            unsafe_no_verification=opts["unsafe_no_verification"],
            allow_intermediate_anchor=opts.get("trust_intermediate", False),
            require_all=opts.get("require_all", False),
        )
    except ConfigError as exc:  # the options themselves are wrong: a usage error
        raise click.UsageError(str(exc)) from None
    if opts["unsafe_no_verification"]:
        click.echo("warning: signer NOT verified (--unsafe-no-verification)", err=True)
    return policy
