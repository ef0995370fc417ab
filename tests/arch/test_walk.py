"""The walk from ``load_file(source)`` to the bytes of a tensor enters no module twice
(issue 20's goal).

Every call made inside weightguard during a secure load is traced (main thread and the
loader's threads) and its call stack reduced to the weightguard modules it passes
through, consecutive frames of one module counted once.  A module that appears twice
on one stack was left and entered again: a call back up into a module already on the
walk (a callback, a file object a parser reads through, a sink calling back into the
chain that drives it).  Such ping-pong is what made verification hard to follow before
issue 20; the rule keeps each step of a load in one place.
"""

from __future__ import annotations

import collections
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

import tests.vectors.oms
from tests.support.load import (
    MODEL_LAYOUT,
    encrypt,
    make_sign_keys,
    sign,
    write_st,
)
from weightguard import load_file, open_model, safe_open
from weightguard._internal.keys.providers import create_key_file
from weightguard.audit import AuditLog
from weightguard.policy import PublicKey

OMS = Path(tests.vectors.oms.__file__).parent


def _stack(frame: FrameType | None) -> list[str]:
    mods: list[str] = []
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name.startswith("weightguard") and (not mods or mods[-1] != name):
            mods.append(name)
        frame = frame.f_back
    return mods[::-1]


def _walk(fn: Callable[[], Any]) -> collections.Counter[str]:
    """Each stack (outermost first) on which a weightguard module appears twice."""
    twice: collections.Counter[str] = collections.Counter()

    def profile(frame: FrameType, event: str, arg: object) -> None:
        if event != "call":
            return
        mods = _stack(frame)
        if len(set(mods)) != len(mods):
            where = f"{frame.f_code.co_qualname} <- {frame.f_back.f_code.co_qualname}"  # type: ignore[union-attr]
            twice[" -> ".join(mods) + f"  ({where})"] += 1

    threading.setprofile(profile)
    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    return twice


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any, str]:
    d = tmp_path_factory.mktemp("walk")
    create_key_file(d / "kek.hex")
    file_key = f"file://{d / 'kek.hex'}"
    write_st(d / "plain.safetensors", MODEL_LAYOUT)
    model = d / "model"
    model.mkdir()
    encrypt(d / "plain.safetensors", model / "model.safetensors", file_key, header_encrypted=True)
    keys = make_sign_keys(d, "release")
    sign(model, model / "model.sig", keys)
    return model, keys.policy(), file_key


@pytest.mark.parametrize(
    "entry", ["load_file", "open_model", "safe_open", "load_file of a model_signing model"]
)
def test_a_load_enters_no_module_twice(
    entry: str, release: tuple[Path, Any, str], tmp_path: Path
) -> None:
    model, policy, key = release
    audit = AuditLog.open(str(tmp_path / "access.log"))

    def load() -> None:
        if entry == "load_file":
            tensors = load_file(model, data_key=key, policy=policy, audit=audit)
        elif entry.endswith("model_signing model"):  # verified in the read that fills it
            case = OMS / "ms-1.1.1" / "key-files-sha256"
            oms = PublicKey.from_file(OMS / "keys" / "key-pub.pem")
            got = load_file(case / "model", signature=case / "model.sig", policy=oms, audit=audit)
            assert got
            return
        elif entry == "safe_open":
            with safe_open(model, data_key=key, policy=policy, audit=audit) as f:
                tensors = {n: f.get_tensor(n) for n in f.keys()}  # noqa: SIM118 - the safetensors API
        else:
            with open_model(model, data_key=key, policy=policy, audit=audit) as handle:
                tensors = handle.load()
        assert sorted(tensors) == sorted(n for n, _, _ in MODEL_LAYOUT)

    assert dict(_walk(load)) == {}
