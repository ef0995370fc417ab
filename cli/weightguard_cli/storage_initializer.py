"""``weightguard-storage-initializer SRC_URI DEST_DIR``: KServe's storage-initializer contract.

A console script of its own (KServe runs ``command`` with the two positional arguments
appended); the work is :func:`weightguard.integrations.kserve.storage_initialize`.
Configuration comes from the environment or a mounted file (docs/integrations/kserve.md).
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Sequence

import click

from weightguard.errors import WeightguardError

USAGE = "usage: weightguard-storage-initializer SRC_URI DEST_DIR"


def _help() -> str:
    from weightguard.integrations.kserve import VARIABLES

    return (
        f"{USAGE}\n\n"
        "KServe storage initializer: verify the signature of the model at SRC_URI\n"
        "(weightguard+s3://bucket/prefix/, s3://... or a path), unwrap its keys and decrypt\n"
        "it into DEST_DIR (tmpfs), all or nothing.  Configured by the environment (or the\n"
        "JSON file WEIGHTGUARD_CONFIG names); see docs/integrations/kserve.md:\n\n  "
        + "\n  ".join(VARIABLES)
        + "\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    from weightguard.integrations.kserve import storage_initialize

    args = list(sys.argv[1:] if argv is None else argv)
    if args in (["--help"], ["-h"]):
        click.echo(_help())
        return 0
    if len(args) != 2 or any(a.startswith("-") for a in args):
        click.echo(USAGE, err=True)
        return 2
    os.umask(0o027)  # the group (fsGroup) must keep read access, others none
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", FutureWarning)
            try:
                res = storage_initialize(args[0], args[1])
            finally:
                for w in caught:  # one line each (a deprecated variable name, ...)
                    click.echo(f"warning: {w.message}", err=True)
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
