"""Rules that live in literals have one home too: nobody else spells them out.

- only ``_internal/foundation/s3.py`` makes a boto3 S3 client (``.client("s3", ...)``);
- only ``_internal/signing/location.py`` spells the default signature's name
  (``"model.sig"``, ``".sig"``): every caller asks it where the signature lies;
- only ``_internal/format/model_dir.py`` spells the weight suffix (``".safetensors"``):
  every caller asks it which files are weights;
- only ``_internal/keys/unwrap.py`` asks a key provider to unwrap data keys: every
  reader of encrypted files goes through its one sequence (choose every key URI first,
  one round trip per provider).

Each exception names why it is not the rule repeated; the lists may only shrink.
"""

from __future__ import annotations

import ast

from tests.arch.test_homes import _files
from tests.arch.test_layers import _module_name

S3_HOME = "weightguard._internal.foundation.s3"
S3_CLIENT_EXCEPTIONS = {
    # doctor probes the environment it is handed (its own env mapping, one attempt, the
    # user's timeout) and reports; it loads nothing
    "weightguard.doctor",
}

SIGNATURE_HOME = "weightguard._internal.signing.location"
SIGNATURE_LITERALS = {"model.sig", ".sig"}
SIGNATURE_EXCEPTIONS = {
    # co-signature file names, <bundle>.d/<name>.sig: cosignature_path is their home
    "weightguard.verifying",
    # "is there any bundle in this directory?" for a hint, not where the default lies
    "weightguard_cli.cmd_load",
}

WEIGHT_HOME = "weightguard._internal.format.model_dir"
WEIGHT_LITERALS = {".safetensors"}
WEIGHT_EXCEPTIONS = {
    # strips the suffix to name the encryption context, decides nothing about weights
    "weightguard._internal.crypt.encrypt",
}


def _string_users(literals: set[str]) -> set[str]:
    users: set[str] = set()
    for path in _files():
        mod = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in literals:
                users.add(mod)
    return users


def _method_callers(method: str) -> set[str]:
    callers: set[str] = set()
    for path in _files():
        mod = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == method
            ):
                callers.add(mod)
    return callers


def _s3_client_makers() -> set[str]:
    makers: set[str] = set()
    for path in _files():
        mod = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "client"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and node.args[0].value == "s3"
            ):
                makers.add(mod)
    return makers


def test_one_s3_client_factory() -> None:
    assert _s3_client_makers() - S3_CLIENT_EXCEPTIONS == {S3_HOME}


def test_one_signature_location() -> None:
    assert _string_users(SIGNATURE_LITERALS) - SIGNATURE_EXCEPTIONS == {SIGNATURE_HOME}


def test_one_weight_file_rule() -> None:
    assert _string_users(WEIGHT_LITERALS) - WEIGHT_EXCEPTIONS == {WEIGHT_HOME}


def test_one_unwrap_sequence() -> None:
    assert _method_callers("unwrap_many") - {"weightguard._internal.keys.providers"} == {
        "weightguard._internal.keys.unwrap"
    }
