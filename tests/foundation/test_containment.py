"""The containment rule (foundation/names.py): real paths, every level."""

from __future__ import annotations

import os
from pathlib import Path

from weightguard._internal.foundation.names import real_inside, unlinked_below


def test_real_inside_follows_every_link(tmp_path: Path) -> None:
    root = tmp_path / "model"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "f").write_text("x")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    os.symlink("sub/f", root / "inner-link")
    os.symlink(outside / "secret", root / "outer-link")
    os.symlink(outside, root / "linked-dir")
    os.symlink("/", root / "to-root")
    assert real_inside(root / "sub" / "f", (root,)) == (root / "sub" / "f").resolve()
    assert real_inside(root / "inner-link", (root,)) == (root / "sub" / "f").resolve()
    assert real_inside(root / "outer-link", (root,)) is None
    assert real_inside(root / "linked-dir" / "secret", (root,)) is None
    assert real_inside(root / "to-root" / str(outside)[1:] / "secret", (root,)) is None
    assert real_inside(root / "outer-link", (root, outside)) == (outside / "secret").resolve()
    # a prefix of the name is not containment: model-evil is not inside model
    evil = tmp_path / "model-evil"
    evil.mkdir()
    os.symlink(evil, root / "sibling")
    assert real_inside(root / "sibling", (root,)) is None
    # a linked root is resolved too: what counts is where it really is
    os.symlink(root, tmp_path / "current")
    assert real_inside(tmp_path / "current" / "inner-link", (tmp_path / "current",)) is not None


def test_unlinked_below(tmp_path: Path) -> None:
    cache = tmp_path / "hub"
    (cache / "repo" / "blobs").mkdir(parents=True)
    assert unlinked_below(cache, cache / "repo" / "blobs")
    assert unlinked_below(cache, cache / "repo" / "not-yet" / "x")  # missing: no link
    os.symlink("/", cache / "repo" / "linked")
    assert not unlinked_below(cache, cache / "repo" / "linked")
    assert not unlinked_below(cache, cache / "repo" / "linked" / "etc")
    assert not unlinked_below(cache, cache / ".." / "elsewhere")
    os.symlink(cache, tmp_path / "hub-link")  # the root itself may be a link
    assert unlinked_below(tmp_path / "hub-link", tmp_path / "hub-link" / "repo" / "blobs")
    assert unlinked_below(cache, cache)
