"""``weightguard report`` and ``weightguard bom``: evidence for auditors (thin layer over
weightguard.report and weightguard.bom)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from weightguard_cli._audit_opt import audit_option
from weightguard_cli._output import activity, echo_json, progress, quiet_option
from weightguard_cli._trust_opt import policy_from_options, trust_options


@contextmanager
def _audit(spec: str | None) -> Iterator[Any]:
    from weightguard.audit import AuditLog

    log = AuditLog.open(spec)
    try:
        yield log
    finally:
        log.close()


def _trust_args(trust: dict[str, Any]) -> list[str]:
    """The trust options as given, for the commands that reproduce each check (read
    from the command's own options, so every trust option is repeated as spelled)."""
    out: list[str] = []
    for p in click.get_current_context().command.params:
        if not isinstance(p, click.Option) or p.hidden or p.name not in trust:
            continue
        value = trust[p.name]
        if p.is_flag and p.secondary_opts:  # --offline/--online
            if value != p.default:
                out.append(p.opts[0] if value else p.secondary_opts[0])
        elif p.is_flag:
            if value:
                out.append(p.opts[0])
        elif p.multiple:
            for v in value or ():
                out += [p.opts[0], str(v)]
        elif value is not None:
            out += [p.opts[0], str(value)]
    return out


_SIGNATURE = click.option(
    "--signature",
    metavar="FILE",
    help="Signature bundle (default: model.sig in the directory or prefix, <file>.sig).",
)
_ALLOW_UNSIGNED = click.option(
    "--allow-unsigned",
    "allow_unsigned",
    multiple=True,
    metavar="PATTERN",
    help="Allow files matching this glob/prefix to be present but unsigned.",
)
_COMMITMENT = click.option(
    "--watermark-commitment",
    metavar="FILE",
    type=click.Path(exists=True, dir_okay=False),
    help="The watermark's .wmcommit.json (default: <release>.wmcommit.json beside it).",
)


@click.command("report")
@click.argument("release", metavar="RELEASE")
@_SIGNATURE
@trust_options
@_ALLOW_UNSIGNED
@click.option(
    "--access-log",
    "access_logs",
    multiple=True,
    metavar="LOG",
    help="Audit log to verify and summarise (path with its rotated segments, or "
    "s3://bucket/prefix; repeatable).",
)
@click.option(
    "--checkpoint-key",
    metavar="PUB",
    type=click.Path(exists=True, dir_okay=False),
    help="Ed25519 public key (PEM) that signs the logs' checkpoints.",
)
@click.option(
    "--checkpoint-vault-key",
    metavar="URI",
    help="Vault/OpenBao Transit ed25519 key that signs the checkpoints (vault://transit/NAME).",
)
@click.option(
    "--anchor",
    metavar="URI",
    help="Where checkpoints are anchored: s3://bucket/prefix or vault-kv://mount/path "
    "(default for an s3:// log: the log's own prefix).",
)
@click.option(
    "--log-id", "log_ids", metavar="ID", multiple=True, help="Log id expected (repeatable)."
)
@click.option(
    "--max-unsigned-tail",
    metavar="N",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Records at the end of each log that may follow its last signed checkpoint.",
)
@_COMMITMENT
@click.option(
    "--watermark-key",
    metavar="KEYREF",
    help="Check that this key is the one the watermark commitment names (no data key).",
)
@click.option(
    "-o",
    "--output",
    metavar="FILE",
    default="weightguard-report.html",
    show_default=True,
    help="The HTML page to write; its Markdown twin goes beside it (.md).",
)
@click.option("--no-markdown", is_flag=True, help="Do not write the Markdown twin.")
@click.option("--json", "as_json", is_flag=True, help="Print the evidence as JSON on stdout.")
@quiet_option
@audit_option
def report(
    release: str,
    signature: str | None,
    allow_unsigned: tuple[str, ...],
    access_logs: tuple[str, ...],
    checkpoint_key: str | None,
    checkpoint_vault_key: str | None,
    anchor: str | None,
    log_ids: tuple[str, ...],
    max_unsigned_tail: int,
    watermark_commitment: str | None,
    watermark_key: str | None,
    output: str,
    no_markdown: bool,
    as_json: bool,
    quiet: bool,
    audit_log: str | None,
    **trust: Any,
) -> None:
    """Write an evidence report on RELEASE (directory, file or s3://bucket/prefix).

    One self-contained HTML page (no script, no network) and its Markdown twin:
    provenance verified under the trust options, protection (algorithm, key references,
    watermark commitment), access from the audit logs that verify (a log that does not
    is shown as such, never summarised), a verdict at the top and the commands that
    reproduce each check.  No data key is needed.  Exit status 0 when the verdict is
    PASS or ATTENTION, 1 when it is FAIL (the files are written either way).
    """
    from weightguard.report import build_report, write_report

    if checkpoint_key and checkpoint_vault_key:
        raise click.UsageError("give --checkpoint-key or --checkpoint-vault-key, not both")
    policy = policy_from_options(trust)
    state: dict[str, Any] = {}

    def show(label: str, total: int | None) -> None:
        """One display at a time: a spinner, then a bar of each log's bytes as it is
        verified and counted (one read)."""
        close()
        cm = progress(label, total, quiet)
        state["advance"] = cm.__enter__()
        state["bar"] = cm

    def close() -> None:
        cm = state.pop("bar", None)
        state.pop("advance", None)
        if cm is not None:
            cm.__exit__(None, None, None)

    def advance(n: int) -> None:
        if "advance" in state:
            state["advance"](n)

    try:
        with _audit(audit_log) as audit:
            show(f"verifying {release}", None)
            ev = build_report(
                release,
                policy,
                signature=signature,
                allow_unsigned=allow_unsigned,
                access_logs=access_logs,
                checkpoint_key=checkpoint_key,
                checkpoint_vault_key=checkpoint_vault_key,
                anchor=anchor,
                log_ids=log_ids or None,
                max_unsigned_tail=max_unsigned_tail,
                watermark_commitment=watermark_commitment,
                watermark_key=watermark_key,
                audit=audit,
                trust_args=_trust_args(trust),
                progress=advance,
                on_log=lambda log, size: show(f"verifying and counting {log}", size),
            )
    finally:
        close()
    md = None if no_markdown else str(Path(output).with_suffix(".md"))
    html_path, md_path = write_report(ev, output, md)
    if as_json:
        out = ev.to_dict()
        out["files"] = {"html": str(html_path), "markdown": str(md_path) if md_path else None}
        echo_json(out)
    else:
        click.echo(f"{ev.verdict}: {release}")
        for area, level, words in ev.headline:
            click.echo(f"  {area}: {level}: {words}")
        click.echo(f"wrote {html_path}" + (f" and {md_path}" if md_path else ""))
    if ev.verdict == "FAIL":
        raise SystemExit(1)


@click.command("bom")
@click.argument("release", metavar="RELEASE")
@_SIGNATURE
@trust_options
@_ALLOW_UNSIGNED
@_COMMITMENT
@click.option("--version", "model_version", metavar="TEXT", help="The model's version.")
@click.option("-o", "--output", metavar="FILE", help="Where to write the BOM (default: stdout).")
@quiet_option
@audit_option
def bom(
    release: str,
    signature: str | None,
    allow_unsigned: tuple[str, ...],
    watermark_commitment: str | None,
    model_version: str | None,
    output: str | None,
    quiet: bool,
    audit_log: str | None,
    **trust: Any,
) -> None:
    """Write a CycloneDX 1.6 ML-BOM (JSON) of RELEASE, verified under the trust options.

    The model with its files and verified digests, the signature and signer, the
    encryption and key provider (references only), the watermark commitment and the
    base model the release declares (README.md base_model, config.json _name_or_path),
    validated against the official CycloneDX 1.6 schema.  A release that does not
    verify gets no BOM.
    """
    from weightguard.bom import build_bom

    policy = policy_from_options(trust)
    with _audit(audit_log) as audit, activity(f"verifying {release}", quiet):
        text = build_bom(
            release,
            policy,
            signature=signature,
            allow_unsigned=allow_unsigned,
            watermark_commitment=watermark_commitment,
            version=model_version,
            audit=audit,
        )
    if output is None or output == "-":
        click.echo(text)
        return
    from weightguard.bom import write_bom

    write_bom(output, text)
    if not quiet:
        click.echo(f"wrote {os.fspath(output)} (CycloneDX 1.6, validated)", err=True)
