"""The adversarial suite's fixed inputs: tiny signed models, one dev key, and checks.

Everything expensive (keys, encryption, signing) is made once per session; each case
copies a few KiB and mutates the copy.  Keys are local ``file://`` development keys:
the suite exercises parsers and authentication, not key services (those have their
own tests against real OpenBao).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from weightguard.audit import AuditLog, MemorySink
from weightguard.errors import WeightguardError

CHUNK = 4096
# Outcomes of a refusal in the audit log.
REFUSED = {"denied", "error", "failed", "tamper"}


def write_st(path: Path, tensors: dict[str, tuple[str, list[int]]], seed: int) -> bytes:
    """A plain safetensors file with deterministic contents; returns its bytes."""
    import random

    rnd = random.Random(seed)
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs = []
    off = 0
    size = {"F32": 4, "F16": 2, "U8": 1, "I64": 8}
    for name, (dt, shape) in tensors.items():
        n = size[dt]
        for d in shape:
            n *= d
        blob = rnd.randbytes(n)
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + n]}
        blobs.append(blob)
        off += n
    hj = json.dumps(header, separators=(",", ":")).encode()
    data = struct.pack("<Q", len(hj)) + hj + b"".join(blobs)
    path.write_bytes(data)
    return data


SHARDS = {
    # ~10 KiB each: three data records per shard at the minimum chunk size
    "model-00001-of-00002.safetensors": {"a.w": ("F32", [32, 80]), "a.b": ("F16", [7])},
    "model-00002-of-00002.safetensors": {"b.w": ("F32", [16, 160]), "b.ids": ("I64", [50])},
}


def write_plain_model(d: Path, seed: int) -> dict[str, bytes]:
    d.mkdir(parents=True)
    out: dict[str, bytes] = {}
    weight_map: dict[str, str] = {}
    for shard, tensors in SHARDS.items():
        out[shard] = write_st(d / shard, tensors, seed + len(out))
        weight_map.update(dict.fromkeys(tensors, shard))
    index = {"metadata": {"total_size": 0}, "weight_map": weight_map}
    (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (d / "config.json").write_text('{"model_type": "tiny"}')
    return out


@dataclass
class Corpus:
    root: Path
    key_uri: str
    a: Path  # encrypted + signed model directory (model.sig inside)
    b: Path  # another model under the same key encryption key
    a_plain: dict[str, bytes]
    policy: Any
    attacker_signer: Any
    signer: Any

    def copy(self, which: Path, dst: Path) -> Path:
        shutil.copytree(which, dst)
        return dst


def build(root: Path) -> Corpus:

    from tests.support.load import make_sign_keys
    from weightguard import crypt
    from weightguard._internal.keys.providers import create_key_file
    from weightguard.policy import PublicKey
    from weightguard.signing import sign_model

    kek = root / "kek.hex"
    create_key_file(kek)
    key_uri = f"file://{kek}"

    release, attacking = make_sign_keys(root, "release"), make_sign_keys(root, "attacker")
    signer, pub, attacker = release.signer(), release.public, attacking.signer()
    models = []
    plains = []
    for name, seed in (("a", 1), ("b", 100)):
        plains.append(write_plain_model(root / f"{name}-plain", seed))
        enc = root / name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            crypt.encrypt_model(root / f"{name}-plain", enc, key_uri, chunk_size=CHUNK)
        sign_model(enc, enc / "model.sig", signer)
        models.append(enc)
    return Corpus(
        root, key_uri, models[0], models[1], plains[0], PublicKey.from_file(pub), attacker, signer
    )


def memory_audit() -> tuple[AuditLog, MemorySink]:
    sink = MemorySink()
    return AuditLog(sink), sink


def refusals(sink: MemorySink) -> list[dict[str, Any]]:
    return [r for r in sink.records if r.get("outcome") in REFUSED]


def accepted(sink: MemorySink) -> list[str]:
    return [
        r["event"]
        for r in sink.records
        if r.get("event") in {"load.ok", "decrypt"} and r.get("outcome") == "ok"
    ]


def files_under(d: Path) -> set[str]:
    return {os.path.relpath(os.path.join(dp, f), d) for dp, _dn, fs in os.walk(d) for f in fs} | {
        os.path.relpath(os.path.join(dp, x), d) for dp, dn, _fs in os.walk(d) for x in dn
    }


@dataclass
class Tally:
    """What one class of mutations did; asserted as a whole at the end of a test."""

    cases: int = 0
    problems: list[str] | None = None

    def __post_init__(self) -> None:
        self.problems = []

    def bad(self, case: str, what: str) -> None:
        assert self.problems is not None
        if len(self.problems) < 20:
            self.problems.append(f"{case}: {what}")
        else:
            self.problems.append("")

    def check(self) -> None:
        assert self.problems is not None
        real = [p for p in self.problems if p]
        assert not self.problems, (
            f"{len(self.problems)} of {self.cases} cases misbehaved:\n" + "\n".join(real)
        )


def expect_refusal(
    tally: Tally,
    case: str,
    run: Callable[[Any], Any],
    *,
    out_dir: Path | None = None,
) -> WeightguardError | None:
    """Run one consumer; record what is wrong: accepted, untyped, unaudited, leftovers."""
    audit, sink = memory_audit()
    tally.cases += 1
    before = files_under(out_dir) if out_dir is not None else set()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run(audit)
    except WeightguardError as exc:
        if not refusals(sink):
            tally.bad(case, f"refused ({type(exc).__name__}: {str(exc)[:120]}) but not audited")
        if accepted(sink):
            tally.bad(case, f"refused but audit says ok: {accepted(sink)}")
        if out_dir is not None and files_under(out_dir) != before:
            tally.bad(case, f"left files behind: {sorted(files_under(out_dir) - before)[:5]}")
        return exc
    except Exception as exc:  # what the suite looks for
        tally.bad(case, f"untyped {type(exc).__name__}: {str(exc)[:160]}")
        return None
    tally.bad(case, "ACCEPTED")
    return None
