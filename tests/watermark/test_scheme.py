"""Scheme v1: golden vectors, fidelity, streaming file rewrite, keys, commitment."""

from __future__ import annotations

import hashlib
import hmac
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.support.watermark import floats, minilm, minilm_cosines, minilm_dir
from weightguard import watermark as wm
from weightguard._internal.watermark import scheme as wm_scheme
from weightguard._internal.watermark.keys import WatermarkKey, resolve_key
from weightguard.errors import ConfigError, DestinationError, FormatError, WatermarkError

KEY = bytes(range(32))
QNAME = "encoder.layer.0.attention.self.query.weight"


# ------------------------------------------------------------------ golden vectors


def test_seed_and_pattern_golden_vectors() -> None:
    seed = wm_scheme.tensor_seed(KEY, QNAME, (384, 384))
    assert seed.hex() == "c8de171104d9d258a2cfca7ed6dd2eeb0360d6430dfbdbd02cc175a6ae7bca8d"
    assert wm_scheme.pattern(seed, 16).astype(int).tolist() == [
        1, -1, -1, 1, -1, -1, 1, -1, 1, 1, 1, 1, 1, -1, 1, -1]  # fmt: skip
    assert (
        hashlib.sha256(wm_scheme.pattern_bytes(seed, 384 * 384)).hexdigest()
        == "41107027c6b1e4dedfb30607b823149eaed4f07c9ee5919c01750a753c413f00"
    )


def test_spec_reimplemented_from_the_doc() -> None:
    """An independent implementation of the documented construction agrees."""
    ident = QNAME.encode() + b"\x00" + b"384,384"
    msg = b"weightguard/watermark/v1\x00" + len(ident).to_bytes(4, "little") + ident
    seed = hmac.new(KEY, msg, hashlib.sha256).digest()
    assert seed == wm_scheme.tensor_seed(KEY, QNAME, [384, 384])
    raw = hashlib.shake_256(seed).digest(2)
    bits = [(raw[i // 8] >> (i % 8)) & 1 for i in range(16)]
    assert [2 * b - 1 for b in bits] == wm_scheme.pattern(seed, 16).astype(int).tolist()
    # block-wise slicing at odd offsets agrees with the whole pattern
    whole = wm_scheme.pattern(seed, 1000)
    buf = wm_scheme.pattern_bytes(seed, 1000)
    assert np.array_equal(wm_scheme.signs_from_bytes(buf, 13, 611), whole[13:611])


def test_embed_golden_values() -> None:
    t = torch.arange(24, dtype=torch.float32).reshape(3, 8) / 10
    out = wm_scheme.embed_tensor(t, wm_scheme.tensor_seed(KEY, "w", (3, 8)), 0.02)
    expect = [-0.008366599678993225, 0.10836660116910934, 0.191633403301239,
              0.2916334271430969, 0.4083666205406189]  # fmt: skip
    assert out.flatten()[:5].tolist() == pytest.approx(expect, abs=1e-7)
    # per row: W' - W = alpha * rms(row) * s exactly
    rms = t.pow(2).mean(dim=1, keepdim=True).sqrt()
    s = torch.from_numpy(wm_scheme.pattern(wm_scheme.tensor_seed(KEY, "w", (3, 8)), 24))
    assert torch.allclose(out - t, 0.02 * rms * s.reshape(3, 8), atol=1e-6)


def test_verdict_thresholds() -> None:
    assert wm_scheme.present_threshold_z(1) == pytest.approx(6.4379, abs=1e-3)
    assert wm_scheme.verdict_for(6.5, 1) == "present"
    assert wm_scheme.verdict_for(6.5, 1000) == "inconclusive"  # needs z >= 7.43 for K=1000
    assert wm_scheme.verdict_for(3.99, 1) == "absent"
    assert wm_scheme.log10_p_bound(-3.0) == 0.0


# ------------------------------------------------------------------ fidelity


def test_fidelity_minilm_dict() -> None:
    sd = minilm()
    marked = wm.embed(sd, KEY)
    eligible = [k for k in floats(sd) if sd[k].numel() >= wm.DEFAULT_MIN_NUMEL]
    assert len(eligible) == 39
    for k, v in sd.items():
        assert marked[k].dtype == v.dtype and marked[k].shape == v.shape
        if k in eligible:
            rel = float((marked[k] - v).norm() / v.norm())
            assert rel == pytest.approx(wm.DEFAULT_ALPHA, rel=0.02), k
        else:  # 1-D, norms, biases, small and integer tensors untouched
            assert marked[k] is v
    cos = minilm_cosines(sd, marked)
    assert float(cos.min()) >= 0.99
    # and the default is far from the bound: measured 0.9978 at alpha 0.02
    assert float(cos.min()) >= 0.995


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_dtypes_preserved_and_mark_survives_native_low_precision(dtype: torch.dtype) -> None:
    sd = {
        k: (v.to(dtype) if v.is_floating_point() else v)
        for k, v in minilm().items()
        if k.startswith("encoder.layer.0.")
    }
    marked = wm.embed(sd, KEY)
    assert all(marked[k].dtype == sd[k].dtype for k in sd)
    rep = wm.check(marked, KEY)
    assert rep.verdict == "present" and rep.z > 20


def test_embed_file_streams_header_and_untouched_bytes(tmp_path: Path) -> None:
    src = minilm_dir() / "model.safetensors"
    dst = tmp_path / "marked.safetensors"
    res = wm.embed_file(src, dst, KEY)
    assert res.tensors_marked == 39 and res.output == dst
    raw_src, raw_dst = src.read_bytes(), dst.read_bytes()
    n = int.from_bytes(raw_src[:8], "little")
    assert raw_dst[: 8 + n] == raw_src[: 8 + n]  # header (and metadata) byte for byte
    assert len(raw_dst) == len(raw_src)
    header = json.loads(raw_src[8 : 8 + n])
    base = 8 + n
    for name, info in header.items():
        if name == "__metadata__":
            continue
        s, e = info["data_offsets"]
        same = raw_dst[base + s : base + e] == raw_src[base + s : base + e]
        shape = info["shape"]
        marked = len(shape) >= 2 and info["dtype"] == "F32" and np.prod(shape) >= 1024
        assert same != marked, name
    # file result equals the dict result
    a, b = load_file(str(dst)), wm.embed(load_file(str(src)), KEY)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(DestinationError, match="already exists"):
        wm.embed_file(src, dst, KEY)


def test_embed_directory_of_shards_copies_other_files(tmp_path: Path) -> None:
    sd = minilm()
    names = sorted(sd)
    model = tmp_path / "model"
    (model / "sub").mkdir(parents=True)
    save_file(
        {k: sd[k] for k in names[:40]},
        str(model / "model-00001-of-00002.safetensors"),
        metadata={"format": "pt"},
    )
    save_file({k: sd[k] for k in names[40:]}, str(model / "model-00002-of-00002.safetensors"))
    (model / "config.json").write_text('{"a": 1}')
    (model / "sub" / "tok.json").write_bytes(b"\x00\x01tokenizer")
    out = tmp_path / "out"
    res = wm.embed_file(model, out, KEY)
    assert res.tensors_marked == 39
    assert (out / "config.json").read_bytes() == b'{"a": 1}'
    assert (out / "sub" / "tok.json").read_bytes() == b"\x00\x01tokenizer"
    rep = wm.check(out, KEY)
    assert rep.verdict == "present" and rep.tensors == 39
    assert wm.check(model, KEY).verdict == "absent"
    # duplicate tensor names across shards are refused
    save_file({names[0]: sd[names[0]]}, str(model / "dup.safetensors"))
    with pytest.raises(WatermarkError, match="more than one"):
        wm.embed_file(model, tmp_path / "out2", KEY)
    assert not (tmp_path / "out2").exists()


def test_embed_refuses_bad_inputs(tmp_path: Path) -> None:
    f = tmp_path / "small.safetensors"
    save_file({"bias": torch.zeros(10)}, str(f))
    with pytest.raises(WatermarkError, match="no tensor is eligible"):
        wm.embed_file(f, tmp_path / "o.safetensors", KEY)
    assert not (tmp_path / "o.safetensors").exists()  # nothing half-made left behind
    with pytest.raises(ConfigError, match="alpha"):
        wm.embed({"w": torch.zeros(64, 64)}, KEY, alpha=0.0)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes((10**12).to_bytes(8, "little") + b"{}")
    with pytest.raises(FormatError, match="out of bounds"):
        wm.check(bad, KEY)
    with pytest.raises(WatermarkError, match="no tensor to check"):
        wm.check({"b": torch.zeros(5)}, KEY)


# ------------------------------------------------------------------ keys


def test_key_references(tmp_path: Path) -> None:
    kf = tmp_path / "wm.key"
    kf.write_bytes(KEY)
    for ref in (str(kf), f"file://{kf}", kf):
        k, owned = resolve_key(ref)
        assert bytes(k.material) == KEY and owned
        assert KEY.hex() not in repr(k) and str(kf) in repr(k)
        k.wipe()
        assert bytes(k.material) == bytes(32)
    short = tmp_path / "short.key"
    short.write_bytes(b"abc")
    with pytest.raises(ConfigError, match="fewer than 16"):
        resolve_key(str(short))
    with pytest.raises(ConfigError, match="unknown watermark key scheme"):
        resolve_key("s3://bucket/key")
    with pytest.raises(ConfigError, match="cannot read watermark key file"):
        resolve_key(str(tmp_path / "missing.key"))
    wk = WatermarkKey("x", bytearray(KEY))
    assert resolve_key(wk) == (wk, False)
    # a key file and raw bytes give the same mark
    marked = wm.embed({"w": torch.randn(64, 64)}, str(kf))
    assert wm.check(marked, KEY).z == wm.check(marked, f"file://{kf}").z


def test_commitment_written_next_to_output(tmp_path: Path) -> None:
    src = tmp_path / "m.safetensors"
    save_file({"w": torch.randn(256, 256), "b": torch.zeros(256)}, str(src), metadata={"k": "v"})
    dst = tmp_path / "out.safetensors"
    res = wm.embed_file(src, dst, KEY, alpha=0.03)
    assert res.commitment == tmp_path / "out.safetensors.wmcommit.json"
    doc = json.loads(res.commitment.read_text())
    assert doc["params"]["alpha"] == 0.03 and doc["params"]["scheme"] == wm.SCHEME
    assert doc["outputs_sha256"]["out.safetensors"] == hashlib.sha256(dst.read_bytes()).hexdigest()
    assert doc["time"].endswith("Z") and len(doc["nonce"]) == 32
    assert KEY.hex() not in res.commitment.read_text()
    assert wm.verify_commitment(res.commitment, KEY) is True
    assert wm.verify_commitment(res.commitment, b"\x01" * 32) is False
    doc["time"] = "2000-01-01T00:00:00Z"  # back-dating breaks it
    res.commitment.write_text(json.dumps(doc))
    assert wm.verify_commitment(res.commitment, KEY) is False
    # nothing was added to the model's metadata
    from safetensors import safe_open

    with safe_open(str(dst), "pt") as f:
        assert f.metadata() == {"k": "v"}


@pytest.mark.cuda
def test_embed_and_check_cuda_tensors() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    sd = {k: v.cuda() for k, v in minilm().items() if k.startswith("encoder.layer.0.")}
    marked = wm.embed(sd, KEY)
    assert all(marked[k].device.type == "cuda" for k in marked)
    cpu = wm.embed({k: v.cpu() for k, v in sd.items()}, KEY)
    assert all(torch.allclose(marked[k].cpu(), cpu[k], atol=1e-6) for k in cpu)
    assert wm.check(marked, KEY).verdict == "present"


def test_check_streams_one_tensor_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import weakref

    from weightguard._internal.watermark import io as wm_io

    sd = {f"layer.{i}.weight": torch.randn(256, 128) for i in range(12)}
    model = tmp_path / "m"
    model.mkdir()
    for j in range(3):
        save_file(
            {k: sd[k] for k in list(sd)[4 * j : 4 * j + 4]}, str(model / f"model-{j}.safetensors")
        )
    alive = [0, 0]
    real = wm_io._file_loader

    def tracking(e: wm_io.Entry) -> torch.Tensor:
        t = real(e)
        alive[0] += 1
        alive[1] = max(alive)
        weakref.finalize(t, lambda: alive.__setitem__(0, alive[0] - 1))
        return t

    monkeypatch.setattr(wm_io, "_file_loader", tracking)
    rep = wm.check(model, KEY)
    assert rep.tensors == 12 and rep.verdict == "absent"
    assert 1 <= alive[1] <= 2  # never more than the current tensor (and the one being dropped)
