"""No key, token or plaintext ever reaches the audit log; subject collection."""

from __future__ import annotations

import base64
import json
import os
import random
import re
import secrets
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weightguard._internal.audit.record import collect_subject, looks_secret, sanitize, scrub_text
from weightguard.audit import AuditLog, MemorySink


def _secrets() -> dict[str, str | bytes | bytearray]:
    key = secrets.token_bytes(32)
    return {
        "raw_key": key,
        "key_bytearray": bytearray(secrets.token_bytes(32)),
        "hex_key": secrets.token_hex(32),
        "b64_key": base64.b64encode(secrets.token_bytes(32)).decode(),
        "b64url_key": base64.urlsafe_b64encode(secrets.token_bytes(24)).decode().rstrip("="),
        "vault_token": "hvs." + secrets.token_urlsafe(24),
        "legacy_token": "s."
        + "".join(secrets.choice("ABCDEFGHIJKLMNOPabcdefgh0123456789") for _ in range(24)),
        "jwt": "eyJhbGciOiJSUzI1NiJ9."
        + base64.urlsafe_b64encode(b'{"sub":"system:serviceaccount:ml:loader"}')
        .decode()
        .rstrip("=")
        + "."
        + secrets.token_urlsafe(64),
        "transit_ct": "vault:v1:" + base64.b64encode(secrets.token_bytes(48)).decode(),
        "pem": "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI" + secrets.token_hex(8),
        "aws_key_id": "AKIA"
        + "".join(secrets.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567") for _ in range(16)),
        "aws_secret": secrets.token_urlsafe(30),
        "plaintext": secrets.token_bytes(64),
    }


def _needles(values: dict[str, str | bytes | bytearray]) -> list[bytes]:
    out = []
    for v in values.values():
        if isinstance(v, bytes | bytearray):
            b = bytes(v)
            out += [b, b.hex().encode(), base64.b64encode(b), bytes(b[:12])]
        else:
            out.append(v.encode())
            # any 16-char window of the secret part must be absent too
            core = v.split(".", 1)[-1] if v.startswith(("hvs.", "s.")) else v
            out.append(core[-16:].encode())
    return out


def test_no_key_token_or_plaintext_reaches_the_file(tmp_path: Path) -> None:
    vals = _secrets()
    path = tmp_path / "audit.jsonl"
    with AuditLog(
        str(path), subject={"vault_token": vals["vault_token"], "vault_role": "loader"}
    ) as log:
        # 1. secret values under secret-looking names
        log.emit("key.unwrap", object={"uri": "s3://m/x", "data_key": vals["raw_key"], **vals})
        # 2. secret values under innocent names, nested, in lists
        log.emit(
            "load.ok",
            object={
                "uri": "s3://m/x",
                "note": vals["hex_key"],
                "list": [vals["b64_key"], vals["jwt"]],
            },
            ctx={"a": {"b": vals["transit_ct"], "c": vals["b64url_key"]}},
            header=vals["plaintext"],
            buf=memoryview(bytes(vals["key_bytearray"])),
        )
        # 3. secrets inside free text (an exception message that leaked a token)
        log.emit(
            "load.denied",
            outcome="denied",
            reason=f"permission denied for token {vals['vault_token']} with {vals['aws_key_id']}"
            f" / {vals['aws_secret']} pem {vals['pem']} jwt={vals['jwt']} key={vals['hex_key']}",
            subject={"authorization": "Bearer " + str(vals["jwt"])},
        )

        # 4. arbitrary objects are named by type only
        class Holder:
            def __repr__(self) -> str:
                return f"Holder({vals['hex_key']})"

        log.emit("fetch", object={"thing": Holder()}, passphrase="hunter2", password="x")
    data = path.read_bytes()
    for needle in _needles(vals):
        assert needle not in data, needle[:8]
    assert b"hunter2" not in data
    recs = [json.loads(x) for x in data.splitlines()]
    assert len(recs) == 4
    # useful context survives
    assert recs[0]["object"]["uri"] == "s3://m/x"
    assert recs[0]["object"]["data_key"] == "[redacted]"
    assert recs[1]["extra"]["header"] == "[redacted]"
    assert recs[2]["reason"].startswith("permission denied for token [redacted]")
    assert recs[2]["subject"]["vault_role"] == "loader"
    assert recs[2]["subject"]["vault_token"] == "[redacted]"
    assert recs[3]["object"]["thing"] == "[Holder]"


def test_safe_fields_are_kept(tmp_path: Path) -> None:
    sink = MemorySink()
    log = AuditLog([sink])
    digest = "sha256:" + "ab12" * 16
    log.emit(
        "load.ok",
        object={
            "uri": "s3://models/llama-3-8b/model-00001-of-00004.safetensors",
            "digest": digest,
            "key_provider": "vault-transit",
            "key_id": "vault://transit/llama",
            "key_version": 3,
            "signer": "release@example.com",
            "path": "/models/llama/2024-06-01/model.safetensors",
        },
        reason="signature verified by policy identity=release@example.com",
        vault_request_id="6f1b2c3d-4e5f-6789-abcd-ef0123456789",
    )
    rec = sink.records[0]
    assert rec["object"]["digest"] == digest
    assert rec["object"]["key_id"] == "vault://transit/llama"
    assert rec["object"]["key_version"] == 3
    assert rec["object"]["uri"].endswith("model-00001-of-00004.safetensors")
    assert rec["object"]["path"] == "/models/llama/2024-06-01/model.safetensors"
    assert rec["extra"]["vault_request_id"] == "6f1b2c3d-4e5f-6789-abcd-ef0123456789"
    assert "identity=release@example.com" in rec["reason"]


def test_random_key_material_is_redacted() -> None:
    """3 x 3000 uniformly random keys of 16..64 bytes, in hex, base64 and base64url."""
    rnd = random.Random(1234)
    for i in range(3000):
        raw = rnd.randbytes(16 + i % 49)
        for text in (
            raw.hex(),
            base64.b64encode(raw).decode(),
            base64.urlsafe_b64encode(raw).decode(),
        ):
            assert looks_secret(text), text
            assert text not in json.dumps(sanitize({"note": text, "list": [f"x {text} y"]}))
            assert text not in scrub_text(f"failed with {text}.")


@settings(max_examples=60, deadline=None)
@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats()
        | st.text(max_size=30)
        | st.binary(max_size=30),
        lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=10), c, max_size=5),
        max_leaves=20,
    )
)
def test_sanitize_always_yields_bounded_json(value: object) -> None:
    out = sanitize({"v": value})
    text = json.dumps(out, allow_nan=False)
    assert len(text) < 200_000


def test_subject_from_env_and_downward_api_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pod = tmp_path / "podinfo"
    pod.mkdir()
    (pod / "namespace").write_text("ml-prod\n")
    (pod / "name").write_text("llm-7f9c")
    (pod / "nodeName").write_text("gpu-node-3")
    sa_ns = tmp_path / "sa-namespace"
    env = {"SERVICE_ACCOUNT": "llm-loader", "WEIGHTGUARD_VAULT_ROLE": "llm-reader"}
    s = collect_subject(env, podinfo_dir=str(pod), sa_namespace_file=str(sa_ns))
    assert s["k8s_namespace"] == "ml-prod" and s["k8s_pod"] == "llm-7f9c"
    assert s["k8s_node"] == "gpu-node-3" and s["k8s_service_account"] == "llm-loader"
    assert s["vault_role"] == "llm-reader" and s["pid"] == os.getpid()
    # env wins over files; namespace falls back to the service-account namespace file
    sa_ns.write_text("fallback-ns")
    s = collect_subject(
        {"POD_NAME": "from-env"}, podinfo_dir=str(tmp_path / "none"), sa_namespace_file=str(sa_ns)
    )
    assert s["k8s_pod"] == "from-env" and s["k8s_namespace"] == "fallback-ns"
    # configurable via env on a real AuditLog
    monkeypatch.setenv("WEIGHTGUARD_PODINFO_DIR", str(pod))
    sink = MemorySink()
    log = AuditLog([sink])
    log.set_subject(vault_entity_id="ent-123")
    log.emit("load.start")
    assert sink.records[0]["subject"]["k8s_pod"] == "llm-7f9c"
    assert sink.records[0]["subject"]["vault_entity_id"] == "ent-123"


def test_identifier_fields_and_uris_in_text_are_kept() -> None:
    sink = MemorySink()
    log = AuditLog([sink])
    key_id = "vault://transit/key-3f9a0c11be"
    digests = ",".join("sha256:" + secrets.token_hex(32) for _ in range(2))
    log.emit(
        "key.unwrap",
        object={
            "key_id": key_id,
            "digest": digests,
            "uri": "s3://u:pw@bucket/m?X-Amz-Signature=abc",
        },
        reason=f"unwrap with {key_id} failed; token hvs.{secrets.token_urlsafe(24)} refused",
    )
    rec = sink.records[0]
    assert rec["object"]["key_id"] == key_id and rec["object"]["digest"] == digests
    assert rec["object"]["uri"] == "s3://bucket/m"
    assert rec["reason"] == f"unwrap with {key_id} failed; token [redacted] refused"
    # a credential shape inside an identifier field is still removed
    log.emit("fetch", object={"uri": "vault://transit/x/hvs." + "Ab1" * 10})
    assert sink.records[1]["object"]["uri"] == "[redacted]"


@settings(max_examples=300, deadline=None)
@given(
    st.text(alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_", max_size=19)
    | st.sampled_from(["AKIA" + "A1B2C3D4E5F6G7H", "ghp_abcdefghijklmno", "key_id", "ok", ""])
)
def test_a_short_word_is_scrubbed_as_the_long_way_scrubs_it(word: str) -> None:
    """scrub_text returns a short word (letters, digits, "_", under a blob's length) at
    once: what the whole scrub would return for it."""
    from weightguard._internal.audit import record

    assert scrub_text(word) == word
    slow = record._SHORT_WORD
    try:
        record._SHORT_WORD = re.compile(r"(?!)")  # never matches: the whole scrub
        assert scrub_text(word) == word
    finally:
        record._SHORT_WORD = slow


def test_twenty_characters_still_take_the_long_way() -> None:
    key = "AKIA" + "A1B2C3D4E5F6G7H8"  # an AWS access key id: 20 characters
    assert scrub_text(key) == "[redacted]"
    assert scrub_text(f"id {key}") == "id [redacted]"


_FRAGMENTS = ["hv", "s", ".", "b", "r", "vault", ":", "v1", "eyJ", "-----", "BEGIN", " ", "KEY",
              "AKIA", "ASIA", "gh", "p", "_", "x" * 24, "A1" * 10, "/", "-"]  # fmt: skip


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=12).map("".join) | st.text(max_size=60))
def test_the_shape_prefilter_never_hides_a_shape(text: str) -> None:
    """A text the substring prefilter passes over has no secret shape."""
    from weightguard._internal.audit import record

    assert record._may_have_shape(text) or not record._SECRET_SHAPES.search(text)
