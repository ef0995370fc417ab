"""`weightguard audit verify|show|keygen`: thin layer over weightguard.audit."""

from __future__ import annotations

import datetime as _dt
import re
from typing import Any

import click

from weightguard_cli._output import echo_json
from weightguard_cli._renamed import renamed

_REL = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _since(value: str | None) -> _dt.datetime | None:
    if value is None:
        return None
    m = _REL.match(value.strip())
    if m:
        return _dt.datetime.now(_dt.UTC) - _dt.timedelta(seconds=int(m[1]) * _UNITS[m[2]])
    from weightguard.audit import parse_time

    try:
        return parse_time(value)
    except ValueError:
        raise click.BadParameter(
            f"{value!r} is neither a time (2025-01-31T10:00Z) nor a duration (15m, 2h, 7d)",
            param_hint="--since",
        ) from None


@click.group()
def audit() -> None:
    """Show and verify the tamper-evident access audit log."""


@audit.command()
@click.argument("log", metavar="LOG")
@click.option(
    "--checkpoint-key",
    metavar="PUB",
    help="Ed25519 public key (PEM) that signs checkpoints.",
)
@click.option(
    "--checkpoint-vault-key",
    "vault_key",
    metavar="URI",
    help="Vault/OpenBao Transit ed25519 key that signs checkpoints (vault://transit/NAME).",
)
@renamed("--vault-key", "--checkpoint-vault-key", "vault_key")
@click.option(
    "--anchor",
    metavar="URI",
    help="Where checkpoints are anchored: s3://bucket/prefix or vault-kv://mount/path "
    "(default for an s3:// log: the log's own prefix).",
)
@click.option(
    "--log-id",
    "log_ids",
    metavar="ID",
    multiple=True,
    help="The log id expected in LOG (repeatable); the anchor is read for these ids. "
    "Default with --anchor: every log the anchor holds.",
)
@click.option(
    "--max-unsigned-tail",
    metavar="N",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="With a checkpoint key or anchor: how many records at the end of each log may "
    "be written after its last signed checkpoint (a live writer's log).",
)
@click.option(
    "--allow-unsigned-log",
    "allow_unsigned",
    is_flag=True,
    help="Accept a result without checkpoint signatures (no --checkpoint-key or "
    "--checkpoint-vault-key): it proves nothing against whoever can rewrite the log.",
)
@renamed("--allow-unsigned", "--allow-unsigned-log", "allow_unsigned", is_flag=True)
@click.option(
    "--mixed",
    is_flag=True,
    help="Skip lines that are not audit records (stdout collected with other output).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def verify(
    log: str,
    checkpoint_key: str | None,
    vault_key: str | None,
    anchor: str | None,
    log_ids: tuple[str, ...],
    max_unsigned_tail: int,
    allow_unsigned: bool,
    mixed: bool,
    as_json: bool,
) -> None:
    """Verify LOG (a file with its rotated segments, '-' for stdin, or s3://bucket/prefix).

    Exit status 0 when the chain, the signed checkpoints and the anchor verify; 1 and
    the first broken record (edited, deleted, reordered, truncated, bad_checkpoint,
    unsigned, unknown_log, unanchored) otherwise.  Without --checkpoint-key or
    --checkpoint-vault-key the checkpoints are not checked and the exit status is 1
    unless --allow-unsigned-log is given.
    """
    from weightguard.audit import verify_log

    if checkpoint_key and vault_key:
        raise click.UsageError("give --checkpoint-key or --checkpoint-vault-key, not both")
    if anchor is None and log.startswith("s3://"):
        anchor = log
    result = verify_log(
        log,
        checkpoint_key=checkpoint_key,
        checkpoint_vault_key=vault_key,
        anchor=anchor,
        allow_foreign=mixed,
        max_unsigned_tail=max_unsigned_tail,
        log_ids=log_ids or None,
    )
    refused = result.ok and not result.signed and not allow_unsigned
    if as_json:
        out = result.to_dict()
        out["accepted"] = result.ok and not refused
        echo_json(out)
    else:
        click.echo(result.describe())
        for w in result.warnings:
            click.echo(f"warning: {w}", err=True)
    if refused:
        click.echo(
            "error: the log's checkpoints were not verified (no --checkpoint-key or "
            "--checkpoint-vault-key): the chain only shows the file is self-consistent, "
            "which anyone who can write it can recompute; pass the checkpoint key, or "
            "--allow-unsigned-log to accept that",
            err=True,
        )
    if not result.ok or refused:
        raise SystemExit(1)


def _subject_text(s: Any) -> str:
    if not isinstance(s, dict):
        return ""
    if s.get("k8s_pod"):
        text = f"{s.get('k8s_namespace', '?')}/{s['k8s_pod']}"
        if s.get("k8s_service_account"):
            text += f" sa={s['k8s_service_account']}"
    else:
        text = f"{s.get('user', s.get('uid', '?'))}@{s.get('host', '?')}[{s.get('pid', '?')}]"
    if s.get("vault_role"):
        text += f" role={s['vault_role']}"
    return text


def _object_text(o: Any) -> str:
    if not isinstance(o, dict):
        return ""
    parts = []
    for k in ("uri", "path", "name"):
        if o.get(k):
            parts.append(str(o[k]))
            break
    if o.get("key_id"):
        ver = f"@v{o['key_version']}" if o.get("key_version") is not None else ""
        parts.append(f"key={o['key_id']}{ver}")
    if o.get("signer"):
        parts.append(f"signer={o['signer']}")
    return " ".join(parts)


def _detail(r: dict[str, Any]) -> str:
    parts = []
    if r.get("reason"):
        parts.append(str(r["reason"]))
    if r.get("bytes") is not None:
        parts.append(f"{r['bytes']} B")
    if r.get("duration_s") is not None:
        parts.append(f"{r['duration_s']:.3f} s")
    return "; ".join(parts)


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


@audit.command()
@click.argument("log", metavar="LOG")
@click.option(
    "--since", metavar="TIME", help="Only events at/after TIME (ISO time, or 15m, 2h, 7d)."
)
@click.option(
    "--artifact", metavar="TEXT", help="Only events whose object (URI, digest...) contains TEXT."
)
@click.option(
    "--subject",
    metavar="TEXT",
    help="Only events whose subject (user, host, pod, SA) contains TEXT.",
)
@click.option(
    "--outcome", metavar="OUTCOME", help="Only this outcome (ok, denied, error, failed, tamper)."
)
@click.option(
    "--event", metavar="NAME", help="Only this event (prefix with a trailing '*': load.*)."
)
@click.option("--checkpoints", is_flag=True, help="Include checkpoint records.")
@click.option("--json", "as_json", is_flag=True, help="Print matching records as JSON lines.")
def show(
    log: str,
    since: str | None,
    artifact: str | None,
    subject: str | None,
    outcome: str | None,
    event: str | None,
    checkpoints: bool,
    as_json: bool,
) -> None:
    """Show LOG's events as a table (no integrity check: use `audit verify`)."""
    from weightguard.audit import read_records

    records = read_records(
        log,
        since=_since(since),
        artifact=artifact,
        subject=subject,
        outcome=outcome,
        event=event,
        include_checkpoints=checkpoints,
    )
    if as_json:
        for r in records:
            echo_json(r)
        return
    header = ("TIME", "SEQ", "EVENT", "OUTCOME", "SUBJECT", "OBJECT", "DETAIL")
    widths = (19, 6, 16, 7, 32, 48, 40)
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    click.echo(fmt.format(*header).rstrip())
    n = 0
    for r in records:
        n += 1
        row = (
            str(r.get("time", ""))[:19].replace("T", " "),
            str(r.get("seq", "")),
            str(r.get("event", "")),
            str(r.get("outcome", "")),
            _subject_text(r.get("subject")),
            _object_text(r.get("object")),
            _detail(r),
        )
        click.echo(fmt.format(*(_clip(c, w) for c, w in zip(row, widths, strict=True))).rstrip())
    click.echo(f"{n} event(s)", err=True)


@audit.command()
@click.argument("private_key", metavar="PRIVATE_KEY")
@click.option(
    "--public", "public_key", metavar="PUB", help="Public key path (default PRIVATE_KEY.pub)."
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def keygen(private_key: str, public_key: str | None, as_json: bool) -> None:
    """Create an Ed25519 key pair for signing audit checkpoints.

    Point WEIGHTGUARD_AUDIT_SIGNING_KEY at PRIVATE_KEY; give auditors the .pub file.
    """
    from weightguard.audit import generate_checkpoint_key

    pub = public_key or private_key + ".pub"
    key_id = generate_checkpoint_key(private_key, pub)
    if as_json:
        echo_json({"private_key": private_key, "public_key": pub, "key_id": key_id})
    else:
        click.echo(f"wrote {private_key} (keep secret) and {pub}; key id {key_id}")
