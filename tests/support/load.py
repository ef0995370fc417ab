"""Helpers and fixtures for the loader tests (no tests here)."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from weightguard.audit import AuditLog, MemorySink

# name -> (safetensors dtype, torch dtype)
DT = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F64": torch.float64,
    "I32": torch.int32,
}


def write_st(
    path: Path, tensors: list[tuple[str, str, tuple[int, ...]]], seed: int = 0
) -> dict[str, torch.Tensor]:
    """Write a safetensors file with tensors laid out in the given order (offsets
    may be misaligned for their dtype on purpose); returns the expected tensors."""
    g = torch.Generator().manual_seed(seed)
    expected: dict[str, torch.Tensor] = {}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    blobs: list[bytes] = []
    off = 0
    for name, dt, shape in tensors:
        tdt = DT[dt]
        if tdt.is_floating_point:
            t = torch.randn(shape, generator=g).to(tdt)
        elif tdt == torch.bool:
            t = torch.randint(0, 2, shape, generator=g).bool()
        else:
            t = torch.randint(0, 100, shape, generator=g).to(tdt)
        raw = t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b""
        expected[name] = t
        header[name] = {"dtype": dt, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    hj = json.dumps(header, separators=(",", ":")).encode()
    path.write_bytes(struct.pack("<Q", len(hj)) + hj + b"".join(blobs))
    return expected


MODEL_LAYOUT = [
    ("odd.bytes", "U8", (3,)),  # makes every following offset misaligned
    ("w.f32", "F32", (64, 130)),
    ("w.f16", "F16", (333,)),
    ("empty", "F32", (0, 4)),
    ("w.bf16", "BF16", (40, 50)),
    ("ids", "I64", (1000,)),
    ("mask", "BOOL", (77,)),
    ("scalar", "F64", ()),
]


def encrypt(
    src: Path,
    dst: Path,
    key_uri: str,
    *,
    chunk_size: int = 4096,
    header_encrypted: bool = False,
    context: str = "model-test",
    key_options: dict[str, Any] | None = None,
) -> None:
    from weightguard._internal.format import layout as fmt
    from weightguard._internal.format.safetensors import read_safetensors_header
    from weightguard._internal.foundation.memory import wipe
    from weightguard._internal.keys import providers as keys

    with open(src, "rb") as f:
        sth = read_safetensors_header(f, path=str(src))
    provider = keys.provider_for(key_uri, **(key_options or {}))
    dk, wk = provider.generate(context)
    try:
        hdr, pre = fmt.new_header(
            data_key=dk,
            wrapped_key=wk,
            content="safetensors",
            st_header=sth.header,
            st_header_size=sth.st_header_size,
            data_size=sth.data_size,
            chunk_size=chunk_size,
            header_encrypted=header_encrypted,
            path=str(dst),
        )
        cipher = fmt.ChunkCipher(hdr, dk)
    finally:
        wipe(dk)
    s = os.open(src, os.O_RDONLY)
    d = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        fmt.encrypt_stream(s, d, hdr, pre, cipher)
    finally:
        os.close(s)
        os.close(d)


@dataclass
class SignKeys:
    private: Path
    public: Path

    def signer(self) -> Any:
        from weightguard.signing import KeySigner

        return KeySigner.from_file(self.private)

    def policy(self) -> Any:
        from weightguard.policy import PublicKey

        return PublicKey.from_file(self.public)


def make_sign_keys(d: Path, name: str) -> SignKeys:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    k = ec.generate_private_key(ec.SECP256R1())
    priv, pub = d / f"{name}.pem", d / f"{name}.pub"
    priv.write_bytes(
        k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    pub.write_bytes(
        k.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return SignKeys(priv, pub)


def sign(model: Path, sig: Path, keys: SignKeys, **kw: Any) -> None:
    from weightguard.signing import sign_model

    sign_model(model, sig, keys.signer(), **kw)


def memory_audit() -> tuple[AuditLog, MemorySink]:
    sink = MemorySink()
    return AuditLog(sink), sink


def events(sink: MemorySink) -> list[str]:
    return [r["event"] for r in sink.records if "event" in r]


def last(sink: MemorySink, event: str) -> dict[str, Any]:
    found = [r for r in sink.records if r.get("event") == event]
    assert found, f"no {event} event in {events(sink)}"
    return found[-1]


def assert_same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert set(got) == set(expected)
    for k, v in expected.items():
        g = got[k].cpu()
        assert g.dtype == v.dtype and tuple(g.shape) == tuple(v.shape), k
        if v.numel():
            assert torch.equal(g.reshape(-1).view(torch.uint8), v.reshape(-1).view(torch.uint8)), k


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="session")
def file_key(tmp_path_factory: pytest.TempPathFactory) -> str:
    from weightguard._internal.keys.providers import create_key_file

    p = tmp_path_factory.mktemp("kek") / "kek.hex"
    create_key_file(p)
    return f"file://{p}"


@pytest.fixture(scope="session")
def sign_keys(tmp_path_factory: pytest.TempPathFactory) -> SignKeys:
    return make_sign_keys(tmp_path_factory.mktemp("signkeys"), "release")


@pytest.fixture(scope="session")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> SignKeys:
    return make_sign_keys(tmp_path_factory.mktemp("signkeys2"), "attacker")


@pytest.fixture
def quiet_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    """Silence the development key-file warning."""


def zeros(mv: memoryview) -> bool:
    return not np.frombuffer(mv, dtype=np.uint8).any()


Factory = Callable[..., Any]
