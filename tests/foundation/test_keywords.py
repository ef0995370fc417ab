"""Renamed Python keywords (issue 20, item 4): each public keyword is spelled as its
concept's CLI option; the keyword of the previous release still works, with a
FutureWarning, until the next one; the docs list every rename."""
# ruff: noqa: F811  (pytest fixtures imported from tests.support.load)

from __future__ import annotations

import importlib
import inspect
import warnings
from pathlib import Path
from typing import Any

import pytest

from tests.support.load import file_key  # noqa: F401 - fixture
from weightguard._internal.foundation.keywords import renamed_keywords
from weightguard.errors import ConfigError
from weightguard.vocabulary import RENAMED_KEYWORDS, TERMS

ROOT = Path(__file__).resolve().parents[2]


def _resolve(spec: str) -> Any:
    module, _, path = spec.partition(":")
    obj: Any = importlib.import_module(module)
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def test_the_helper_moves_the_old_keyword_and_warns() -> None:
    @renamed_keywords(old="new")
    def f(*, new: int = 0) -> int:
        return new

    with pytest.warns(FutureWarning, match=r"f\(old=\.\.\.\) is deprecated: use new=") as rec:
        assert f(old=3) == 3
    assert rec[0].filename == __file__  # the warning points at the caller
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert f(new=4) == 4  # the new keyword: no warning
    with pytest.raises(TypeError, match=r"got old= and new=: the same argument"):
        f(old=1, new=2)
    assert list(inspect.signature(f).parameters) == ["new"]


@pytest.mark.parametrize("func,old,new", RENAMED_KEYWORDS, ids=lambda x: str(x))
def test_each_rename_is_applied_to_the_function(func: str, old: str, new: str) -> None:
    """The function takes the new keyword and maps the old one (the table in docs/cli.md
    is the decorators' list)."""
    obj = _resolve(func)
    params = inspect.signature(obj).parameters
    takes_options = any(p.kind is p.VAR_KEYWORD for p in params.values())  # load_model
    assert new in params or takes_options
    assert old not in params
    assert getattr(obj, "__renamed_keywords__", {}).get(old) == new


@pytest.mark.parametrize("func,old,new", RENAMED_KEYWORDS, ids=lambda x: str(x))
def test_each_function_recognises_its_old_keyword(func: str, old: str, new: str) -> None:
    """Calling the real function with the old and the new keyword is refused by the
    rename before the function runs: the old keyword is taken as the new one's."""
    target = func.removesuffix(".__init__")  # a class: its constructor
    with pytest.raises(TypeError, match=f"got {old}= and {new}=: the same argument"):
        _resolve(target)(**{old: object(), new: object()})


def test_every_decorated_function_is_listed() -> None:
    listed = {(f, o, n) for f, o, n in RENAMED_KEYWORDS}
    found = set()
    for func in {f for f, _, _ in RENAMED_KEYWORDS}:
        for old, new in getattr(_resolve(func), "__renamed_keywords__", {}).items():
            found.add((func, old, new))
    assert found == listed


def test_old_keywords_of_real_functions_still_work(tmp_path: Path) -> None:
    """A call with the previous release's keyword does what it did, and warns."""
    from tests.support.load import make_sign_keys
    from weightguard.policy import AnyOf, PublicKey, UnsafeNoVerification, trust_policy

    keys = make_sign_keys(tmp_path, "release")
    with pytest.warns(FutureWarning, match=r"trust_policy\(public_keys=\.\.\.\)"):
        assert isinstance(trust_policy(public_keys=[keys.public]), PublicKey)
    with pytest.warns(FutureWarning, match=r"unsafe=\.\.\.\) is deprecated"):
        assert isinstance(trust_policy(unsafe=True), UnsafeNoVerification)
    with pytest.raises(ConfigError, match="excludes every trust anchor"):
        trust_policy(trust_key=[keys.public], unsafe_no_verification=True)
    both = trust_policy(trust_key=[keys.public, keys.public])
    assert isinstance(both, AnyOf)


def test_old_loader_keywords_still_load(tmp_path: Path, file_key: str) -> None:
    from tests.support.load import (
        MODEL_LAYOUT,
        assert_same,
        encrypt,
        make_sign_keys,
        sign,
        write_st,
    )
    from weightguard.loader import load_file

    keys = make_sign_keys(tmp_path, "release")
    want = write_st(tmp_path / "m.safetensors", MODEL_LAYOUT)
    enc = tmp_path / "e.safetensors"
    encrypt(tmp_path / "m.safetensors", enc, file_key)
    sign(enc, tmp_path / "e.safetensors.sig", keys)
    assert_same(load_file(enc, policy=keys.policy(), data_key=file_key), want)
    with pytest.warns(FutureWarning, match=r"load_file\(key=\.\.\.\) is deprecated: use data_key="):
        assert_same(load_file(enc, policy=keys.policy(), key=file_key), want)
    with pytest.warns(FutureWarning, match=r"allowed_keys=\.\.\.\) is deprecated: use allow_key="):
        assert_same(load_file(enc, policy=keys.policy(), allowed_keys=[file_key]), want)


def test_python_keywords_are_the_options_spelling() -> None:
    """Each keyword of the table is its option without the dashes (``-`` -> ``_``), or
    the table says why not."""
    wrong = []
    for t in TERMS:
        spelled = t.option.lstrip("-").replace("-", "_")
        for spec in t.python:
            keyword = spec.rsplit("(", 1)[1].rstrip(")")
            if keyword != spelled and not t.differs:
                wrong.append(f"{t.option}: {spec}")
    assert wrong == []


def test_the_repository_uses_no_old_keyword() -> None:
    """Nothing in the repository calls a renamed function with its old keyword (the suite
    runs with warnings shown: a FutureWarning from our own code is a bug)."""
    import ast

    renamed: dict[str, dict[str, str]] = {}
    for func, old, new in RENAMED_KEYWORDS:
        renamed.setdefault(func.rsplit(".", 1)[-1].split(":")[-1], {})[old] = new
    bad = []
    for top in ("weightguard", "cli", "tests", "examples", "benchmarks"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path == Path(__file__):
                continue
            try:
                tree = ast.parse(path.read_text())
            except SyntaxError:
                continue
            for n in ast.walk(tree):
                if not isinstance(n, ast.Call):
                    continue
                f = n.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                olds = renamed.get(str(name), {})
                bad += [
                    f"{path.relative_to(ROOT)}:{n.lineno} {name}({k.arg}=)"
                    for k in n.keywords
                    if k.arg in olds
                ]
    assert bad == []


def test_the_old_allow_key_variable_is_still_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """``WEIGHTGUARD_ALLOWED_KEYS`` (previous release) is read beside
    ``WEIGHTGUARD_ALLOW_KEY``, with a FutureWarning; the integrations' ``allowed_keys``
    setting too."""
    from weightguard._internal.keys.providers import allowed_key_patterns
    from weightguard.integrations import _settings

    monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", "vault://transit/a-*")
    monkeypatch.delenv("WEIGHTGUARD_ALLOWED_KEYS", raising=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert allowed_key_patterns() == ("vault://transit/a-*",)
    monkeypatch.setenv("WEIGHTGUARD_ALLOWED_KEYS", "vault://transit/b-*")
    with pytest.warns(FutureWarning, match="WEIGHTGUARD_ALLOWED_KEYS is deprecated: use WEI"):
        assert allowed_key_patterns() == ("vault://transit/a-*", "vault://transit/b-*")
    with pytest.warns(FutureWarning, match="'allowed_keys' is deprecated: use 'allow_key'"):
        assert _settings.lookup({"allowed_keys": ["x"]}, {}, "allow_key") == ["x"]
