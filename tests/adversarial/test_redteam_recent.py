"""Red-team regressions for the changes of 2026-12-05 (read-ahead cache, vocabulary)."""
# ruff: noqa: F811, SIM118  (fixtures from tests.support.load; SafeOpen is no dict)

from __future__ import annotations

import gc
import threading
import weakref
from pathlib import Path

import pytest
import torch

from tests.support.lazy import release_file
from tests.support.load import (
    file_key,  # noqa: F401 - fixture
    sign_keys,  # noqa: F401 - fixture
)
from weightguard import safe_open

CHUNK = 4096


@pytest.fixture(autouse=True)
def _allow_file_key(monkeypatch: pytest.MonkeyPatch, file_key: str) -> None:
    monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", file_key)


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {f"layers.{i}.w": torch.randn(37, 29, generator=g) for i in range(16)}


def test_a_handle_dropped_without_close_leaves_no_plaintext(
    tmp_path: Path, file_key: str, sign_keys
) -> None:
    """safe_open(...) used without ``with``/close() (safetensors' idiom allows it): the
    verified records its reader cached or kept for reuse are zeroed when the handle is
    garbage-collected, not left in freed memory."""
    art, _ = release_file(
        tmp_path / "rel",
        "m.safetensors",
        _tensors(),
        key=file_key,
        keys=sign_keys,
        chunk_size=CHUNK,
    )
    f = safe_open(art, policy=sign_keys.policy(), cache_bytes=6 * CHUNK)
    for k in f.keys():
        f.get_tensor(k)
    reader = f._reader
    for fut, _, _ in list(reader._ahead.values()):
        fut.result()
    kept = [*reader._cache.values(), *reader._plain_free]
    assert kept and any(b.any() for b in kept)  # verified plaintext held by the handle
    gone = weakref.ref(reader)
    del f, reader
    gc.collect()
    assert gone() is None
    assert all(not b.any() for b in kept)


def test_speaking_in_two_threads_does_not_leave_the_cli_voice_behind() -> None:
    """A server thread speaking("python") while another (a CLI entry run in-process)
    speaks "cli": once both are done, hints read as a Python caller's again (the
    program's voice must not stay "cli" because the two exits came in another order)."""
    from weightguard.errors import ConfigError
    from weightguard.vocabulary import speaking

    err = ConfigError("no signature", hint="pass --signature PATH")
    assert str(err) == "no signature (pass signature=)"
    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

    def a() -> None:
        with speaking("cli"):
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def b() -> None:
        a_in.wait(5)
        with speaking("python"):
            b_in.set()
            a_out.wait(5)

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    seen: list[str] = []
    t = threading.Thread(target=lambda: seen.append(str(err)))  # a fresh thread's context
    t.start()
    t.join(10)
    assert seen == ["no signature (pass signature=)"]
    assert str(err) == "no signature (pass signature=)"
