"""Signature bundle mutations: every one refused by ``verify`` and by the signed loader.

Byte flips and truncation of the bundle, structural edits, edits of the signed
statement (not re-signed, or re-signed with a key the policy does not trust), hostile
JSON (deep nesting, Infinity, huge integers, duplicate keys), the valid bundle of
another model by the same signer, and canonical-form edits: a field or element added
to (or dropped from) the unsigned parts that would not change the verdict -- the same
signature under another bundle digest is refused too (issue 22, "bundle malleability").
"""

from __future__ import annotations

import base64
import copy
import json
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.adversarial.conftest import SEED, n_cases
from tests.support.adversarial import Corpus, Tally, expect_refusal
from weightguard import loader
from weightguard._internal.signing.oms import subject_digest
from weightguard.signing import verify_bundle

Doc = dict[str, Any]


def _pae(payload_type: str, payload: bytes) -> bytes:
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def _resign(doc: Doc, c: Corpus) -> None:
    """Sign the envelope's payload again with the attacker's key (a valid signature)."""
    key = serialization.load_pem_private_key((c.root / "attacker.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    env = doc["dsseEnvelope"]
    payload = base64.b64decode(env["payload"])
    sig = key.sign(_pae(env["payloadType"], payload), ec.ECDSA(hashes.SHA256()))
    env["signatures"][0]["sig"] = base64.b64encode(sig).decode()


def _statement(doc: Doc) -> Doc:
    return json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))


def _set_statement(doc: Doc, st: Doc) -> None:
    doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(st).encode()).decode()


def _flip_hex(rnd: random.Random, h: str) -> str:
    i = rnd.randrange(len(h))
    return h[:i] + ("0" if h[i] != "0" else "1") + h[i + 1 :]


def edit_statement(rnd: random.Random, doc: Doc, c: Corpus) -> str:
    st = _statement(doc)
    pred = st["predicate"]
    files = pred["weightguard"]["files"]
    name = rnd.choice(sorted(files))
    kind = rnd.randrange(9)
    if kind == 0:
        r = rnd.choice(pred["resources"])
        r["digest"] = _flip_hex(rnd, r["digest"])
        what = f"resource digest of {r['name']}"
    elif kind == 1:
        d = files[name]["digests"]
        j = rnd.randrange(len(d))
        d[j] = _flip_hex(rnd, d[j])
        what = f"chunk digest {j} of {name}"
    elif kind == 2:
        files[name]["size"] += rnd.choice([-1, 1, 4096])
        what = f"size of {name}"
    elif kind == 3:
        del files[name]
        pred["resources"] = [r for r in pred["resources"] if r["name"] != name]
        what = f"{name} dropped from the statement"
    elif kind == 4:
        pred["serialization"]["ignore_paths"].append(rnd.choice(["*.safetensors", name]))
        what = "ignore_paths hides weights"
    elif kind == 5:
        st["subject"][0]["digest"]["sha256"] = _flip_hex(rnd, st["subject"][0]["digest"]["sha256"])
        what = "subject digest"
    elif kind == 6:
        files[name]["stride"] = rnd.choice([1, 4096, 1 << 40])
        what = f"stride of {name}"
    elif kind == 7:
        d = files[name]["digests"]
        d.append(d[0])
        what = f"extra chunk digest for {name}"
    else:
        st["predicateType"] = "https://model_signing/signature/v0.9"
        what = "predicateType"
    _set_statement(doc, st)
    if rnd.random() < 0.5:
        _resign(doc, c)
        what += ", re-signed by an untrusted key"
    return what


def edit_structure(rnd: random.Random, doc: Doc, c: Corpus) -> str:
    env = doc["dsseEnvelope"]
    kind = rnd.randrange(8)
    if kind == 0:
        sig = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
        sig[rnd.randrange(len(sig))] ^= 1 << rnd.randrange(8)
        env["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
        return "signature bit"
    if kind == 1:
        env["signatures"].append(copy.deepcopy(env["signatures"][0]))
        return "two signatures"
    if kind == 2:
        env["signatures"] = []
        return "no signature"
    if kind == 3:
        env["payloadType"] = "application/json"
        return "payloadType"
    if kind == 4:
        doc["mediaType"] = "application/vnd.dev.sigstore.bundle.v0.2+json"
        return "mediaType"
    if kind == 5:
        del doc[rnd.choice(["verificationMaterial", "dsseEnvelope", "mediaType"])]
        return "top-level field removed"
    if kind == 6:
        doc["verificationMaterial"]["publicKey"]["hint"] = "00" * 32
        return "publicKey hint"
    env["payload"] = env["payload"][:-8]
    return "payload cut"


HOSTILE = [
    b'{"mediaType": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
    b'{"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json", "x": Infinity}',
    b'{"mediaType": "a", "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json"}',
    b'{"n": ' + b"9" * 5000 + b"}",
    b'{"n": 1e400}',
    b"\xff\xfe{}",
    b"",
    b"null",
]


def _hostile_statement(rnd: random.Random, doc: Doc, c: Corpus) -> str:
    payload = rnd.choice(
        [
            b'{"_type": ' + b"{" * 20_000 + b"}" * 20_000 + b"}",
            b'{"_type": "https://in-toto.io/Statement/v1", "predicate": {"x": NaN}}',
            b'{"predicate": {"weightguard": {"files": {"a": {"size": 1e999}}}}}',
        ]
    )
    doc["dsseEnvelope"]["payload"] = base64.b64encode(payload).decode()
    if rnd.random() < 0.5:
        _resign(doc, c)
    return "hostile statement JSON"


def mutate(rnd: random.Random, raw: bytes, c: Corpus) -> tuple[bytes, str]:
    kind = rnd.choices(
        ["flip", "truncate", "structure", "statement", "hostile", "hostile-st", "other"],
        weights=[30, 10, 20, 30, 4, 4, 2],
    )[0]
    if kind == "flip":
        b = bytearray(raw)
        i = rnd.randrange(len(b))
        b[i] ^= 1 << rnd.randrange(8)
        return bytes(b), f"flip @{i}"
    if kind == "truncate":
        n = rnd.randrange(len(raw))
        return raw[:n], f"truncate to {n}"
    if kind == "hostile":
        i = rnd.randrange(len(HOSTILE))
        return HOSTILE[i], f"hostile bundle JSON {i}"
    if kind == "other":
        return (c.b / "model.sig").read_bytes(), "valid bundle of model b, same signer"
    doc = json.loads(raw)
    fn: Callable[[random.Random, Doc, Corpus], str] = {
        "structure": edit_structure,
        "statement": edit_statement,
        "hostile-st": _hostile_statement,
    }[kind]
    what = fn(rnd, doc, c)
    return json.dumps(doc).encode(), what


def _same_document(data: bytes, raw: bytes) -> bool:
    """Whether ``data`` is the bundle itself, at most formatted differently (a cut
    trailing newline, make fuzz seed 1698845323): not a mutation of its content.
    Base64 fields compare as text, so a non-canonical encoding still counts as one."""
    if data == raw:
        return True
    try:
        return bool(json.loads(data) == json.loads(raw))
    except (ValueError, RecursionError):  # not JSON, or hostile nesting: a mutation
        return False


def _trusted_pem_b64(c: Corpus) -> str:
    key = serialization.load_pem_private_key((c.root / "release.pem").read_bytes(), None)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(pem).decode()


def _vm(d: Doc) -> Doc:
    return d["verificationMaterial"]  # type: ignore[no-any-return]


def _sig0(d: Doc) -> Doc:
    return d["dsseEnvelope"]["signatures"][0]  # type: ignore[no-any-return]


# Edits of a valid key bundle that leave the signature valid and the statement the same.
CANONICAL: list[tuple[str, Callable[[Doc, Corpus], None]]] = [
    ("tlogEntries [{x: 1}]", lambda d, c: _vm(d).update(tlogEntries=[{"x": 1}])),
    ("tlogEntries [{}]", lambda d, c: _vm(d).update(tlogEntries=[{}])),
    ("timestampVerificationData {}", lambda d, c: _vm(d).update(timestampVerificationData={})),
    (
        "timestampVerificationData rfc3161Timestamps []",
        lambda d, c: _vm(d).update(timestampVerificationData={"rfc3161Timestamps": []}),
    ),
    ("keyid set", lambda d, c: _sig0(d).update(keyid="release")),
    ("keyid a number", lambda d, c: _sig0(d).update(keyid=0)),
    ("publicKey hint removed", lambda d, c: _vm(d)["publicKey"].pop("hint")),
    (
        "publicKey rawBytes next to the hint",
        lambda d, c: _vm(d)["publicKey"].update(rawBytes=_trusted_pem_b64(c)),
    ),
    (
        "publicKey keyDetails next to the hint",
        lambda d, c: _vm(d)["publicKey"].update(keyDetails="PKIX_ECDSA_P256_SHA_256"),
    ),
    (
        "publicKey rawBytes + keyDetails instead of the hint, wrong curve",
        lambda d, c: _vm(d).update(
            publicKey={"rawBytes": _trusted_pem_b64(c), "keyDetails": "PKIX_ECDSA_P384_SHA_384"}
        ),
    ),
    ("unknown top-level field", lambda d, c: d.update(x=1)),
    ("unknown verificationMaterial field", lambda d, c: _vm(d).update(x=1)),
    ("unknown dsseEnvelope field", lambda d, c: d["dsseEnvelope"].update(x=1)),
    ("unknown signature field", lambda d, c: _sig0(d).update(x=1)),
    ("messageSignature added", lambda d, c: d.update(messageSignature={})),
    (
        "a certificate next to the key",
        lambda d, c: _vm(d).update(certificate={"rawBytes": base64.b64encode(b"x").decode()}),
    ),
]


@pytest.mark.parametrize(("what", "edit"), [pytest.param(w, e, id=w) for w, e in CANONICAL])
def test_canonical_form_only(what: str, edit: Any, corpus: Corpus, work: Path) -> None:
    """An edit of the unsigned parts that keeps the signature valid is still refused,
    by verify and by the signed loader (a malleable bundle gets a new digest in the
    audit log for the same signature)."""
    raw = (corpus.a / "model.sig").read_bytes()
    d = corpus.copy(corpus.a, work / "m")
    doc = json.loads(raw)
    edit(doc, corpus)
    assert doc != json.loads(raw)
    (d / "model.sig").write_text(json.dumps(doc))
    tally = Tally()
    expect_refusal(
        tally, what, lambda audit: verify_bundle(d, d / "model.sig", corpus.policy, audit=audit)
    )
    expect_refusal(
        tally,
        what,
        lambda audit: loader.load_file(d, "cpu", policy=corpus.policy, audit=audit, workers=1),
    )
    shutil.rmtree(d)
    tally.check()


N_VERIFY = 400
N_LOAD = 150


@pytest.mark.parametrize("consumer", ["verify", "signed-load"])
def test_bundle_mutations_are_refused(consumer: str, corpus: Corpus, work: Path) -> None:
    rnd = random.Random(f"{SEED}:bundle:{consumer}")
    raw = (corpus.a / "model.sig").read_bytes()
    d = corpus.copy(corpus.a, work / "m")
    tally = Tally()
    for _ in range(n_cases(N_VERIFY if consumer == "verify" else N_LOAD)):
        data, what = raw, ""
        while _same_document(data, raw):
            data, what = mutate(rnd, raw, corpus)
        (d / "model.sig").write_bytes(data)
        if consumer == "verify":

            def run(audit: Any) -> Any:
                return verify_bundle(d, d / "model.sig", corpus.policy, audit=audit)
        else:

            def run(audit: Any) -> Any:
                return loader.load_file(d, "cpu", policy=corpus.policy, audit=audit, workers=1)

        expect_refusal(tally, what, run)
    shutil.rmtree(d)
    tally.check()


def test_wrong_resource_digest_signed_by_the_trusted_key(corpus: Corpus, work: Path) -> None:
    d = corpus.copy(corpus.a, work / "m")
    doc = json.loads((d / "model.sig").read_bytes())
    st = _statement(doc)
    r = next(r for r in st["predicate"]["resources"] if r["name"].endswith(".safetensors"))
    r["digest"] = "0" * 64
    # A correct signer's subject: the digest over the (wrong) resource digests.
    digests = [bytes.fromhex(x["digest"]) for x in st["predicate"]["resources"]]
    st["subject"][0]["digest"]["sha256"] = subject_digest(digests).hex()
    _set_statement(doc, st)
    key = serialization.load_pem_private_key((corpus.root / "release.pem").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    env = doc["dsseEnvelope"]
    sig = key.sign(
        _pae(env["payloadType"], base64.b64decode(env["payload"])), ec.ECDSA(hashes.SHA256())
    )
    env["signatures"][0]["sig"] = base64.b64encode(sig).decode()
    (d / "model.sig").write_text(json.dumps(doc))
    tally = Tally()
    expect_refusal(
        tally,
        "resource digest",
        lambda audit: verify_bundle(d, d / "model.sig", corpus.policy, audit=audit),
    )
    tally.check()
