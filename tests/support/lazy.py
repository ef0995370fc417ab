"""Helpers for the lazy reader tests (weightguard.safe_open and the safetensors drop-in)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.support.load import SignKeys, encrypt, sign


def tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    """A small model of mixed dtypes and shapes (scalars, empty, odd sizes)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "embed.weight": torch.randn(300, 37, generator=g),
        "layer.0.w": torch.randn(64, 33, generator=g).to(torch.bfloat16),
        "layer.0.b": torch.randn(33, generator=g).half(),
        "layer.1.w": torch.randn(17, 5, 3, generator=g),
        "ids": torch.randint(0, 1000, (129,), generator=g),
        "mask": torch.randint(0, 2, (77,), generator=g).bool(),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "empty": torch.zeros(0, 4),
    }


def release_file(
    d: Path,
    name: str,
    ts: dict[str, torch.Tensor],
    *,
    key: str | None,
    keys: SignKeys | None,
    chunk_size: int = 4096,
    metadata: dict[str, str] | None = None,
    header_encrypted: bool = False,
) -> tuple[Path, Path]:
    """(released file, the plain original): encrypted if ``key``, signed if ``keys``."""
    d.mkdir(parents=True, exist_ok=True)
    plain = d.parent / f"{d.name}-{name}.plain"
    save_file(ts, str(plain), metadata=metadata)
    out = d / name
    if key is not None:
        encrypt(plain, out, key, chunk_size=chunk_size, header_encrypted=header_encrypted)
    else:
        out.write_bytes(plain.read_bytes())
    if keys is not None:
        sign(out, out.with_name(out.name + ".sig"), keys)
    return out, plain


def release_dir(
    d: Path, key: str | None, keys: SignKeys | None, *, chunk_size: int = 4096
) -> tuple[Path, dict[str, torch.Tensor]]:
    """A two-shard model directory with an index and a config, signed as a whole."""
    d.mkdir(parents=True, exist_ok=True)
    expected: dict[str, torch.Tensor] = {}
    weight_map = {}
    for i in (1, 2):
        ts = {f"s{i}.{k}": v for k, v in tensors(seed=i).items()}
        shard = f"model-0000{i}-of-00002.safetensors"
        plain = d.parent / f"{d.name}-{shard}.plain"
        save_file(ts, str(plain), metadata={"format": "pt"})
        if key is not None:
            encrypt(plain, d / shard, key, chunk_size=chunk_size)
        else:
            (d / shard).write_bytes(plain.read_bytes())
        expected |= ts
        weight_map |= dict.fromkeys(ts, shard)
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    (d / "config.json").write_text('{"model_type": "test"}')
    if keys is not None:
        sign(d, d / "model.sig", keys)
    return d, expected


def record_offset(path: Path, record: int) -> int:
    """File offset of data record ``record`` (1-based) of an artifact."""
    from weightguard._internal.format import layout as fmt

    with open(path, "rb") as f:
        h = fmt.read_header(f, path=str(path))
    return h.record_span(record)[0]


def model_signing_sign(model: Path, sig: Path, keys: SignKeys) -> None:
    """Sign with OpenSSF model_signing itself (whole-file digests, no chunk digests)."""
    import model_signing

    hc = model_signing.hashing.Config().use_file_serialization(hashing_algorithm="sha256")
    cfg = model_signing.signing.Config().use_elliptic_key_signer(private_key=keys.private)
    cfg.set_hashing_config(hc).sign(model, sig)


def vllm_python() -> Path | None:
    """The pinned vLLM venv's python (``make vllm-venv``), or None when it is absent."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    res = subprocess.run(
        ["bash", str(root / "scripts" / "vllm-venv.sh"), "--path"],
        capture_output=True,
        text=True,
        check=False,
    )
    venv = Path(res.stdout.strip())
    py = venv / "bin" / "python"
    if res.returncode != 0 or not (venv / ".complete").is_file() or not py.exists():
        return None
    return py
