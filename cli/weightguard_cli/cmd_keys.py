"""``weightguard keys create``: the key files a first release needs, for development.

Production keys live in Vault/OpenBao or KMS; these are files so that encrypt, sign
and verify can be tried on a laptop.  The option names are the ones the other
commands take the files with, so the output says what to pass where.
"""

from __future__ import annotations

import click

from weightguard_cli._output import echo_json


def _public_path(private: str) -> str:
    return private[: -len(".pem")] + ".pub" if private.endswith(".pem") else private + ".pub"


def _key_path(value: str) -> str:
    return value[len("file://") :] if value.startswith("file://") else value


@click.group("keys")
def keys() -> None:
    """Create development key files (production keys stay in Vault/OpenBao or KMS)."""


@keys.command("create")
@click.option(
    "--data-key",
    "data_key",
    metavar="PATH",
    help="Write a new development data key file (32 random bytes, mode 0600); "
    "encrypt with --data-key file://PATH.",
)
@click.option(
    "--signing-key",
    "signing_key",
    metavar="PATH",
    help="Write a new EC signing key pair: PATH (private PEM, mode 0600) and its "
    "public key (NAME.pem -> NAME.pub).",
)
@click.option(
    "--public",
    "public_key",
    metavar="PATH",
    help="Public key path for --signing-key (default: NAME.pub next to it).",
)
@click.option(
    "--curve",
    type=click.Choice(["P-256", "P-384", "P-521"]),
    default="P-256",
    show_default=True,
    help="Curve of the signing key.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def create(
    data_key: str | None,
    signing_key: str | None,
    public_key: str | None,
    curve: str,
    as_json: bool,
) -> None:
    """Create a development data key file and/or an EC signing key pair.  Existing
    files are never replaced."""
    if not (data_key or signing_key):
        raise click.UsageError("give --data-key PATH, --signing-key PATH, or both")
    if public_key and not signing_key:
        raise click.UsageError("--public goes with --signing-key")
    import os

    from weightguard.errors import DestinationError

    # Checked together first, so a refusal leaves neither file behind.
    pub = public_key or (_public_path(signing_key) if signing_key else "")
    wanted = [_key_path(data_key)] if data_key else []
    wanted += [signing_key, pub] if signing_key else []
    for path in wanted:
        if os.path.lexists(path):
            raise DestinationError(
                f"{path} already exists", hint="choose another path or remove it"
            )
    out: dict[str, str] = {}
    if data_key:
        from weightguard.crypt import create_key_file

        path = _key_path(data_key)
        try:
            create_key_file(path)
        except FileExistsError:  # created since the check above
            raise DestinationError(
                f"{path} already exists", hint="choose another path or remove it"
            ) from None
        out["data_key"] = f"file://{path}"
    if signing_key:
        from weightguard.signing import create_signing_key

        out["fingerprint"] = create_signing_key(signing_key, pub, curve=curve)
        out["signing_key"], out["public_key"] = signing_key, pub
    if as_json:
        echo_json(out)
        return
    if data_key:
        click.echo(f"wrote data key {_key_path(data_key)} (development only; keep it secret)")
        click.echo(f"  encrypt with: --data-key {out['data_key']}")
    if signing_key:
        click.echo(
            f"wrote {curve} signing key {signing_key} (keep it secret) and public key "
            f"{out['public_key']}; fingerprint {out['fingerprint']}"
        )
        click.echo(f"  sign with: --signing-key {signing_key}")
        click.echo(f"  verify, load and fetch with: --trust-key {out['public_key']}")
