"""A hint names what its reader can pass (issue 20, item 4): a Python caller of
``load_file`` / ``fetch_model`` reads the keyword (``signature=``, ``allow_disk=True``),
the command line reads its option (``--signature``, ``--allow-disk``), from the one
hint the library wrote (weightguard.vocabulary)."""
# ruff: noqa: F811  (pytest fixtures imported from tests.support.load)

from __future__ import annotations

from pathlib import Path

import pytest
from weightguard_cli.main import main

from tests.support.load import (
    MODEL_LAYOUT,
    sign_keys,  # noqa: F401 - fixture
    write_st,
)
from weightguard.errors import UnsafeOptionRequired, VerificationError
from weightguard.loader import load_file
from weightguard.transfer import fetch_model, is_memory_fs
from weightguard.vocabulary import speaking


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The real CLI entry point in-process: exit code and stderr."""
    capsys.readouterr()
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().err


def test_unsigned_load_names_the_keyword_in_python_and_the_option_on_the_cli(
    tmp_path: Path, sign_keys, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    model = tmp_path / "m.safetensors"
    write_st(model, MODEL_LAYOUT)  # no m.safetensors.sig beside it
    with pytest.raises(VerificationError, match="no signature found") as exc:
        load_file(model, policy=sign_keys.policy())
    told = str(exc.value)
    assert "give the bundle's path with signature=" in told, told
    assert "policy=UnsafeNoVerification()" in told and "--" not in told, told
    assert "--signature" in exc.value.hint  # what the library wrote, once
    code, err = _cli(["load", str(model), "--trust-key", str(sign_keys.public)], capsys)
    assert code == 1 and "no signature found" in err
    assert "with --signature, or load it unverified with --unsafe-no-verification" in err, err
    assert "signature=" not in err
    # the command line's words stayed with the command line
    with pytest.raises(VerificationError) as again:
        load_file(model, policy=sign_keys.policy())
    assert "--signature" not in str(again.value)


def test_fetch_to_disk_names_allow_disk_as_the_reader_spells_it(
    tmp_path: Path, sign_keys, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    if is_memory_fs(tmp_path):
        pytest.skip("tmp_path is itself on tmpfs")
    src = tmp_path / "m.safetensors"
    write_st(src, MODEL_LAYOUT)
    with pytest.raises(UnsafeOptionRequired, match="not on tmpfs") as exc:
        fetch_model(src, tmp_path / "out", policy=sign_keys.policy())
    assert str(exc.value).endswith("or pass allow_disk=True)"), str(exc.value)
    with speaking("cli"):
        assert str(exc.value).endswith("or pass --allow-disk)")
    argv = ["fetch", str(src), "--output", str(tmp_path / "out2")]
    code, err = _cli([*argv, "--trust-key", str(sign_keys.public)], capsys)
    assert code == 1 and "not on tmpfs" in err and "pass --allow-disk" in err, err
    assert "allow_disk=" not in err


def test_the_programs_voice_reaches_its_worker_threads() -> None:
    """An error worded in a loader thread (a fresh context) reads like the program's:
    the command line's options inside ``speaking("cli")``, the keywords after it."""
    import threading

    from weightguard.errors import DestinationError

    def worded() -> str:
        out: list[str] = []
        t = threading.Thread(
            target=lambda: out.append(str(DestinationError("x", hint="or pass --replace")))
        )
        t.start()
        t.join()
        return out[0]

    with speaking("cli"):
        assert worded() == "x (or pass --replace)"
    assert worded() == "x (or pass replace=True)"
    with pytest.raises(ValueError, match="voice must be one of"), speaking("kserve"):
        pass
