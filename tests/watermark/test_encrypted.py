"""`watermark embed` on encrypted artifacts: verified + decrypted in memory, marked,
re-encrypted under the same key provider and context; no plaintext file ever written."""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import save_file
from weightguard_cli.main import cli

from weightguard import crypt
from weightguard import watermark as wm
from weightguard._internal.format.layout import MAGIC
from weightguard.audit import AuditLog, MemorySink
from weightguard.errors import IntegrityError
from weightguard.policy import PublicKey

KEY = b"encrypted-embed-key-0123456789ab"
META = {"format": "pt", "owner": "acme"}
CHUNK = 64 * 1024


def _model(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "layer.0.weight": torch.randn(512, 512, generator=g),
        "layer.0.bias": torch.randn(512, generator=g),
        "layer.1.weight": torch.randn(512, 512, generator=g).to(torch.bfloat16),
        "layer.1.norm": torch.ones(128),
        "tiny.weight": torch.randn(4, 4, generator=g),  # below min_numel: untouched
        "position_ids": torch.arange(64).reshape(1, 64),
    }


@pytest.fixture()
def keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    d = tmp_path / "keys"
    d.mkdir()
    kek = d / "kek.hex"
    crypt.create_key_file(kek)
    # the caller names the test key file (a header's file:// reference alone is refused)
    monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", f"file://{kek}")
    sk = ec.generate_private_key(ec.SECP256R1())
    priv, pub = d / "sign.pem", d / "sign.pub"
    priv.write_bytes(
        sk.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pub.write_bytes(
        sk.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return {"kek": kek, "priv": priv, "pub": pub}


def _sign(target: Path, sig: Path, priv: Path) -> None:
    from weightguard.signing import KeySigner, sign_model

    sign_model(target, sig, KeySigner.from_file(priv))


@pytest.fixture()
def enc_file(tmp_path: Path, keys: dict[str, Path]) -> tuple[Path, Path]:
    plain = tmp_path / "plain" / "model.safetensors"
    plain.parent.mkdir()
    save_file(_model(1), str(plain), metadata=META)
    enc = tmp_path / "release" / "model.safetensors"
    enc.parent.mkdir()
    crypt.encrypt_file(
        plain,
        enc,
        f"file://{keys['kek']}",
        context="acme/model",
        chunk_size=CHUNK,
        encrypt_header=True,
    )
    _sign(enc, enc.with_name("model.safetensors.sig"), keys["priv"])
    return plain, enc


@pytest.fixture()
def enc_dir(tmp_path: Path, keys: dict[str, Path]) -> tuple[Path, Path]:
    plain = tmp_path / "plain_dir"
    plain.mkdir()
    m = _model(2)
    names = sorted(m)
    s1, s2 = names[:3], names[3:]
    save_file({k: m[k] for k in s1}, str(plain / "model-00001-of-00002.safetensors"), META)
    save_file({k: m[k] for k in s2}, str(plain / "model-00002-of-00002.safetensors"), META)
    index = {"metadata": {}, "weight_map": {k: "model-00001-of-00002.safetensors" for k in s1}}
    index["weight_map"].update({k: "model-00002-of-00002.safetensors" for k in s2})
    (plain / "model.safetensors.index.json").write_text(json.dumps(index))
    (plain / "config.json").write_text('{"hidden": 256}')
    enc = tmp_path / "release_dir"
    crypt.encrypt_model(plain, enc, f"file://{keys['kek']}", context="acme/sharded")
    _sign(enc, enc / "model.sig", keys["priv"])
    return plain, enc


class WriteSpy:
    """Records every path opened for writing under ``root`` and every rename there, and
    checks at rename time that no plain safetensors file is being committed."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.opened: set[str] = set()
        self.renamed: dict[str, str] = {}
        self.active = False

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        self.active = True
        try:
            yield
        finally:
            self.active = False

    def _note(self, path: Any) -> None:
        if self.active and isinstance(path, str | os.PathLike):
            p = os.path.abspath(os.fspath(path))
            if p.startswith(self.root):
                self.opened.add(p)

    def check_committed(self, src: str) -> None:
        files = [Path(src)] if os.path.isfile(src) else list(Path(src).rglob("*"))
        for f in files:
            if f.is_file() and (f.suffix == ".safetensors" or f.name.endswith(".wgtmp")):
                with open(f, "rb") as fh:
                    head = fh.read(len(MAGIC))
                if f.stat().st_size:
                    assert head == MAGIC, f"plaintext safetensors committed: {f}"

    def covered(self, p: str) -> bool:
        """``p`` was committed by a checked rename (and, inside a renamed directory,
        still exists there: a temp file written and deleted is not covered)."""
        for src, dst in self.renamed.items():
            if p == src:
                return True
            if p.startswith(src + os.sep) and os.path.isfile(dst + p[len(src) :]):
                return True
        return False


@pytest.fixture()
def spy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WriteSpy]:
    s = WriteSpy(tmp_path)
    real_open, real_os_open, real_replace = builtins.open, os.open, os.replace
    real_link = os.link

    def spy_open(file: Any, mode: str = "r", *a: Any, **k: Any) -> Any:
        if any(c in mode for c in "wax+"):
            s._note(file)
        return real_open(file, mode, *a, **k)

    def spy_os_open(path: Any, flags: int, *a: Any, **k: Any) -> int:
        tmpfile = getattr(os, "O_TMPFILE", 0)
        unnamed = bool(tmpfile) and flags & tmpfile == tmpfile  # no name: checked at link
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and not unnamed:
            s._note(path)
        return real_os_open(path, flags, *a, **k)

    def spy_link(src: Any, dst: Any, *a: Any, **k: Any) -> None:
        real_link(src, dst, *a, **k)
        dst_s = os.path.abspath(os.fspath(dst))
        if s.active and dst_s.startswith(s.root):  # an unnamed file given its name
            s.check_committed(dst_s)

    def spy_replace(src: Any, dst: Any, *a: Any, **k: Any) -> None:
        src_s = os.path.abspath(os.fspath(src))
        if s.active and src_s.startswith(s.root):
            s.check_committed(src_s)
            s.renamed[src_s] = os.path.abspath(os.fspath(dst))
        real_replace(src, dst, *a, **k)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(io, "open", spy_open)
    monkeypatch.setattr(os, "open", spy_os_open)
    monkeypatch.setattr(os, "replace", spy_replace)
    monkeypatch.setattr(os, "link", spy_link)
    yield s


def _decrypt(src: Path, dst: Path) -> Path:
    with pytest.warns(crypt.PlaintextWriteWarning):
        if src.is_dir():
            crypt.decrypt_model(src, dst)
        else:
            dst.parent.mkdir(parents=True, exist_ok=True)
            crypt.decrypt_file(src, dst)
    return dst


def _header_bytes(p: Path) -> bytes:
    data = p.read_bytes()
    return data[: 8 + int.from_bytes(data[:8], "little")]


def _tensor_bytes(p: Path) -> dict[str, bytes]:
    out = {}
    with safe_open(str(p), "pt") as f:
        for k in f.keys():  # noqa: SIM118 - safe_open has no __iter__
            t = f.get_tensor(k)
            out[k] = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return out


def test_embed_encrypted_file(
    tmp_path: Path, keys: dict[str, Path], enc_file: tuple[Path, Path], spy: WriteSpy
) -> None:
    plain, enc = enc_file
    out = tmp_path / "out" / "marked.safetensors"
    out.parent.mkdir()
    before = {p for p in tmp_path.rglob("*")}
    sink = MemorySink()
    audit = AuditLog(sink)
    with spy.watch():
        res = wm.embed_file(
            enc,
            out,
            KEY,
            load_options={"policy": PublicKey.from_file(keys["pub"]), "audit": audit},
            audit=audit,
        )
    # no plaintext file: everything opened for writing was committed by a checked rename
    written = {p for p in spy.opened if not spy.covered(p)}
    assert written == set(), written
    assert {p for p in tmp_path.rglob("*")} - before == {out, wm.commitment_path(out)}
    assert res.encrypted and res.tensors_marked == 2 and res.output == out
    assert crypt.is_encrypted(out)
    a, b = crypt.inspect(enc), crypt.inspect(out)
    assert b["key"]["uri"] == a["key"]["uri"] and b["key"]["context"] == "acme/model"
    assert b["chunk_size"] == CHUNK and b["header_encrypted"] is True
    assert b["plaintext_size"] == a["plaintext_size"]
    # decrypts to the original file with only the eligible tensors changed
    dec = _decrypt(out, tmp_path / "dec" / "marked.safetensors")
    assert _header_bytes(dec) == _header_bytes(plain)  # metadata, order, offsets kept
    with safe_open(str(dec), "pt") as f:
        assert f.metadata() == META
    before_t, after_t = _tensor_bytes(plain), _tensor_bytes(dec)
    changed = {k for k in before_t if before_t[k] != after_t[k]}
    assert changed == {"layer.0.weight", "layer.1.weight"}
    assert wm.check(dec, KEY).verdict == "present"
    assert wm.check(plain, KEY).verdict == "absent"
    # the commitment, the audit event, and the output loads with the unsafe policy
    assert res.commitment is not None and wm.verify_commitment(res.commitment, KEY)
    events = [r for r in sink.records if r.get("event") == "watermark.embed"]
    assert events and events[-1]["outcome"] == "ok"
    from weightguard.policy import UnsafeNoVerification

    rep = wm.check(out, KEY, load_options={"policy": UnsafeNoVerification(), "audit": audit})
    assert rep.verdict == "present"


def test_embed_encrypted_dir(
    tmp_path: Path, keys: dict[str, Path], enc_dir: tuple[Path, Path], spy: WriteSpy
) -> None:
    plain, enc = enc_dir
    out = tmp_path / "marked_dir"
    with spy.watch():
        res = wm.embed_file(
            enc, out, KEY, load_options={"policy": PublicKey.from_file(keys["pub"])}
        )
    assert spy.renamed  # the spy saw the commits
    written = {p for p in spy.opened if not spy.covered(p)}
    assert written == set(), written
    assert res.encrypted and res.tensors_marked == 2
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors.index.json",
    ]  # model.sig is not copied: it no longer matches
    for name in ("config.json", "model.safetensors.index.json"):
        assert (out / name).read_bytes() == (enc / name).read_bytes()
    for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        assert crypt.is_encrypted(out / shard)
        a, b = crypt.inspect(enc / shard), crypt.inspect(out / shard)
        assert b["key"] == {**a["key"], "key_version": b["key"]["key_version"]}
        assert b["key"]["context"] == "acme/sharded"
        assert (out / shard).read_bytes() != (enc / shard).read_bytes()
    dec = _decrypt(out, tmp_path / "dec_dir")
    changed = set()
    for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        assert _header_bytes(dec / shard) == _header_bytes(plain / shard)
        x, y = _tensor_bytes(plain / shard), _tensor_bytes(dec / shard)
        changed |= {k for k in x if x[k] != y[k]}
    assert changed == {"layer.0.weight", "layer.1.weight"}
    assert wm.check(dec, KEY).verdict == "present"
    _sign(out, out / "model.sig", keys["priv"])  # re-signed, it loads verified again
    rep = wm.check(out, KEY, load_options={"policy": PublicKey.from_file(keys["pub"])})
    assert rep.verdict == "present"


def test_tampered_input_refused(
    tmp_path: Path, keys: dict[str, Path], enc_file: tuple[Path, Path]
) -> None:
    _, enc = enc_file
    data = bytearray(enc.read_bytes())
    data[-100] ^= 1
    enc.write_bytes(bytes(data))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "marked.safetensors"
    with pytest.raises(IntegrityError):
        wm.embed_file(enc, out, KEY, load_options={"policy": PublicKey.from_file(keys["pub"])})
    assert list(out_dir.iterdir()) == []


def test_missing_policy(tmp_path: Path, enc_file: tuple[Path, Path]) -> None:
    from weightguard.errors import WatermarkError

    _, enc = enc_file
    with pytest.raises(WatermarkError, match="needs a verification policy"):
        wm.embed_file(enc, tmp_path / "x.safetensors", KEY)
    assert not (tmp_path / "x.safetensors").exists()


def test_cli_embed_encrypted(
    tmp_path: Path, keys: dict[str, Path], enc_file: tuple[Path, Path]
) -> None:
    _, enc = enc_file
    keyf = tmp_path / "wm.key"
    keyf.write_bytes(KEY)
    out = tmp_path / "cli_out.safetensors"
    base = ["watermark", "embed", str(enc), "-o", str(out), "--watermark-key", str(keyf)]
    audit = ["--audit-log", str(tmp_path / "audit.jsonl")]
    res = CliRunner().invoke(cli, base + audit)
    assert res.exit_code == 2 and "--trust-key" in res.output
    assert not out.exists()
    res = CliRunner().invoke(cli, [*base, "--trust-key", str(keys["pub"]), "--json", *audit])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["encrypted"] is True and doc["tensors_marked"] == 2
    assert "sign it again" in res.stderr
    assert crypt.is_encrypted(out)
