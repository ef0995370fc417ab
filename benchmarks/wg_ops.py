"""weightguard side of the benchmarks (see benchmarks/ops.py for the conventions).

Each function imports the weightguard API it needs inside the function and raises
:class:`benchmarks.harness.Unavailable` when that API has not landed, so the harness
always runs and reports "not available yet" for the case.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.harness import Unavailable
from benchmarks.ops import Timed, _expect_tensors, _files, _nbytes, _need_cuda, _sync

WG = str(Path(sys.executable).parent / "weightguard")


def _api(module: str, *attrs: str) -> Any:
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise Unavailable(f"{module} ({exc})") from None
    missing = [a for a in attrs if not hasattr(mod, a)]
    if missing:
        raise Unavailable(f"{module}.{', '.join(missing)}")
    return mod


def _preimport_loader_modules() -> None:
    """Import what ``load_file`` imports lazily, before the timer, as every anchor's
    imports (torch, safetensors, tensorizer) are: the trial measures the load, not
    Python compiling modules.  A long-running pod pays these imports once."""
    for name in (
        "weightguard.audit",
        "weightguard.policy",
        "weightguard.signing",
        "weightguard._internal.format.layout",
        "weightguard._internal.keys.providers",
        "weightguard._internal.load.pipeline",
        "weightguard._internal.load.copiers",
        "weightguard._internal.load.sources",
        "cryptography.hazmat.primitives.ciphers.aead",
        "blake3",
    ):
        importlib.import_module(name)


def _prep_ok(prep_error: str | None, *paths: str) -> None:
    if prep_error:
        raise Unavailable(prep_error.removeprefix("not available yet: "))
    for p in paths:
        if not p:
            raise Unavailable("input was not prepared (weightguard step missing)")


def _size(model: str) -> int:
    return sum(p.stat().st_size for p in _files(model))


# ------------------------------------------------------------------ keys


def make_file_key(directory: Path) -> str:
    """A local development key (``file://``); returns its URI."""
    keys = _api("weightguard._internal.keys.providers", "create_key_file")
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "bench.key"
    if not path.exists():
        keys.create_key_file(path)
    return f"file://{path}"


# ------------------------------------------------------------------ encrypt


def encrypt(src: str, out_dir: str, key_uri: str, prep_error: str | None = None) -> Timed:
    _prep_ok(prep_error, key_uri)
    crypt = _api("weightguard.crypt", "encrypt_file")
    dst = Path(out_dir) / "model.safetensors.wgenc"

    def run() -> int:
        crypt.encrypt_file(src, dst, key_uri)
        if not dst.exists():
            raise RuntimeError("encrypt_file wrote nothing")
        return os.path.getsize(src)

    return run


def encrypt_model(src_dir: str, dst_dir: str, key_uri: str) -> None:
    crypt = _api("weightguard.crypt", "encrypt_model")
    crypt.encrypt_model(src_dir, dst_dir, key_uri)


# ------------------------------------------------------------------ signing


def sign(model: str, key: str, out_dir: str, name: str = "model.sig") -> Timed:
    """``sign_model`` with an EC P-256 ``KeySigner`` (OMS bundle + per-chunk digests)."""
    signing = _api("weightguard.signing", "sign_model", "KeySigner")
    sig = Path(out_dir) / name
    signer = signing.KeySigner.from_file(key)

    def run() -> int:
        signing.sign_model(model, sig, signer, replace=True)  # a prepared copy is re-signed
        if not sig.exists():
            raise RuntimeError("sign_model wrote no signature")
        return _size(model)

    return run


def verify(model: str, pub: str, sig: str, prep_error: str | None = None) -> Timed:
    """``verify_bundle`` with a ``PublicKey`` policy, every byte hashed (hash_files=True)."""
    _prep_ok(prep_error, sig)
    signing = _api("weightguard.signing", "verify_bundle")
    policy = _key_policy(pub)

    def run() -> int:
        manifest = signing.verify_bundle(model, sig, policy)
        if not manifest.files:
            raise RuntimeError("verify_bundle returned no files")
        return _size(model)

    return run


def _key_policy(pub: str) -> Any:
    pol = _api("weightguard.policy", "PublicKey")
    return pol.PublicKey(Path(pub).read_bytes())


def sign_cli(model: str, key: str, out_dir: str) -> Timed:
    sig = Path(out_dir) / "model.sig"
    # each timed run writes the same bundle again: say so (sign refuses otherwise)
    return _cli(["sign", model, "--signature", str(sig), "--signing-key", key, "--replace"], model)


def verify_cli(model: str, pub: str, sig: str) -> Timed:
    if not sig:
        raise Unavailable("no weightguard signature prepared")
    return _cli(["verify", model, "--signature", sig, "--trust-key", pub], model)


def _cli(args: list[str], model: str | None) -> Timed:
    if not Path(WG).exists():
        raise Unavailable("weightguard console script not installed")

    def run() -> int:
        p = subprocess.run([WG, *args], capture_output=True, text=True)
        if p.returncode != 0:
            low = p.stderr.lower()
            if "no such command" in low or "modulenotfounderror" in low or "no module named" in low:
                raise Unavailable(f"weightguard {args[0]} CLI")
            raise RuntimeError(f"weightguard {args[0]} exited {p.returncode}: {p.stderr[-500:]}")
        return _size(model) if model else 0

    return run


# ------------------------------------------------------------------ secure load


def load(
    model: str,
    device: str,
    expect: int | None,
    pub: str,
    sig: str,
    key_uri: str,
    audit_dir: str,
    prep_error: str | None = None,
    first_call: bool = False,
) -> Timed:
    """``weightguard.load_file``: signature + policy, chunk digests, AES-GCM, audit events.

    The key is the bench's ``file://`` key, named by the caller (a header's file://
    reference alone is refused);
    audit events go to a file in the trial's temporary directory (fsync per event).
    ``first_call``: ``import weightguard.loader`` and the policy's construction happen
    inside the timer, what a process's first load pays (torch is imported before, as for
    every anchor).
    """
    _prep_ok(prep_error, model, sig)
    _need_cuda(device)
    os.environ["WEIGHTGUARD_AUDIT_LOG"] = str(Path(audit_dir) / "audit.jsonl")
    pem = Path(pub).read_bytes()
    if first_call:

        def first() -> int:
            from weightguard import load_file  # the documented entry point
            from weightguard.policy import PublicKey

            out = load_file(model, device, policy=PublicKey(pem), signature=sig, data_key=key_uri)
            _sync(device)
            _expect_tensors(out, expect, "weightguard")
            return _nbytes(out)

        return first
    loader = _api("weightguard.loader", "load_file")
    _preimport_loader_modules()
    policy = _key_policy(pub)

    def run() -> int:
        out = loader.load_file(model, device, policy=policy, signature=sig, data_key=key_uri)
        _sync(device)
        _expect_tensors(out, expect, "weightguard")
        return _nbytes(out)

    return run


# ------------------------------------------------------------------ watermark / audit


def watermark_key(directory: Path) -> Path:
    path = directory / "watermark.key"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(32))
        path.chmod(0o600)
    return path


def watermark_embed(src_dir: str, dst_dir: str, key: str) -> None:
    """Untimed: mark a copy of the model (``watermark.embed_file``)."""
    wm = _api("weightguard.watermark", "embed_file")
    wm.embed_file(src_dir, dst_dir, Path(key))


def watermark_check(model: str, key: str = "", prep_error: str | None = None) -> Timed:
    """Blind ``watermark.check`` of a marked model directory (verdict must be present)."""
    _prep_ok(prep_error, model, key)
    _need_cuda("cpu")  # torch imported before timing
    wm = _api("weightguard.watermark", "check")

    def run() -> dict[str, Any]:
        rep = wm.check(model, Path(key))
        if rep.verdict != "present":
            raise RuntimeError(f"watermark not detected: verdict {rep.verdict}, z={rep.z:.1f}")
        return {"bytes": _size(model), "z": rep.z, "log10_p": rep.log10_p}

    return run


def _emit_events(log_path: str, key: str, events: int, sync: str) -> None:
    audit = _api("weightguard.audit", "AuditLog")
    log = audit.AuditLog(log_path, signing_key=key, sync=sync, checkpoint_every=1000)
    for i in range(events):
        log.emit(
            "load.ok" if i % 4 else "load.start",
            object={"uri": f"s3://models/m{i % 97}/model.safetensors", "key_id": "file://k"},
            bytes=1_073_741_824,
            duration_s=0.5,
        )
    log.close()


def audit_generate(out_dir: str, events: int) -> None:
    """Untimed: a signed-checkpoint log of ``events`` load events (sync="none")."""
    audit = _api("weightguard.audit", "AuditLog", "generate_checkpoint_key")
    key = str(Path(out_dir) / "checkpoint.pem")
    audit.generate_checkpoint_key(key)
    _emit_events(str(Path(out_dir) / "audit.jsonl"), key, events, "none")


def audit_verify(log: str, prep_error: str | None = None) -> Timed:
    """``verify_log`` with the checkpoint public key: chain + every signed checkpoint."""
    _prep_ok(prep_error, log)
    audit = _api("weightguard.audit", "verify_log")
    pub = str(Path(log).parent / "checkpoint.pem.pub")

    def run() -> dict[str, Any]:
        res = audit.verify_log(log, checkpoint_key=pub)
        if not res.ok:
            raise RuntimeError(f"audit log did not verify: {res.problem}")
        return {"bytes": os.path.getsize(log), "records": res.records}

    return run


def audit_emit(out_dir: str, events: int, sync: str = "batch") -> Timed:
    """Writing ``events`` events with signed checkpoints every 1000 (fsync per ``sync``)."""
    audit = _api("weightguard.audit", "AuditLog", "generate_checkpoint_key")
    key = str(Path(out_dir) / "checkpoint.pem")
    audit.generate_checkpoint_key(key)
    path = str(Path(out_dir) / "audit.jsonl")

    def run() -> dict[str, Any]:
        _emit_events(path, key, events, sync)
        return {"bytes": os.path.getsize(path), "events": events}

    return run
