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


def test_a_model_handle_dropped_without_close_wipes_its_keys(
    tmp_path: Path, file_key: str, sign_keys
) -> None:
    """open_model(...) / safe_open(...) never closed: the AEAD keys derived from the
    data key are zeroed when the handle is garbage-collected, not freed as they are."""
    from weightguard import open_model

    art, _ = release_file(
        tmp_path / "rel",
        "m.safetensors",
        _tensors(),
        key=file_key,
        keys=sign_keys,
        chunk_size=CHUNK,
    )
    for opener in ("open_model", "safe_open"):
        h = (
            open_model(art, "cpu", policy=sign_keys.policy())
            if opener == "open_model"
            else safe_open(art, policy=sign_keys.policy())
        )
        files = h._files
        keys = [f.cipher._aead_key for f in files]
        assert keys and all(any(k) for k in keys)
        h.get_tensor("layers.3.w") if opener == "safe_open" else h.load(["layers.3.w"])
        del h, files
        gc.collect()
        assert all(not any(k) for k in keys), opener


def test_a_whole_file_model_dropped_without_close_zeroes_its_kept_tensors(
    tmp_path: Path, sign_keys
) -> None:
    """A file signed by model_signing (whole-file digests) is loaded whole by safe_open
    and its verified tensors kept until close(): a handle never closed zeroes them when
    it is garbage-collected."""
    from tests.support.lazy import model_signing_sign

    d = tmp_path / "rel"
    release_file(d, "model.safetensors", _tensors(), key=None, keys=None)
    model_signing_sign(d, d / "model.sig", sign_keys)
    f = safe_open(d, policy=sign_keys.policy())
    f.get_tensor("layers.2.w")
    kept = [t for loaded in f._whole.values() for t in loaded.values()]
    assert kept and any(bool(t.any()) for t in kept)
    del f
    gc.collect()
    assert not any(bool(t.any()) for t in kept)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("chunks", [True, False])
def test_a_fifo_swapped_in_for_a_listed_file_is_refused_not_waited_on(
    tmp_path: Path, chunks: bool
) -> None:
    """A FIFO put in place of a listed file between the listing (which refuses FIFOs)
    and its hashing: the hasher opened it blocking and waited for a writer for ever (red
    team, DoS); now it is refused at once, when signing and verifying alike."""
    import os

    from weightguard._internal.signing.hashing import HashJob, hash_files
    from weightguard.errors import SourceError

    os.mkfifo(tmp_path / "empty.txt")
    job = HashJob("empty.txt", str(tmp_path / "empty.txt"), 0, 0, 1 << 20)
    with pytest.raises(SourceError, match=r"^empty\.txt: not a regular file"):
        hash_files([job], chunks=chunks)
