"""``weightguard watermark embed|check`` and ``weightguard fingerprint compare``."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, TypeVar

import click

from weightguard_cli._audit_opt import audit_option
from weightguard_cli._output import activity, echo_json, quiet_option
from weightguard_cli._renamed import renamed

F = TypeVar("F", bound=Callable[..., Any])


def _encrypted_input_options(what: str, data_key_help: str) -> Callable[[F], F]:
    """Options for reading an encrypted input through the secure loader."""

    def deco(f: F) -> F:
        opts = [
            click.option(
                "--trust-key",
                "trust_keys",
                multiple=True,
                type=click.Path(exists=True),
                help=f"Encrypted {what}: trusted signer public key PEM.",
            ),
            click.option(
                "--signature",
                type=click.Path(dir_okay=False),
                default=None,
                help=f"Encrypted {what}: signature bundle.",
            ),
            click.option(
                "--unsafe-no-verification",
                "unsafe",
                is_flag=True,
                help=f"Encrypted {what}: UNSAFE, skip the signature check.",
            ),
            click.option(
                "--data-key",
                default=None,
                metavar="URI",
                help=f"Encrypted {what}: {data_key_help}.",
            ),
        ]
        for option in reversed(opts):
            f = option(f)
        return f

    return deco


@click.group("watermark")
def watermark() -> None:
    """Embed or check a keyed watermark in model weights (docs/watermark.md)."""


KEY_HELP = (
    "Watermark key: PATH, file://PATH, vault-kv://MOUNT/PATH#FIELD or "
    "vault-transit://MOUNT/KEY?context=C&version=N."
)


@watermark.command("embed")
@click.argument("model", type=click.Path(exists=True))
@click.option("-o", "--output", required=True, type=click.Path(), help="Marked copy to write.")
@click.option("--watermark-key", "key_ref", metavar="KEYREF", help="Required. " + KEY_HELP)
@renamed("--key", "--watermark-key", "key_ref", required=True)
@click.option(
    "--alpha",
    type=float,
    default=None,
    help="Strength relative to row RMS (default 0.02, measured).",
)
@click.option("--min-numel", type=int, default=None, help="Smallest tensor marked (elements).")
@click.option("--replace", "force", is_flag=True, help="Replace OUTPUT if it exists.")
@renamed("--force", "--replace", "force", is_flag=True)
@_encrypted_input_options("MODEL", "key provider URI to unwrap with (the output keeps the input's)")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@quiet_option
@audit_option
def embed(
    model: str,
    output: str,
    key_ref: str,
    alpha: float | None,
    min_numel: int | None,
    force: bool,
    trust_keys: tuple[str, ...],
    signature: str | None,
    unsafe: bool,
    data_key: str | None,
    as_json: bool,
    quiet: bool,
    audit_log: str | None,
) -> None:
    """Write a watermarked copy of MODEL (safetensors file, model directory, or encrypted
    artifact) to OUTPUT and the key commitment to OUTPUT.wmcommit.json.  An encrypted
    MODEL is verified and decrypted in memory only (--trust-key/--signature or
    --unsafe-no-verification) and OUTPUT is encrypted again under the same key provider
    and context; sign OUTPUT again afterwards."""
    from weightguard import watermark as wm
    from weightguard.audit import AuditLog

    t0 = time.perf_counter()
    if not force and os.path.lexists(output):  # before any key or model is read
        from weightguard.errors import DestinationError

        raise DestinationError(
            f"{output} already exists", hint="choose another output or pass --replace"
        )
    opts = _load_options(trust_keys, signature, unsafe, data_key)
    if opts is None and wm.is_encrypted_input(model):
        raise click.UsageError(
            "MODEL is an encrypted artifact: pass --trust-key PEM (and --signature) or "
            "--unsafe-no-verification"
        )
    log = AuditLog.open(audit_log)
    try:
        if opts is not None:
            opts["audit"] = log
        with activity(f"watermarking {model}", quiet):
            res = wm.embed_file(
                model,
                output,
                key_ref,
                alpha=wm.DEFAULT_ALPHA if alpha is None else alpha,
                min_numel=wm.DEFAULT_MIN_NUMEL if min_numel is None else min_numel,
                replace=force,
                audit=log,
                load_options=opts,
            )
    finally:
        log.close()
    note = (
        f"note: {res.output} is re-encrypted and no longer covered by the input's "
        f"signature; sign it again (weightguard sign {res.output} ...)"
        if res.encrypted
        else None
    )
    doc = {
        "output": str(res.output),
        "commitment": str(res.commitment),
        "tensors_marked": res.tensors_marked,
        "elements_marked": res.elements_marked,
        "encrypted": res.encrypted,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    if as_json:
        echo_json(doc)
    else:
        click.echo(
            f"marked {res.tensors_marked} tensors ({res.elements_marked} weights) -> "
            f"{res.output}; commitment {res.commitment}"
        )
    if note:
        click.echo(note, err=True)


def _load_options(
    trust_keys: tuple[str, ...], signature: str | None, unsafe: bool, data_key: str | None
) -> dict[str, Any] | None:
    if not (trust_keys or signature or unsafe or data_key):
        return None
    from weightguard.errors import ConfigError
    from weightguard.policy import trust_policy

    if not (trust_keys or unsafe):
        raise click.UsageError(
            "an encrypted artifact needs --trust-key or --unsafe-no-verification"
        )
    try:
        policy = trust_policy(trust_key=trust_keys, unsafe_no_verification=unsafe)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    if unsafe:
        click.echo("warning: loading the artifact WITHOUT signature verification", err=True)
    return {"policy": policy, "signature": signature, "data_key": data_key}


@watermark.command("check")
@click.argument("suspect", type=click.Path(exists=True))
@click.option(
    "--watermark-key",
    "key_refs",
    multiple=True,
    metavar="KEYREF",
    help="Required. " + KEY_HELP + " Repeat to test several keys (threshold corrected).",
)
@renamed("--key", "--watermark-key", "key_refs", required=True, multiple=True)
@click.option(
    "--original",
    type=click.Path(exists=True),
    default=None,
    help="Owner's unmarked weights (informed mode: renamed/permuted suspects).",
)
@click.option(
    "--keys-tested",
    type=int,
    default=None,
    help="How many keys you test on this suspect (threshold correction).",
)
@click.option(
    "--commitment",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Also verify KEYREF against this .wmcommit.json.",
)
@_encrypted_input_options("suspect", "key provider URI overriding the artifact's")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@quiet_option
@audit_option
def check(
    suspect: str,
    key_refs: tuple[str, ...],
    original: str | None,
    keys_tested: int | None,
    commitment: str | None,
    trust_keys: tuple[str, ...],
    signature: str | None,
    unsafe: bool,
    data_key: str | None,
    as_json: bool,
    quiet: bool,
    audit_log: str | None,
) -> None:
    """Test SUSPECT (file, directory, or encrypted artifact) for the watermark of KEYREF.
    Verdict: present (p <= 1e-9/K), inconclusive (z >= 4) or absent."""
    from weightguard import watermark as wm
    from weightguard.audit import AuditLog

    t0 = time.perf_counter()
    opts = _load_options(trust_keys, signature, unsafe, data_key)
    log = AuditLog.open(audit_log)
    try:
        if opts is not None:
            opts["audit"] = log
        with activity(f"checking {suspect}", quiet):
            reps = wm.check_keys(
                suspect,
                list(key_refs),
                original=original,
                keys_tested=keys_tested,
                load_options=opts,
                audit=log,
            )
    finally:
        log.close()
    seconds = round(time.perf_counter() - t0, 3)
    docs = []
    for ref, rep in zip(key_refs, reps, strict=True):
        d = rep.to_dict()
        d["key_ref"] = ref
        if commitment is not None:
            d["commitment_ok"] = wm.verify_commitment(commitment, ref)
        docs.append(d)
    if len(reps) == 1:
        doc = {k: v for k, v in docs[0].items() if k != "key_ref"}
    else:
        order = ["absent", "inconclusive", "present"]
        best = max((r.verdict for r in reps), key=order.index)
        doc = {"verdict": best, "keys_tested": reps[0].keys_tested, "results": docs}
    doc["seconds"] = seconds
    if as_json:
        echo_json(doc)
        return
    for ref, rep, d in zip(key_refs, reps, docs, strict=True):
        who = f"[{ref}] " if len(reps) > 1 else ""
        click.echo(
            f"{who}verdict: {rep.verdict}  z = {rep.z:.2f}  p <= 10^{rep.log10_p:.1f}  "
            f"({rep.mode}, {rep.tensors} tensors, {rep.elements} weights; present at "
            f"z >= {rep.threshold_z:.2f} for {rep.keys_tested} key(s))"
        )
        if commitment is not None:
            ok = "matches" if d["commitment_ok"] else "DOES NOT match"
            click.echo(f"{who}commitment: {ok} this key")
    if reps[0].missing:
        click.echo(f"missing from the suspect: {len(reps[0].missing)} tensors", err=True)


@click.group("fingerprint")
def fingerprint() -> None:
    """Keyless evidence that one model was derived from another."""


@fingerprint.command("compare")
@click.argument("a", type=click.Path(exists=True))
@click.argument("b", type=click.Path(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def compare(a: str, b: str, as_json: bool) -> None:
    """Was B derived from A?  Per-layer similarity after alignment, and a permutation-test
    p-value (Spearman of the unit assignment against identity, Fisher-combined)."""
    from weightguard import fingerprint as fp

    rep = fp.compare(a, b)
    if as_json:
        echo_json(rep.to_dict())
        return
    click.echo(
        f"verdict: {rep.verdict}  log10 p = {rep.log10_p:.1f}  "
        f"similarity = {rep.similarity:.3f}  ({len(rep.layers)} layers; derived at "
        f"log10 p <= {fp.DERIVED_LOG10_P} or similarity >= {fp.DERIVED_SIMILARITY})"
    )
