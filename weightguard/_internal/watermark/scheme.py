"""The watermark scheme: seeds, the +-1 pattern, embedding of one tensor, canonicalisation
and correlation.  Spec in docs/watermark.md ("Scheme v1").

Everything here is deterministic and platform independent: the pattern comes from
HMAC-SHA256 and SHAKE-256 only, never from a library RNG.
"""

from __future__ import annotations

import hashlib
import hmac
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

SCHEME = "weightguard-wm-v1"
DOMAIN = b"weightguard/watermark/v1"
DEFAULT_ALPHA = 0.02
DEFAULT_MIN_NUMEL = 1024
# safetensors dtypes the embedder marks (written back in the same dtype)
EMBED_DTYPES = frozenset({"F16", "BF16", "F32", "F64"})
# dtypes the detector reads (quantised integer tensors are read as numbers)
CHECK_DTYPES = EMBED_DTYPES | {"I8", "U8"}
# elements processed per block (bounds temporary memory for very large tensors)
BLOCK_ELEMENTS = 1 << 22
PRESENT_P = 1e-9
INCONCLUSIVE_Z = 4.0
MIN_KEY_BYTES = 16


def numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def row_view(shape: Sequence[int]) -> tuple[int, int]:
    """(rows, cols) of a tensor of >= 2 dims seen as rows: dim 0 by the rest."""
    rows = int(shape[0])
    return rows, (numel(shape) // rows if rows else 0)


def is_eligible(dtype: str, shape: Sequence[int], *, min_numel: int, for_check: bool) -> bool:
    allowed = CHECK_DTYPES if for_check else EMBED_DTYPES
    return dtype in allowed and len(shape) >= 2 and numel(shape) >= min_numel


def tensor_identity(name: str, shape: Sequence[int]) -> bytes:
    """Stable identity: UTF-8 name, NUL, decimal shape joined by ','."""
    return name.encode("utf-8") + b"\x00" + ",".join(str(int(d)) for d in shape).encode("ascii")


def tensor_seed(key: bytes | bytearray, name: str, shape: Sequence[int]) -> bytes:
    """seed = HMAC-SHA256(key, DOMAIN || 0x00 || u32le(len(identity)) || identity)."""
    ident = tensor_identity(name, shape)
    msg = DOMAIN + b"\x00" + len(ident).to_bytes(4, "little") + ident
    return hmac.new(key, msg, hashlib.sha256).digest()


def pattern_bytes(seed: bytes, n: int) -> bytes:
    """ceil(n/8) bytes of SHAKE-256(seed); bit k (LSB first) of byte g is element 8g+k."""
    return hashlib.shake_256(seed).digest((n + 7) // 8)


def signs_from_bytes(buf: bytes, start: int, stop: int) -> np.ndarray:
    """Elements [start, stop) of the pattern as float32 +-1 (bit 1 -> +1, bit 0 -> -1)."""
    import numpy as np

    b0, b1 = start // 8, (stop + 7) // 8
    bits = np.unpackbits(
        np.frombuffer(buf, dtype=np.uint8, count=b1 - b0, offset=b0), bitorder="little"
    )
    off = start - 8 * b0
    out = bits[off : off + (stop - start)].astype(np.float32)
    out *= 2.0
    out -= 1.0
    return out


def pattern(seed: bytes, n: int) -> np.ndarray:
    """The whole +-1 pattern (float32) of n elements."""
    return signs_from_bytes(pattern_bytes(seed, n), 0, n)


def _row_blocks(rows: int, cols: int) -> list[tuple[int, int]]:
    step = max(1, BLOCK_ELEMENTS // max(cols, 1))
    return [(r, min(rows, r + step)) for r in range(0, rows, step)]


def embed_tensor(t: torch.Tensor, seed: bytes, alpha: float) -> torch.Tensor:
    """W' = W + alpha * rms(row) * s, computed in fp32 (fp64 for fp64), original dtype back."""
    import torch

    shape = tuple(t.shape)
    rows, cols = row_view(shape)
    work_dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
    src = t.reshape(rows, cols)
    out = torch.empty_like(src)
    buf = pattern_bytes(seed, rows * cols)
    for r0, r1 in _row_blocks(rows, cols):
        w = src[r0:r1].to(work_dtype)
        rms = w.pow(2).mean(dim=1, keepdim=True).sqrt()
        s = torch.from_numpy(signs_from_bytes(buf, r0 * cols, r1 * cols)).reshape(r1 - r0, cols)
        w = w + (alpha * rms) * s.to(device=w.device, dtype=work_dtype)
        out[r0:r1] = w.to(t.dtype)
    return out.reshape(shape)


def canonicalise(w: torch.Tensor, iters: int = 2) -> torch.Tensor:
    """Key-independent canonical form of a (rows, cols) float32 matrix.

    Centre columns (if >= 8 rows) and rows (if >= 8 columns), then alternate row and
    column RMS balancing.  The result depends on the suspect only, never on a key, which
    is what makes the p-value bound hold.
    """
    import torch

    a = w.to(torch.float32).clone()
    rows, cols = a.shape
    if rows >= 8:
        a -= a.mean(dim=0, keepdim=True)
    if cols >= 8:
        a -= a.mean(dim=1, keepdim=True)
    for _ in range(iters):
        rr = a.pow(2).mean(dim=1, keepdim=True).sqrt()
        a /= torch.where(rr > 0, rr, torch.ones_like(rr))
        cr = a.pow(2).mean(dim=0, keepdim=True).sqrt()
        a /= torch.where(cr > 0, cr, torch.ones_like(cr))
    a = torch.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    return a


def correlate(a: torch.Tensor, seed: bytes) -> tuple[float, float]:
    """(sum a*s, sum a*a) for canonical matrix a and the pattern of seed."""
    import torch

    rows, cols = a.shape
    buf = pattern_bytes(seed, rows * cols)
    c = 0.0
    for r0, r1 in _row_blocks(rows, cols):
        s = torch.from_numpy(signs_from_bytes(buf, r0 * cols, r1 * cols)).to(a.device)
        c += float(torch.dot(a[r0:r1].reshape(-1), s))
    n = float(a.pow(2).sum())
    return c, n


def z_from(c: float, n: float) -> float:
    return c / math.sqrt(n) if n > 0 else 0.0


def log10_p_bound(z: float) -> float:
    """log10 of the Hoeffding bound p <= exp(-z^2/2) (0 for z <= 0)."""
    if z <= 0:
        return 0.0
    return -(z * z) / (2.0 * math.log(10.0))


def present_threshold_z(keys_tested: int) -> float:
    """Smallest z with exp(-z^2/2) <= 1e-9 / K."""
    return math.sqrt(2.0 * math.log(max(1, keys_tested) / PRESENT_P))


def verdict_for(z: float, keys_tested: int) -> str:
    if z >= present_threshold_z(keys_tested):
        return "present"
    if z >= INCONCLUSIVE_Z:
        return "inconclusive"
    return "absent"
