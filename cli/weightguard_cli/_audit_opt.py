"""``--audit-log`` option shared by every command that touches weights.

    from weightguard_cli._audit_opt import audit_option

    @click.command()
    @audit_option
    def load(..., audit_log: str | None) -> None:
        log = AuditLog.open(audit_log)      # None -> WEIGHTGUARD_AUDIT_LOG / default

Importing this module is cheap (no weightguard.audit import).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

AUDIT_LOG_HELP = (
    "Audit log destination: a file path, '-' for stdout, or s3://bucket/prefix; "
    "several separated by commas. Default: $WEIGHTGUARD_AUDIT_LOG, else stdout in "
    "Kubernetes, else ~/.local/state/weightguard/audit.jsonl."
)


def audit_option(f: F) -> F:
    """Add ``--audit-log`` (parameter ``audit_log: str | None``) to a click command."""
    return click.option(
        "--audit-log",
        "audit_log",
        envvar="WEIGHTGUARD_AUDIT_LOG",
        show_envvar=True,
        default=None,
        metavar="DEST",
        help=AUDIT_LOG_HELP,
    )(f)


ALLOW_KEY_HELP = (
    "Key reference an artifact header may name, used without --data-key "
    "(shell pattern, e.g. 'vault://transit/*'; a file:// key only if named exactly). "
    "Repeatable; adds to $WEIGHTGUARD_ALLOW_KEY."
)


def allow_key_option(f: F) -> F:
    """Add ``--allow-key PATTERN`` (parameter ``allow_key: tuple[str, ...]``), repeatable."""
    return click.option(
        "--allow-key", "allow_key", multiple=True, metavar="PATTERN", help=ALLOW_KEY_HELP
    )(f)
