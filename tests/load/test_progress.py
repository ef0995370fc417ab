"""``load_file(progress=)``: the bytes read and checked, of a total known before the
first read, so ``weightguard load`` shows a byte progress bar, not only a spinner."""
# ruff: noqa: F811  (pytest fixtures imported from tests.support.load)

from __future__ import annotations

import threading
from pathlib import Path

from tests.support.load import (
    MODEL_LAYOUT,
    assert_same,
    encrypt,
    file_key,  # noqa: F401 - fixture
    sign,
    sign_keys,  # noqa: F401 - fixture
    write_st,
)
from weightguard import loader


def test_progress_goes_from_zero_to_every_byte_read(tmp_path: Path, file_key, sign_keys) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "model.safetensors"
    expected = write_st(src, MODEL_LAYOUT)
    enc = tmp_path / "enc" / "model.safetensors"
    enc.parent.mkdir()
    encrypt(src, enc, file_key, chunk_size=4096)
    sign(enc, enc.with_name("model.safetensors.sig"), sign_keys)
    calls: list[tuple[int, int]] = []
    lock = threading.Lock()

    def report(done: int, total: int) -> None:
        with lock:
            calls.append((done, total))

    got = loader.load_file(
        enc, policy=sign_keys.policy(), data_key=file_key, workers=3, progress=report
    )
    assert_same(got, expected)
    totals = {t for _, t in calls}
    assert len(totals) == 1
    (total,) = totals
    # every record of the file but its header record: the data as stored (tags included)
    assert 0 < total < enc.stat().st_size
    assert calls[0] == (0, total) and calls[-1] == (total, total)
    dones = [d for d, _ in calls]
    assert dones == sorted(dones) and len(calls) > 3
