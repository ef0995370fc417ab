"""Each rule has one home: it is defined there only, and others import it from there.

Cheap checks on the code's own AST: a rule's function is defined in exactly one module
(no copy under the same name elsewhere), and the proofs behind verification are
reached only through its front, ``weightguard.verifying``.
"""

from __future__ import annotations

import ast
from pathlib import Path

from tests.arch.test_layers import ROOT, _module_name

# function name -> the module that is its one home
RULE_HOMES = {
    # the bundle codec
    "parse_bundle": "weightguard._internal.signing.oms",
    "parse_statement": "weightguard._internal.signing.oms",
    "encode_bundle": "weightguard._internal.signing.oms",
    "pae": "weightguard._internal.signing.oms",
    "key_hint": "weightguard._internal.signing.oms",
    "validate_resource_name": "weightguard._internal.signing.oms",
    # EC key facts, signing and verifying side
    "key_fingerprint": "weightguard._internal.signing.signers.base",
    "ec_hash": "weightguard._internal.signing.signers.base",
    "curve_label": "weightguard._internal.signing.signers.base",
    # each signing method's proof, beside its signer
    "prove_key": "weightguard._internal.signing.signers.ec_key",
    "prove_chain": "weightguard._internal.signing.signers.certificate",
    "prove_sigstore": "weightguard._internal.signing.signers.sigstore",
    "vault_public_keys": "weightguard._internal.signing.signers.vault_transit",
    "verify_path": "weightguard._internal.signing.x509path",
    "may_sign_code": "weightguard._internal.signing.x509path",
    # verification's front: the order of steps 1 to 8, co-signatures, signature reads
    "verify_bundle": "weightguard.verifying",
    "verify_signature": "weightguard.verifying",
    "cosignature_path": "weightguard.verifying",
    "read_signature": "weightguard.verifying",
    # listing and coverage rules
    "match_prefix": "weightguard._internal.signing.listing",
    "signs_git_paths": "weightguard._internal.signing.listing",
    # names and URIs
    "safe_relative_name": "weightguard._internal.foundation.names",
    "parse_vault_uri": "weightguard._internal.foundation.vault",
    # S3: the one URI parser and client factory (load, push, audit)
    "parse_s3_uri": "weightguard._internal.foundation.s3",
    "read_client": "weightguard._internal.foundation.s3",
    "upload_client": "weightguard._internal.foundation.s3",
    "audit_client": "weightguard._internal.foundation.s3",
    # the default signature location
    "signature_name": "weightguard._internal.signing.location",
    "default_signature": "weightguard._internal.signing.location",
    # the key rule and the one unwrap sequence (loader, side files, decrypt/inspect/rewrap)
    "choose_key_uri": "weightguard._internal.keys.providers",
    "unwrap_groups": "weightguard._internal.keys.unwrap",
    # which files are weights
    "is_weight_file": "weightguard._internal.format.model_dir",
    "is_signed_weight_name": "weightguard._internal.format.model_dir",
    "is_weight_format": "weightguard._internal.format.model_dir",
    "top_level_weights": "weightguard._internal.format.model_dir",
}
# Called only by verification's front (and by the signers' own modules, e.g. the
# chain proof runs the key proof on the leaf's key).
PROVERS = {"prove_key", "prove_chain", "prove_sigstore"}
FRONT = "weightguard.verifying"
SIGNERS = "weightguard._internal.signing.signers."


def _definitions() -> dict[str, set[str]]:
    """function name -> modules defining it (at any depth, methods included)."""
    out: dict[str, set[str]] = {}
    for path in _files():
        mod = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                out.setdefault(node.name, set()).add(mod)
    return out


def _files() -> list[Path]:
    return list((ROOT / "weightguard").rglob("*.py")) + list(
        (ROOT / "cli" / "weightguard_cli").rglob("*.py")
    )


def test_each_rule_is_defined_once_in_its_home() -> None:
    defined = _definitions()
    wrong = {
        name: sorted(defined.get(name, set()))
        for name, home in RULE_HOMES.items()
        if defined.get(name, set()) != {home}
    }
    assert wrong == {}, "a rule defined elsewhere too (or moved): import it from its home"


def test_only_the_front_runs_the_proofs() -> None:
    """Verification has one front: nothing else proves a signature on its own."""
    callers: set[str] = set()
    for path in _files():
        mod = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                f = node.func
                name = f.id if isinstance(f, ast.Name) else getattr(f, "attr", "")
                if name in PROVERS:
                    callers.add(mod)
    assert FRONT in callers
    assert sorted(m for m in callers if m != FRONT and not m.startswith(SIGNERS)) == []
