"""Interop vectors signed by released model_signing versions (see README.md)."""

from __future__ import annotations

from pathlib import Path

# generate.py's "git" layout: git cannot track a directory named .git, so the signed
# `.git/HEAD` is not in the repository and is written back into each copy a test makes.
GIT_HEAD = "ref: refs/heads/main\n"


def restore_untracked(case_dir: Path, model: Path) -> None:
    """Put back into ``model`` (a copy of ``case_dir/model``) what git could not store."""
    if case_dir.name == "key-git-paths":
        (model / ".git").mkdir(exist_ok=True)
        (model / ".git" / "HEAD").write_text(GIT_HEAD)
