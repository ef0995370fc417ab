"""``weightguard-storage-initializer SRC_URI DEST_DIR``: KServe's storage-initializer contract.

A console script of its own (KServe runs ``command`` with the two positional arguments
appended); the work is :func:`weightguard.integrations.kserve.storage_initialize`.
Configuration comes from the environment or a mounted file (docs/integrations/kserve.md).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence

import click

from weightguard.errors import WeightguardError


def main(argv: Sequence[str] | None = None) -> int:
    from weightguard.integrations.kserve import storage_initialize

    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        click.echo("usage: weightguard-storage-initializer SRC_URI DEST_DIR", err=True)
        return 2
    os.umask(0o027)  # the group (fsGroup) must keep read access, others none
    try:
        res = storage_initialize(args[0], args[1])
    except WeightguardError as exc:
        click.echo(f"error: {exc}", err=True)
        return 1
    except KeyboardInterrupt:
        return 130
    click.echo(
        json.dumps({"ok": True, "to": res.directory, "files": res.files, "bytes": res.bytes})
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
