"""Artifact mutations: every mutated model is refused, typed, audited, nothing left.

Each case copies the signed two-shard model, changes its bytes one way (bit flip,
truncation, extension, record swap/duplicate/drop, record splice across shards and
across models encrypted under the same key encryption key, re-serialised header
edits, whole-preamble or whole-shard swaps) and hands it to one consumer: the signed
loader, the unsafe loader (AEAD only) or ``decrypt`` of the whole model.
"""

from __future__ import annotations

import json
import random
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.adversarial.conftest import SEED, n_cases
from tests.support.adversarial import SHARDS, Corpus, Tally, expect_refusal
from weightguard import crypt, loader
from weightguard._internal.format import layout as fmt
from weightguard.policy import UnsafeNoVerification

SHARD_NAMES = sorted(SHARDS)


def _split(path: Path) -> tuple[bytes, list[bytes]]:
    """(preamble, records) of an artifact; records[0] is the safetensors header record."""
    data = path.read_bytes()
    with open(path, "rb") as f:
        h = fmt.read_header(f, path=str(path))
    recs = []
    for i in range(h.num_chunks + 1):
        off, n = h.record_span(i)
        recs.append(data[off : off + n])
    return data[: h.preamble_size], recs


def _join(path: Path, pre: bytes, recs: list[bytes]) -> None:
    path.write_bytes(pre + b"".join(recs))


# ----------------------------------------------------------------------------- mutations
# Each takes (rnd, copy of model a, corpus) and returns a short description.


def m_bitflip(rnd: random.Random, d: Path, c: Corpus) -> str:
    p = d / rnd.choice(SHARD_NAMES)
    data = bytearray(p.read_bytes())
    # Half the flips land in the preamble, where the parsers are.
    with open(p, "rb") as f:
        pre = fmt.read_header(f, path=str(p)).preamble_size
    off = rnd.randrange(pre) if rnd.random() < 0.5 else rnd.randrange(len(data))
    bit = rnd.randrange(8)
    data[off] ^= 1 << bit
    p.write_bytes(bytes(data))
    return f"flip {p.name}@{off}.{bit}"


def m_truncate(rnd: random.Random, d: Path, c: Corpus) -> str:
    p = d / rnd.choice(SHARD_NAMES)
    data = p.read_bytes()
    n = rnd.choice([0, rnd.randrange(1, 64), rnd.randrange(len(data)), len(data) - 1])
    p.write_bytes(data[:n])
    return f"truncate {p.name} to {n}"


def m_extend(rnd: random.Random, d: Path, c: Corpus) -> str:
    p = d / rnd.choice(SHARD_NAMES)
    extra = rnd.randbytes(rnd.choice([1, 16, rnd.randrange(1, 200)]))
    with open(p, "ab") as f:
        f.write(extra)
    return f"append {len(extra)} bytes to {p.name}"


def m_record_swap(rnd: random.Random, d: Path, c: Corpus) -> str:
    p = d / rnd.choice(SHARD_NAMES)
    pre, recs = _split(p)
    i, j = rnd.sample(range(len(recs)), 2)
    recs[i], recs[j] = recs[j], recs[i]
    _join(p, pre, recs)
    return f"swap records {i},{j} of {p.name}"


def m_record_dup(rnd: random.Random, d: Path, c: Corpus) -> str:
    p = d / rnd.choice(SHARD_NAMES)
    pre, recs = _split(p)
    i, j = rnd.sample(range(len(recs)), 2)
    if rnd.random() < 0.5:
        recs[j] = recs[i]
        what = f"record {j} := record {i}"
    else:
        recs.insert(j, recs[i])
        what = f"record {i} inserted again at {j}"
    _join(p, pre, recs)
    return f"{what} of {p.name}"


def m_record_drop(rnd: random.Random, d: Path, c: Corpus) -> str:
    p = d / rnd.choice(SHARD_NAMES)
    pre, recs = _split(p)
    i = rnd.randrange(len(recs))
    del recs[i]
    _join(p, pre, recs)
    return f"drop record {i} of {p.name}"


def m_splice_shard(rnd: random.Random, d: Path, c: Corpus) -> str:
    x, y = rnd.sample(SHARD_NAMES, 2)
    pre, recs = _split(d / x)
    _, other = _split(d / y)
    i = rnd.randrange(min(len(recs), len(other)))
    recs[i] = other[i]
    _join(d / x, pre, recs)
    return f"record {i} of {x} from {y}"


def m_splice_model(rnd: random.Random, d: Path, c: Corpus) -> str:
    x = rnd.choice(SHARD_NAMES)
    pre, recs = _split(d / x)
    _, other = _split(c.b / x)
    i = rnd.randrange(min(len(recs), len(other)))
    recs[i] = other[i]
    _join(d / x, pre, recs)
    return f"record {i} of {x} from model b (same key encryption key)"


def m_preamble_model(rnd: random.Random, d: Path, c: Corpus) -> str:
    x = rnd.choice(SHARD_NAMES)
    _, recs = _split(d / x)
    pre_b, _ = _split(c.b / x)
    _join(d / x, pre_b, recs)
    return f"preamble of {x} from model b"


def _edit_header(rnd: random.Random, doc: dict[str, Any]) -> str:
    choices: list[Callable[[], str]] = []

    def num(field: str) -> Callable[[], str]:
        def f() -> str:
            doc[field] = rnd.choice([0, 1, doc[field] + 1, doc[field] - 1, 2**40, 4096])
            return f"{field}={doc[field]}"

        return f

    def hexfield(field: str) -> Callable[[], str]:
        def f() -> str:
            v = bytearray(bytes.fromhex(doc[field]))
            v[rnd.randrange(len(v))] ^= 1 << rnd.randrange(8)
            doc[field] = v.hex()
            return f"{field} bit"

        return f

    def tensor_edit() -> str:
        tensors = doc["tensors"]
        name = rnd.choice([k for k in tensors if k != "__metadata__"])
        t = tensors[name]
        kind = rnd.randrange(5)
        if kind == 0:
            t["dtype"] = rnd.choice(["F16", "I32", "U8", "BF16", "F64"])
        elif kind == 1:
            t["shape"] = [*reversed(t["shape"]), 1]
        elif kind == 2:
            t["data_offsets"] = [t["data_offsets"][0] + 4, t["data_offsets"][1] + 4]
        elif kind == 3:
            tensors[name + "x"] = tensors.pop(name)
        else:
            t["shape"] = [10**200, 10**200][: rnd.randrange(1, 3)]
        return f"tensor {name} edit {kind}"

    def wrapped() -> str:
        w = doc["wrapped_key"]
        field = rnd.choice(["context", "key_version", "ciphertext"])
        if field == "key_version":
            w[field] = rnd.choice([0, 1, 7, None])
        elif field == "context":
            w[field] = w[field] + "x"
        else:
            w[field] = w[field][:-2] + ("AA" if w[field][-2:] != "AA" else "BB")
        return f"wrapped_key.{field}"

    def flag() -> str:
        doc["header_encrypted"] = not doc["header_encrypted"]
        return "header_encrypted flipped"

    choices += [num("chunk_size"), num("data_size"), num("num_chunks"), num("st_header_size")]
    choices += [hexfield("salt"), hexfield("nonce_prefix"), hexfield("commitment")]
    choices += [tensor_edit, tensor_edit, tensor_edit, wrapped, flag]
    return rnd.choice(choices)()


def m_header_edit(rnd: random.Random, d: Path, c: Corpus) -> str:
    """Parse the header JSON, edit one field, re-serialise canonically, keep the MAC."""
    p = d / rnd.choice(SHARD_NAMES)
    data = p.read_bytes()
    m = len(fmt.MAGIC)
    (n,) = struct.unpack("<I", data[m : m + 4])
    doc = json.loads(data[m + 4 : m + 4 + n])
    raw = data[m + 4 : m + 4 + n]
    while raw == data[m + 4 : m + 4 + n]:  # an edit that changes nothing is no attack
        what = _edit_header(rnd, doc)
        raw = fmt.canonical_json(doc)
    p.write_bytes(data[:m] + struct.pack("<I", len(raw)) + raw + data[m + 4 + n :])
    return f"{p.name}: header {what}"


def m_shard_from_model(rnd: random.Random, d: Path, c: Corpus) -> str:
    """A whole, valid shard of another model: only a signature can tell (signed only)."""
    x = rnd.choice(SHARD_NAMES)
    shutil.copyfile(c.b / x, d / x)
    return f"{x} replaced by model b's"


def m_shard_swap(rnd: random.Random, d: Path, c: Corpus) -> str:
    """The two shards' names exchanged: valid artifacts, wrong places (signed only)."""
    a, b = SHARD_NAMES
    (d / a).rename(d / "tmp")
    (d / b).rename(d / a)
    (d / "tmp").rename(d / b)
    return "shards renamed into each other"


# (mutation, cases per CI run, consumers that must refuse it)
ANY = ("signed", "unsafe", "decrypt")
SIGNED = ("signed",)
CLASSES: dict[str, tuple[Callable[[random.Random, Path, Corpus], str], int, tuple[str, ...]]] = {
    "bitflip": (m_bitflip, 600, ANY),
    "truncate": (m_truncate, 200, ANY),
    "extend": (m_extend, 100, ANY),
    "record-swap": (m_record_swap, 150, ANY),
    "record-duplicate": (m_record_dup, 150, ANY),
    "record-drop": (m_record_drop, 100, ANY),
    "splice-across-shards": (m_splice_shard, 150, ANY),
    "splice-across-models": (m_splice_model, 150, ANY),
    "preamble-across-models": (m_preamble_model, 50, ANY),
    "header-reserialised": (m_header_edit, 350, ANY),
    "shard-from-other-model": (m_shard_from_model, 25, SIGNED),
    "shards-swapped": (m_shard_swap, 25, SIGNED),
}


def _is_artifact(p: Path) -> bool:
    with open(p, "rb") as f:
        return f.read(len(fmt.MAGIC)) == fmt.MAGIC


def consume(kind: str, model: Path, out: Path, c: Corpus) -> Callable[[Any], object]:
    if kind == "signed":
        return lambda audit: loader.load_file(model, "cpu", policy=c.policy, audit=audit, workers=1)
    if kind == "unsafe":
        return lambda audit: loader.load_file(
            model, "cpu", policy=UnsafeNoVerification(), audit=audit, workers=1
        )
    return lambda audit: crypt.decrypt_model(model, out / "plain", audit=audit, workers=1)


@pytest.mark.parametrize("name", list(CLASSES))
def test_artifact_mutations_are_refused(name: str, corpus: Corpus, work: Path) -> None:
    mutate, base, consumers = CLASSES[name]
    rnd = random.Random(f"{SEED}:{name}")
    tally = Tally()
    known: list[str] = []
    for i in range(n_cases(base)):
        d = work / f"m{i}"
        out = work / f"o{i}"
        out.mkdir()
        corpus.copy(corpus.a, d)
        what = mutate(rnd, d, corpus)
        kind = consumers[i % len(consumers)]
        if kind == "decrypt" and not all(_is_artifact(d / s) for s in SHARD_NAMES):
            known.append(what)  # see test_decrypt_refuses_a_shard_that_is_not_an_artifact
            kind = "signed"
        expect_refusal(tally, f"{kind} {what}", consume(kind, d, out, corpus), out_dir=out)
        shutil.rmtree(d)
        shutil.rmtree(out)
    tally.check()


def test_unmutated_model_is_accepted(corpus: Corpus, work: Path) -> None:
    """The control: the same consumers accept the model as released."""
    got = loader.load_file(corpus.a, "cpu", policy=corpus.policy, workers=1)
    assert sorted(got) == sorted(t for s in SHARDS.values() for t in s)
    with pytest.warns(crypt.PlaintextWriteWarning):
        crypt.decrypt_model(corpus.a, work / "plain", workers=1)
    for shard, data in corpus.a_plain.items():
        assert (work / "plain" / shard).read_bytes() == data


@pytest.mark.parametrize("how", ["magic-flip", "truncate-0", "truncate-5"])
def test_decrypt_refuses_a_shard_that_is_not_an_artifact(
    how: str, corpus: Corpus, work: Path
) -> None:
    d = corpus.copy(corpus.a, work / "m")
    p = d / SHARD_NAMES[1]
    data = bytearray(p.read_bytes())
    if how == "magic-flip":
        data[3] ^= 2
    else:
        data = data[: int(how.split("-")[1])]
    p.write_bytes(bytes(data))
    (work / "o").mkdir()
    tally = Tally()
    expect_refusal(tally, how, consume("decrypt", d, work / "o", corpus), out_dir=work / "o")
    tally.check()


# ----------------------------------------------------------------------------- index, listing
INDEX = "model.safetensors.index.json"


def _index(d: Path) -> dict[str, Any]:
    return json.loads((d / INDEX).read_text())


def _write_index(d: Path, doc: object, *, same_length: bool) -> None:
    raw = json.dumps(doc, indent=2).encode()
    old = (d / INDEX).stat().st_size
    if same_length and len(raw) <= old:  # the attack in issue 12: sizes still match
        raw = raw + b" " * (old - len(raw))
    (d / INDEX).write_bytes(raw)


def x_drop_shard(rnd: random.Random, d: Path, c: Corpus) -> str:
    doc = _index(d)
    gone = rnd.choice(SHARD_NAMES)
    doc["weight_map"] = {k: v for k, v in doc["weight_map"].items() if v != gone}
    _write_index(d, doc, same_length=True)
    return f"index no longer names {gone}"


def x_drop_tensor(rnd: random.Random, d: Path, c: Corpus) -> str:
    doc = _index(d)
    name = rnd.choice(sorted(doc["weight_map"]))
    del doc["weight_map"][name]
    _write_index(d, doc, same_length=rnd.random() < 0.5)
    return f"index drops {name}"


def x_retarget(rnd: random.Random, d: Path, c: Corpus) -> str:
    doc = _index(d)
    name = rnd.choice(sorted(doc["weight_map"]))
    doc["weight_map"][name] = rnd.choice([s for s in SHARD_NAMES if s != doc["weight_map"][name]])
    _write_index(d, doc, same_length=True)
    return f"index moves {name}"


def x_phantom(rnd: random.Random, d: Path, c: Corpus) -> str:
    doc = _index(d)
    doc["weight_map"]["ghost"] = rnd.choice(["model-00003-of-00002.safetensors", "config.json"])
    _write_index(d, doc, same_length=False)
    return f"index names {doc['weight_map']['ghost']}"


def x_hostile_json(rnd: random.Random, d: Path, c: Corpus) -> str:
    kind = rnd.randrange(4)
    raw = [
        b'{"weight_map": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"weight_map": {}, "metadata": {"total_size": Infinity}}',
        b'{"weight_map": {"a.w": "x"}, "weight_map": {}}',
        b'{"metadata": {"total_size": 1e400}, "weight_map": {}}',
    ][kind]
    (d / INDEX).write_bytes(raw)
    return f"hostile index JSON {kind}"


def x_remove_file(rnd: random.Random, d: Path, c: Corpus) -> str:
    name = rnd.choice([*SHARD_NAMES, INDEX])
    (d / name).unlink()
    return f"{name} removed"


def x_extra_shard(rnd: random.Random, d: Path, c: Corpus) -> str:
    """A valid shard of another model added under a new name and named by the index."""
    extra = "model-00003-of-00002.safetensors"
    shutil.copyfile(c.b / rnd.choice(SHARD_NAMES), d / extra)
    doc = _index(d)
    doc["weight_map"]["a.w"] = extra
    _write_index(d, doc, same_length=False)
    return "extra shard from model b named by the index"


INDEX_CLASSES: dict[str, tuple[Callable[[random.Random, Path, Corpus], str], int]] = {
    "index-drops-shard": (x_drop_shard, 40),
    "index-drops-tensor": (x_drop_tensor, 40),
    "index-retargets-tensor": (x_retarget, 40),
    "index-names-phantom": (x_phantom, 20),
    "index-hostile-json": (x_hostile_json, 20),
    "listing-file-removed": (x_remove_file, 30),
    "listing-extra-shard": (x_extra_shard, 20),
}


@pytest.mark.parametrize("name", list(INDEX_CLASSES))
def test_index_and_listing_edits_are_refused(name: str, corpus: Corpus, work: Path) -> None:
    mutate, base = INDEX_CLASSES[name]
    rnd = random.Random(f"{SEED}:{name}")
    tally = Tally()
    for i in range(n_cases(base)):
        d = corpus.copy(corpus.a, work / f"m{i}")
        what = mutate(rnd, d, corpus)
        out = work / f"o{i}"
        out.mkdir()
        expect_refusal(tally, what, consume("signed", d, out, corpus), out_dir=out)
        shutil.rmtree(d)
        shutil.rmtree(out)
    tally.check()
