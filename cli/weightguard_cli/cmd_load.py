"""``weightguard load / fetch / push``: the secure loader for pods and init containers."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from weightguard_cli._audit_opt import allow_key_option, audit_option
from weightguard_cli._output import activity, echo_json, progress, progress_of, quiet_option
from weightguard_cli._renamed import renamed
from weightguard_cli._trust_opt import policy_from_options, trust_options

F = TypeVar("F", bound=Callable[..., Any])


def _trust_options(f: F) -> F:
    opts = [
        trust_options,
        click.option(
            "--signature",
            type=click.Path(dir_okay=False),
            help="Signature bundle (default: <file>.sig, or model.sig in the directory).",
        ),
        click.option(
            "--data-key",
            metavar="URI",
            help="Key provider URI overriding the artifact's (vault://, awskms://, file://).",
        ),
        allow_key_option,
        click.option("--workers", type=int, help="Worker threads (default: usable CPUs)."),
        quiet_option,
        audit_option,
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _common(opts: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    from weightguard.audit import AuditLog

    policy = policy_from_options(opts)
    kwargs: dict[str, Any] = {
        "signature": opts["signature"],
        "data_key": opts["data_key"],
        "allow_key": opts["allow_key"],
        "workers": opts["workers"],
        "audit": AuditLog.open(opts["audit_log"]),
    }
    return policy, kwargs


@click.command("load")
@click.argument("source")
@_trust_options
@click.option("--device", default="cpu", show_default=True, help="cpu or cuda[:N].")
# `load` always was the dry run `--check` described (verify, decrypt, keep nothing):
# the flag stays one release, hidden, so old scripts keep working.
@click.option("--check", is_flag=True, hidden=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def load(source: str, device: str, check: bool, as_json: bool, quiet: bool, **opts: Any) -> None:
    """Securely load SOURCE (file, directory or s3:// URI) onto --device: verify every
    byte against the signature, decrypt, then discard.  A preflight for a pod (keys,
    policy, device memory, throughput) and an integrity check of a stored copy.

    Exit status 0 only if every byte verified and decrypted.
    """
    from weightguard.loader import load_file

    if check:
        click.echo(
            "warning: --check is deprecated: load always verifies, decrypts and keeps nothing",
            err=True,
        )
    policy, kwargs = _common(opts)
    audit = kwargs["audit"]
    t0 = time.monotonic()
    try:
        with progress_of(f"loading {source}", quiet) as report:
            tensors = load_file(source, device, policy=policy, progress=report, **kwargs)
    finally:
        audit.close()
    dt = time.monotonic() - t0
    nbytes = sum(t.numel() * t.element_size() for t in tensors.values())
    for t in tensors.values():
        t.zero_()
    n = len(tensors)
    tensors.clear()
    if as_json:
        out = {"ok": True, "source": source, "tensors": n, "bytes": nbytes, "seconds": dt}
        echo_json(out)
    else:
        click.echo(f"ok: {n} tensors, {nbytes / 1e9:.3f} GB in {dt:.2f} s from {source}")


@click.command("fetch")
@click.argument("source")
@click.option(
    "-o",
    "--output",
    "dest",
    type=click.Path(file_okay=False),
    help="Required. Output directory (tmpfs); it must be empty unless --replace.",
)
@renamed("--to", "--output", "dest", required=True, type=click.Path(file_okay=False))
@click.option(
    "--replace",
    is_flag=True,
    help="Replace what the output directory holds (removed once the model is in place).",
)
@click.option(
    "--allow-disk",
    is_flag=True,
    help="Allow a destination that is not tmpfs (plaintext weights on disk).",
)
@_trust_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def fetch(
    source: str,
    dest: str,
    replace: bool,
    allow_disk: bool,
    as_json: bool,
    quiet: bool,
    **opts: Any,
) -> None:
    """Verify and decrypt SOURCE into a directory (tmpfs) for servers that cannot call
    Python."""
    from weightguard.transfer import fetch_model

    policy, kwargs = _common(opts)
    audit = kwargs["audit"]
    try:
        with activity(f"fetching {source}", quiet):
            res = fetch_model(
                source, dest, policy=policy, allow_disk=allow_disk, replace=replace, **kwargs
            )
    finally:
        audit.close()
    if as_json:
        echo_json({"ok": True, "to": res.directory, "files": res.files, "bytes": res.bytes})
    else:
        click.echo(f"ok: {len(res.files)} files, {res.bytes} bytes written to {res.directory}")


@click.command("push")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
@click.argument("destination")
@click.option("--endpoint-url", help="S3 endpoint (default: AWS_ENDPOINT_URL_S3 / AWS).")
@click.option(
    "--replace",
    is_flag=True,
    help="Overwrite a DESTINATION that already holds objects: afterwards it holds exactly "
    "this release (its other objects are removed). Without it such a push is refused.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@quiet_option
@audit_option
def push(
    directory: str,
    destination: str,
    endpoint_url: str | None,
    replace: bool,
    as_json: bool,
    quiet: bool,
    audit_log: str | None,
) -> None:
    """Upload a released model DIRECTORY to DESTINATION (s3://bucket/prefix), multipart,
    retrying failed requests with backoff.  A DESTINATION that already holds a release
    is refused unless --replace.  Audited (event `push`)."""
    from weightguard.audit import AuditLog
    from weightguard.transfer import push_model

    size = sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())
    with AuditLog.open(audit_log) as audit, progress(f"pushing {directory}", size, quiet) as adv:
        res = push_model(
            directory,
            destination,
            endpoint_url=endpoint_url,
            progress=adv,
            replace=replace,
            audit=audit,
        )
    if as_json:
        echo_json(res)
    else:
        replaced = f" (replaced {res['replaced']} objects)" if res["replaced"] else ""
        click.echo(
            f"ok: {len(res['files'])} files, {res['bytes']} bytes to {destination}{replaced}"
        )
        if not any(Path(directory, n).suffix == ".sig" for n in os.listdir(directory)):
            click.echo("warning: no signature (.sig) in the directory", err=True)
