"""`weightguard load` on a terminal shows a byte progress bar (it showed only a spinner):
bytes done of the model's size, once the model is verified and its reads planned."""

from __future__ import annotations

import os
from pathlib import Path

from tests.cli.test_output import _run
from tests.support.format import build_safetensors
from weightguard import crypt


def test_load_shows_a_byte_bar_on_a_terminal_only(tmp_path: Path) -> None:
    crypt.create_key_file(tmp_path / "dev.key")
    (tmp_path / "m.safetensors").write_bytes(
        build_safetensors({"w": ("F32", [1 << 18], os.urandom(1 << 20))}, {})
    )
    key = f"file://{tmp_path / 'dev.key'}"
    crypt.encrypt_file(tmp_path / "m.safetensors", tmp_path / "m.enc", key)
    args = ["load", "m.enc", "--unsafe-no-verification", "--data-key", "file://dev.key"]
    rc, out, err = _run(args, tmp_path, tty=True)
    assert rc == 0, err
    assert "loading m.enc" in err and "━" in err  # rich's bar
    assert "/1.0 MB" in err or "/1.1 MB" in err  # bytes done of the total
    assert out.startswith("ok: 1 tensors")
    rc, out, err = _run(args, tmp_path, tty=False)
    assert rc == 0 and "loading" not in err and "━" not in err
    assert out.startswith("ok: 1 tensors")
