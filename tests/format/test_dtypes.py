"""Every dtype safetensors 0.8 reads round-trips where this torch has the type (issue 21
item 4): encrypt -> sign -> load_file / open_model / decrypt, with scalar, zero-size and
record-crossing shapes, against safetensors' own ``load_file`` of the original.

The one dtype table is ``format.safetensors.DTYPES``; these tests read the installed
safetensors' torch mapping to make sure no type it can load is missing there.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from safetensors.torch import load_file as st_load_file  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from tests.support.load import make_sign_keys, sign  # noqa: E402
from weightguard import crypt, loader  # noqa: E402
from weightguard._internal.format.safetensors import DTYPES  # noqa: E402
from weightguard.errors import FormatError  # noqa: E402
from weightguard.policy import UnsafeNoVerification  # noqa: E402

CHUNK = 4096
# safetensors 0.8's Rust Dtype enum, in its order (bindings/python/src/lib.rs maps the
# torch names); F6_* have no torch type.
SAFETENSORS_08 = [
    "BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0",
    "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32", "U32", "F32",
    "C64", "F64", "I64", "U64",
]  # fmt: skip
TORCH_TYPES = {k: getattr(torch, v) for k, (_, v) in DTYPES.items() if v and hasattr(torch, v)}


def test_the_table_is_safetensors_08s() -> None:
    assert sorted(DTYPES) == sorted(SAFETENSORS_08)
    # the FNUZ, E8M0 and F4 types the issue names exist in this torch (2.13)
    for name in ("F8_E4M3FNUZ", "F8_E5M2FNUZ", "F8_E8M0", "F4"):
        assert name in TORCH_TYPES, name


def _tensor(name: str, shape: tuple[int, ...], seed: int) -> Any:
    """Random bytes viewed as ``name`` (F4: ``shape`` is torch's, half the last dim)."""
    dt = TORCH_TYPES[name]
    g = torch.Generator().manual_seed(seed)
    n = 1
    for d in shape:
        n *= d
    raw = torch.randint(0, 256, (n * dt.itemsize,), dtype=torch.uint8, generator=g)
    if dt == torch.bool:
        raw = raw % 2
    return raw.view(dt).reshape(shape)


def _shapes(name: str) -> dict[str, tuple[int, ...]]:
    item = TORCH_TYPES[name].itemsize
    long = (3 * CHUNK) // item + 7  # crosses at least two record boundaries
    shapes = {"zero": (0, 4), "row": (5,), "crossing": (long,), "matrix": (3, 6)}
    if name != "F4":  # an F4 scalar is half a byte: safetensors cannot store it
        shapes["scalar"] = ()
    return shapes


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("dtypes")
    plain = base / "plain"
    plain.mkdir()
    tensors = {
        f"{name}.{kind}": _tensor(name, shape, seed=i * 10 + j)
        for i, name in enumerate(sorted(TORCH_TYPES))
        for j, (kind, shape) in enumerate(_shapes(name).items())
    }
    save_file(tensors, str(plain / "model.safetensors"))
    kek = base / "kek.hex"
    crypt.create_key_file(kek)
    enc = base / "enc"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crypt.encrypt_model(plain, enc, f"file://{kek}", chunk_size=CHUNK)
    keys = make_sign_keys(base, "release")
    sign(enc, enc / "model.sig", keys)
    expected = st_load_file(str(plain / "model.safetensors"))
    return {"plain": plain, "enc": enc, "kek": kek, "keys": keys, "expected": expected}


@pytest.fixture(autouse=True)
def _allow_key(monkeypatch: pytest.MonkeyPatch, release: dict[str, Any]) -> None:
    monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", f"file://{release['kek']}")


def _same(got: dict[str, Any], expected: dict[str, Any]) -> None:
    assert sorted(got) == sorted(expected)
    for k, want in expected.items():
        have = got[k]
        assert have.dtype == want.dtype and have.shape == want.shape, k
        assert torch.equal(_bytes(have), _bytes(want)), k


def _bytes(t: Any) -> Any:
    return t.contiguous().reshape(-1).view(torch.uint8)


def test_load_file_signed_encrypted(release: dict[str, Any]) -> None:
    got = loader.load_file(release["enc"], policy=release["keys"].policy())
    _same(got, release["expected"])


def test_open_model_subsets(release: dict[str, Any]) -> None:
    with loader.open_model(release["enc"], "cpu", policy=release["keys"].policy()) as h:
        names = sorted(release["expected"])
        for part in (names[::3], names[1::3], names[2::3]):
            _same(h.load(part), {k: release["expected"][k] for k in part})


def test_unverified_plain_load(release: dict[str, Any]) -> None:
    got = loader.load_file(release["plain"] / "model.safetensors", policy=UnsafeNoVerification())
    _same(got, release["expected"])


def test_decrypt_is_byte_for_byte(release: dict[str, Any], tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crypt.decrypt_model(release["enc"], tmp_path / "dec", data_key=f"file://{release['kek']}")
    dec = tmp_path / "dec" / "model.safetensors"
    assert dec.read_bytes() == (release["plain"] / "model.safetensors").read_bytes()
    _same(st_load_file(str(dec)), release["expected"])


def _raw_st(tmp_path: Path, dtype: str, shape: list[int], nbytes: int) -> Path:
    import json
    import struct

    head = json.dumps({"t": {"dtype": dtype, "shape": shape, "data_offsets": [0, nbytes]}}).encode()
    p = tmp_path / f"{dtype}.safetensors"
    p.write_bytes(struct.pack("<Q", len(head)) + head + os.urandom(nbytes))
    return p


@pytest.mark.parametrize("dtype", ["F6_E2M3", "F6_E3M2"])
def test_a_type_torch_lacks_is_a_clear_format_error(tmp_path: Path, dtype: str) -> None:
    p = _raw_st(tmp_path, dtype, [4], 3)  # 4 x 6 bits
    with pytest.raises(FormatError, match=f"dtype {dtype}, which this torch cannot represent"):
        loader.load_file(p, policy=UnsafeNoVerification())


def test_f4_with_an_odd_last_dimension_has_no_torch_form(tmp_path: Path) -> None:
    """[2, 3] F4 is 3 bytes (valid safetensors) but float4_e2m1fn_x2 needs pairs per row:
    refused as safetensors' torch loader refuses it."""
    p = _raw_st(tmp_path, "F4", [2, 3], 3)
    with pytest.raises(FormatError, match=r"F4 tensor of shape \[2, 3\] has no torch form"):
        loader.load_file(p, policy=UnsafeNoVerification())
    from safetensors import SafetensorError

    with pytest.raises(SafetensorError, match="divisible by 2"):
        st_load_file(str(p))
