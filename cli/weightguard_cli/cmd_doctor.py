"""`weightguard doctor`: thin layer over weightguard.doctor."""

from __future__ import annotations

import sys

import click

from weightguard_cli._output import echo_json

_MARK = {"ok": "ok  ", "warn": "WARN", "fail": "FAIL"}


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON on stdout.")
@click.option(
    "--check",
    "only",
    multiple=True,
    metavar="NAME",
    help="Run only this check (repeatable): python, torch, cryptography, vault, s3, shm, audit.",
)
@click.option(
    "--s3-bucket",
    metavar="NAME",
    help="Check access to this bucket (default: WEIGHTGUARD_S3_BUCKET; else ListBuckets).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 120),
    default=5.0,
    show_default=True,
    help="Network timeout per check, in seconds.",
)
def doctor(as_json: bool, only: tuple[str, ...], s3_bucket: str | None, timeout: float) -> None:
    """Preflight checks for a pod or workstation.

    Checks Python, torch/CUDA, cryptography, Vault (VAULT_ADDR reachability and token
    validity; the token is never printed), S3 (endpoint and credentials), whether
    /dev/shm is a tmpfs, and whether audit checkpoints are signed (an unsigned log
    cannot prove it was not rewritten).  Exits 1 if any check fails.
    """
    from weightguard.doctor import run_checks, summarize

    results = run_checks(only=only or None, timeout=timeout, bucket=s3_bucket)
    summary = summarize(results)
    if as_json:
        echo_json(summary)
    else:
        width = max((len(r.name) for r in results), default=0)
        for r in results:
            click.echo(f"{_MARK[r.status]}  {r.name:<{width}}  {r.detail}")
        c = summary["counts"]
        click.echo(f"{c['ok']} ok, {c['warn']} warning(s), {c['fail']} failure(s)", err=True)
    if not summary["ok"]:
        sys.exit(1)
