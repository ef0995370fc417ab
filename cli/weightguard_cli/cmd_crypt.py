"""`weightguard encrypt | decrypt | rewrap | inspect`: thin layer over weightguard.crypt."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from weightguard_cli._audit_opt import allow_key_option, audit_option
from weightguard_cli._output import activity, echo_json, progress, quiet_option
from weightguard_cli._renamed import renamed
from weightguard_cli._sizes import parse_size as _parse_size


def _tree_size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@contextmanager
def _audit(spec: str | None) -> Iterator[Any]:
    from weightguard.audit import AuditLog

    log = AuditLog.open(spec)
    try:
        yield log
    finally:
        log.close()


def _print(obj: dict[str, Any], as_json: bool, human: Callable[[dict[str, Any]], None]) -> None:
    if as_json:
        echo_json(obj)
    else:
        human(obj)


def _key(k: dict[str, Any]) -> str:
    """URI and version of a key; a key file has no version, so none is shown."""
    return k["uri"] if k.get("key_version") is None else f"{k['uri']} v{k['key_version']}"


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


@click.command("encrypt")
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.option(
    "-o",
    "--output",
    "dst",
    required=True,
    type=click.Path(path_type=Path),
    help="Output file (for a file) or new directory (for a model directory).",
)
@click.option(
    "--data-key",
    "key_uri",
    metavar="URI",
    help="Required. Key that wraps the data key: vault://<transit-mount>/<key>, "
    "awskms://<key-id-or-arn> or file://<path> (dev: `weightguard keys create`).",
)
@renamed("--key", "--data-key", "key_uri", required=True)
@click.option(
    "--chunk-size",
    default="4MiB",
    show_default=True,
    metavar="SIZE",
    help="Plaintext bytes per AEAD record (4KiB..64MiB): the unit a reader checks and "
    "decrypts. 1MiB for tensor-parallel serving of small models (docs/lazy.md).",
)
@click.option(
    "--encrypt-header",
    is_flag=True,
    help="Also hide tensor names/dtypes/shapes (inspect then shows sizes only).",
)
@click.option(
    "--context",
    metavar="MODEL_ID",
    help="Model identity bound to the key (default: file or directory name).",
)
@click.option(
    "--encrypt-other-files",
    is_flag=True,
    help="Directory input: also encrypt config/tokenizer/index files.",
)
@click.option("--workers", type=click.IntRange(1, 256), help="Threads (default: usable CPUs).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@quiet_option
@audit_option
def encrypt(
    src: Path,
    dst: Path,
    key_uri: str,
    chunk_size: str,
    encrypt_header: bool,
    context: str | None,
    encrypt_other_files: bool,
    workers: int | None,
    as_json: bool,
    quiet: bool,
    audit_log: str | None,
) -> None:
    """Encrypt SRC (a .safetensors file or a model directory) into an artifact."""
    from weightguard import crypt

    size = _parse_size(chunk_size)
    with (
        _audit(audit_log) as log,
        progress(f"encrypting {src.name}", _tree_size(src), quiet) as prog,
    ):
        if src.is_dir():
            res = crypt.encrypt_model(src, dst, key_uri, chunk_size=size,
                                      encrypt_header=encrypt_header, context=context,
                                      encrypt_other_files=encrypt_other_files, workers=workers,
                                      progress=prog, audit=log)  # fmt: skip
        else:
            res = crypt.encrypt_file(src, dst, key_uri, chunk_size=size,
                                     encrypt_header=encrypt_header, context=context,
                                     workers=workers, progress=prog, audit=log)  # fmt: skip

    def human(r: dict[str, Any]) -> None:
        if "files" in r:
            n = sum(1 for v in r["files"].values() if v != "copied")
            click.echo(f"encrypted {n} file(s), {_gib(r['bytes'])} -> {dst} "
                       f"(key {_key(r['key'])}, "
                       f"context {r['key']['context']!r}, {r['seconds']:.1f} s)")  # fmt: skip
        else:
            k = r["key"]
            click.echo(f"encrypted {src} -> {dst}: {r['num_chunks']} chunks of "
                       f"{r['chunk_size']} bytes, key {_key(k)}, "
                       f"context {k['context']!r}")  # fmt: skip

    _print(res, as_json, human)


@click.command("decrypt")
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.option(
    "-o",
    "--output",
    "dst",
    required=True,
    type=click.Path(path_type=Path),
    help="Plaintext output file or new directory.",
)
@click.option(
    "--data-key",
    "key_uri",
    metavar="URI",
    help="Where to find the key (default: the URI recorded in the artifact, if allowed).",
)
@allow_key_option
@renamed("--key", "--data-key", "key_uri")
@click.option("--workers", type=click.IntRange(1, 256), help="Threads (default: usable CPUs).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@quiet_option
@audit_option
def decrypt(
    src: Path,
    dst: Path,
    key_uri: str | None,
    allow_key: tuple[str, ...],
    workers: int | None,
    as_json: bool,
    quiet: bool,
    audit_log: str | None,
) -> None:
    """Decrypt an artifact (or an encrypted model directory) back to plaintext on disk."""
    from weightguard import crypt

    with (
        warnings.catch_warnings(),
        _audit(audit_log) as log,
        progress(f"decrypting {src.name}", _tree_size(src), quiet) as prog,
    ):
        # The library warns once the keys are unwrapped, just before the first plaintext
        # byte is written: say it then, not before a key that may be refused.
        warnings.simplefilter("always", crypt.PlaintextWriteWarning)
        warnings.showwarning = _plaintext_warning
        if src.is_dir():
            res = crypt.decrypt_model(src, dst, data_key=key_uri, workers=workers,
                                      progress=prog, audit=log,
                                      allow_key=allow_key)  # fmt: skip
        else:
            res = crypt.decrypt_file(src, dst, data_key=key_uri, workers=workers,
                                     progress=prog, audit=log,
                                     allow_key=allow_key)  # fmt: skip
    _print(res, as_json, lambda r: click.echo(f"decrypted {src} -> {dst}"))


def _plaintext_warning(message: Warning | str, *_: object, **__: object) -> None:
    click.echo(f"warning: {message}", err=True)


@click.command("rewrap")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option(
    "--new-data-key",
    "to_uri",
    metavar="URI",
    help="New key URI (default: same key, latest version, e.g. after rotation).",
)
@renamed("--to", "--new-data-key", "to_uri")
@click.option(
    "--data-key",
    "key_uri",
    metavar="URI",
    help="Where to find the current key (default: the URI in the artifact, if allowed).",
)
@allow_key_option
@renamed("--key", "--data-key", "key_uri")
@click.option("--context", metavar="MODEL_ID", help="New context (default: keep).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable summary on stdout.")
@quiet_option
@audit_option
def rewrap(
    path: Path,
    to_uri: str | None,
    key_uri: str | None,
    allow_key: tuple[str, ...],
    context: str | None,
    as_json: bool,
    quiet: bool,
    audit_log: str | None,
) -> None:
    """Rewrap the data key of PATH (file or directory); the encrypted weights are untouched."""
    from weightguard import crypt

    with _audit(audit_log) as log, activity(f"rewrapping {path.name}", quiet):
        res = crypt.rewrap(
            path, to_uri, data_key=key_uri, context=context, audit=log, allow_key=allow_key
        )

    def human(r: dict[str, Any]) -> None:
        for name, ch in r["files"].items():
            a, b = ch["from"], ch["to"]
            click.echo(f"{name}: {_key(a)} -> {_key(b)}")

    _print(res, as_json, human)


@click.command("inspect")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Full header summary as JSON.")
@click.option("--verify", is_flag=True, help="Unwrap the key and authenticate the header.")
@click.option(
    "--data-key",
    "key_uri",
    metavar="URI",
    help="Key URI for --verify (default: recorded, if allowed).",
)
@allow_key_option
@renamed("--key", "--data-key", "key_uri")
@click.option("--max-tensors", default=20, show_default=True, help="Tensors listed (human output).")
@quiet_option
@audit_option
def inspect(
    path: Path,
    as_json: bool,
    verify: bool,
    key_uri: str | None,
    allow_key: tuple[str, ...],
    max_tensors: int,
    quiet: bool,
    audit_log: str | None,
) -> None:
    """Show an artifact's header: sizes, algorithms, key, and tensors unless hidden."""
    from weightguard import crypt

    if verify:
        with _audit(audit_log) as log, activity(f"verifying {path.name}", quiet):
            res = crypt.inspect(path, verify=True, data_key=key_uri, allow_key=allow_key, audit=log)
    else:
        res = crypt.inspect(path)

    def one(info: dict[str, Any]) -> None:
        k = info["key"]
        click.echo(f"{info['path']}: weightguard artifact v{info['version']} ({info['content']})")
        version = "" if k.get("key_version") is None else f" version {k['key_version']}"
        click.echo(f"  key:        {k['uri']} ({k['provider']}){version}, "
                   f"context {k['context']!r}")  # fmt: skip
        click.echo(f"  algorithms: {info['algorithms']['aead']}, {info['algorithms']['kdf']}, "
                   f"{info['algorithms']['mac']}")  # fmt: skip
        click.echo(f"  chunks:     {info['num_chunks']} x {info['chunk_size']} bytes; data "
                   f"{info['data_size']} bytes; safetensors header "
                   f"{info['st_header_size']} bytes")  # fmt: skip
        state = "authenticated" if info["authenticated"] else "NOT authenticated (no key used)"
        complete = "complete" if info["complete"] else "INCOMPLETE (size differs from header)"
        click.echo(f"  header:     {state}; file {complete}")
        if info["header_encrypted"]:
            click.echo("  tensors:    hidden (--encrypt-header)")
            return
        tensors = info.get("tensors") or {}
        click.echo(f"  tensors:    {len(tensors)}; metadata {json.dumps(info.get('metadata'))}")
        for name, t in list(tensors.items())[:max_tensors]:
            click.echo(f"    {name}  {t['dtype']}  {t['shape']}")
        if len(tensors) > max_tensors:
            click.echo(f"    ... {len(tensors) - max_tensors} more (use --json)")

    def human(r: dict[str, Any]) -> None:
        if "files" in r:
            for info in r["files"].values():
                one(info)
        else:
            one(r)

    _print(res, as_json, human)


__all__ = ["decrypt", "encrypt", "inspect", "rewrap"]
