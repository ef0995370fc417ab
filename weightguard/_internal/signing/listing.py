"""Listing rules: which files of a model a signature must cover, one home for sign and verify.

model_signing's rules, with one deliberate difference (weight files)::

    - A model is a file, or every regular file below a directory (names are relative
      POSIX paths; ``:`` is an ordinary character, see foundation.names).
    - Git paths (``.git/``, ``.gitattributes``, ``.github/``, ``.gitignore``) are left
      out when signing, as model_signing does by default, and are not looked at when
      verifying -- unless the signature covers some of them (model_signing
      ``sign --no-ignore-git-paths``): then every git path present is compared like any
      other file (signed: checked; unsigned: an extra file), as
      ``model_signing verify --no-ignore-git-paths`` does.
    - The signature's ``ignore_paths`` (and the caller's ``allow_unsigned`` patterns)
      allow unsigned files -- but never a weight file (``*.safetensors``, an index
      JSON, a weightguard artifact).  model_signing accepts a signature whose ignore
      list hides weight files; weightguard refuses it (docs/signing.md, "Stricter than
      model_signing").
    - Symbolic links are refused unless allowed; devices, sockets and FIFOs always.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from weightguard._internal.format.model_dir import is_signed_weight_name as is_weight_name
from weightguard.errors import CoverageError, FormatError, SourceError, VerificationError

__all__ = [
    "GIT_PATHS",
    "Coverage",
    "Entry",
    "classify",
    "is_weight",
    "is_weight_name",
    "listed_entries",
    "match_pattern",
    "match_prefix",
    "signs_git_paths",
    "walk",
]

GIT_PATHS = (".git", ".gitattributes", ".github", ".gitignore")


# NamedTuple, not @dataclass: immutable and compared by value all the same, and ~10x
# cheaper to define on the loader's import path (issue 25)
class Entry(NamedTuple):
    name: str
    path: str
    size: int


def match_prefix(name: str, prefixes: Iterable[str]) -> bool:
    for p in prefixes:
        p = p.strip("/")
        if p and (name == p or name.startswith(p + "/")):
            return True
    return False


def match_pattern(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) or match_prefix(name, [pat]) for pat in patterns)


def _is_artifact_file(path: str) -> bool:
    from weightguard._internal.format.layout import MAGIC_PROBE, is_artifact

    try:
        with open(path, "rb") as f:
            first = f.read(MAGIC_PROBE)
    except OSError:
        return False
    return is_artifact(first)


def is_weight(name: str, path: str) -> bool:
    """Weights a signature must cover: by name (model_dir's rule), else by contents."""
    if is_weight_name(name if name != "." else Path(path).name):
        return True
    return _is_artifact_file(path)


def signs_git_paths(signed_names: Iterable[str]) -> bool:
    """Whether a signature covers git paths (model_signing ``--no-ignore-git-paths``)."""
    return any(match_prefix(n, GIT_PATHS) for n in signed_names)


def walk(
    root: Path, *, skip_dirs: Sequence[str], allow_symlinks: bool, exclude: str | None
) -> list[Entry]:
    """All regular files under ``root`` (names relative, POSIX), refusing odd entries."""
    from weightguard._internal.signing.oms import validate_resource_name

    out: list[Entry] = []
    stack = [("", str(root))]
    while stack:
        rel, d = stack.pop()
        try:
            it = list(os.scandir(d))
        except OSError as exc:
            raise SourceError(f"cannot list {d}: {exc.strerror}") from exc
        for e in it:
            name = f"{rel}{e.name}"
            if exclude is not None and name == exclude:
                continue
            if match_prefix(name, skip_dirs):
                continue
            if "\\" in e.name:
                raise FormatError(
                    f"{name}: file name contains a backslash, which OMS cannot represent",
                    hint="rename the file",
                )
            validate_resource_name(name, name, single_file_ok=False)
            if e.is_symlink():
                if not allow_symlinks:
                    raise VerificationError(
                        f"{name} is a symbolic link; refused",
                        hint="replace it by the file, or allow symlinks explicitly",
                    )
                try:
                    st = os.stat(e.path)
                except OSError as exc:
                    raise SourceError(f"{name}: broken symbolic link") from exc
                if stat.S_ISDIR(st.st_mode):
                    raise VerificationError(f"{name} is a symbolic link to a directory; refused")
            else:
                st = e.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                stack.append((name + "/", e.path))
            elif stat.S_ISREG(st.st_mode):
                out.append(Entry(name, e.path, st.st_size))
            else:
                raise VerificationError(
                    f"{name} is not a regular file or directory (device, socket or FIFO)"
                )
    return out


def listed_entries(
    listing: Mapping[str, int], *, skip_git: bool = True
) -> tuple[bool, list[Entry]]:
    """(single file?, entries) of a remote listing; names validated, sizes bounded."""
    from weightguard._internal.signing.oms import validate_resource_name

    single = "." in listing
    if single and len(listing) != 1:
        raise FormatError("a listing with '.' (single-file model) must have no other names")
    out: list[Entry] = []
    for name, size in listing.items():
        if not single:
            if skip_git and match_prefix(name, GIT_PATHS):
                continue
            validate_resource_name(name, name, single_file_ok=False)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise FormatError(f"{name}: listed size {size!r} is not a byte count")
        out.append(Entry(name, "", size))
    return single, out


# NamedTuple, not @dataclass: immutable and compared by value all the same, and ~10x
# cheaper to define on the loader's import path (issue 25)
class Coverage(NamedTuple):
    present: dict[str, Entry]
    uncovered: tuple[str, ...]  # present, unsigned, allowed


def classify(
    present: Sequence[Entry],
    signed_names: set[str],
    *,
    ignore_paths: Iterable[str],
    allow_unsigned: Iterable[str],
    signature: str,
    root: str,
    empty_unsigned_ok: bool = False,
) -> Coverage:
    """Compare what is present with what is signed; refuse any difference.

    ``ignore_paths``: the signature's (git paths included unless the signature signs
    git paths); ``allow_unsigned``: the caller's glob patterns.  A weight file is never
    allowed unsigned.  ``empty_unsigned_ok``: a ``shards`` signature cannot list an
    empty file (it has no shard), so empty files other than weight files are allowed
    unsigned, as model_signing does.
    """
    from weightguard.errors import IntegrityError

    ignore = list(ignore_paths)
    allow = list(allow_unsigned)
    by_name = {e.name: e for e in present}
    uncovered: list[str] = []
    unsigned_weights: list[str] = []
    hidden_weights: list[str] = []
    extra: list[str] = []
    for e in present:
        if e.name in signed_names:
            continue
        weight = is_weight(e.name, e.path) if e.path else is_weight_name(e.name)
        if weight:
            if match_prefix(e.name, ignore):
                hidden_weights.append(e.name)
            else:
                unsigned_weights.append(e.name)
        elif (
            match_prefix(e.name, ignore)
            or match_pattern(e.name, allow)
            or (empty_unsigned_ok and e.size == 0)
        ):
            uncovered.append(e.name)
        else:
            extra.append(e.name)
    if hidden_weights:
        raise CoverageError(
            f"signature {signature} leaves weight files out through its ignore_paths: "
            + ", ".join(sorted(hidden_weights))
            + " (model_signing accepts such a signature; weightguard never loads or "
            "passes an unsigned weight file)",
            hint="re-sign the model without ignoring weight files",
        )
    if unsigned_weights:
        raise CoverageError(
            f"weight files not covered by signature {signature}: "
            + ", ".join(sorted(unsigned_weights)),
            hint="weight files must always be signed; re-sign the whole model",
        )
    if extra:
        raise CoverageError(
            f"files not covered by signature {signature}: " + ", ".join(sorted(extra)),
            # Every entry point can say this; one that can allow them (verify_bundle's
            # allow_unsigned, `weightguard verify --allow-unsigned`) adds how.
            hint="remove them, or re-sign the model so that it covers them",
        )
    missing = sorted(n for n in signed_names if n not in by_name)
    if missing:
        raise IntegrityError(
            f"signed files are missing from {root}: " + ", ".join(missing),
            hint="the model is incomplete; fetch it again",
        )
    return Coverage(by_name, tuple(sorted(uncovered)))
