"""Red-team review, wave 3 (commits of 23:39-00:12 UTC).

* The safe_open loop's direct decryption (12eeff8, feab4b5): a reader closed by another
  thread between a loop's last record and the return of its tensor fails closed with
  the reader's typed error (close dropped and zeroed the output), never an untyped
  ``KeyError`` from the reader's bookkeeping.
* The artifact header's canonical fast way (22653ee): nesting measured before the C
  parser runs, as on the bounded reader's way."""
# ruff: noqa: F811  (fixtures imported from tests.support.load)

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support.lazy import release_file
from tests.support.load import (
    file_key,  # noqa: F401 - fixture
    memory_audit,
    sign_keys,  # noqa: F401 - fixture
)
from weightguard import safe_open
from weightguard._internal.load.ranges import RangeReader
from weightguard.errors import ConfigError


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return {f"l{i:02d}.w": torch.randn(7, 97, generator=g) for i in range(12)}  # 2716 B


def test_close_landing_before_a_loop_tensor_is_returned_is_a_typed_refusal(
    tmp_path: Path, file_key: str, sign_keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", file_key)
    ts = _tensors()
    art, _ = release_file(
        tmp_path / "rel", "m.safetensors", ts, key=file_key, keys=sign_keys, chunk_size=4096
    )
    real = RangeReader._complete
    closed: list[Any] = []

    def complete_then_close(self: RangeReader, f: Any, out: Any, *args: Any, **kw: Any) -> None:
        real(self, f, out, *args, **kw)
        self.close()  # another thread's close(), between the last record and the return
        closed.append(out)

    monkeypatch.setattr(RangeReader, "_complete", complete_then_close)
    audit, sink = memory_audit()
    got: dict[str, torch.Tensor] = {}
    with (
        safe_open(art, policy=sign_keys.policy(), audit=audit, workers=1) as f,
        pytest.raises(ConfigError, match="the reader is closed"),
    ):
        for k in f.keys():  # noqa: SIM118 - keys() order: the loop the reader recognises
            got[k] = f.get_tensor(k)
    assert closed and not closed[0].t.any()  # the dropped output was zeroed, not returned
    assert all(t.data_ptr() != closed[0].ptr for t in got.values())
    denied = [r for r in sink.records if r.get("outcome") == "denied"]
    assert denied and denied[-1]["event"] == "load.denied"
    assert denied[-1]["reason"].startswith("ConfigError: the reader is closed")


# An artifact header is read before any key or MAC check: untrusted bytes.  The bounded
# reader measures the nesting before the recursive C parser runs (boundedjson's rule: no
# input reaches it deeper than max_depth); the canonical fast way (22653ee) must too: in a
# process that raised the recursion limit (some applications do), a header of nested
# brackets took the C stack down (SIGSEGV) instead of a FormatError.
_DEEP = """
import sys, threading
sys.setrecursionlimit(10**7)
threading.stack_size(8 * 1024 * 1024)
from weightguard._internal.format import layout
from weightguard.errors import FormatError
n = 1_000_000
def read():
    try:
        layout._header_from_raw(b"[" * n + b"]" * n, bytes(32), path="deep")
    except FormatError as exc:
        print("refused:", exc)
t = threading.Thread(target=read)
t.start()
t.join()
"""


def test_a_deeply_nested_artifact_header_is_refused_not_parsed() -> None:
    r = subprocess.run([sys.executable, "-c", _DEEP], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.returncode
    assert "refused: deep: invalid artifact header: JSON nested 1000000 levels deep" in r.stdout
