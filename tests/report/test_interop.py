"""Reports on releases signed by model_signing itself (the reference): a Sigstore keyless
bundle shows the proven identity and its transparency-log entry (offline, with the
trusted root shipped with sigstore)."""

from __future__ import annotations

import json

import pytest

from tests.support.signing import INTEROP
from weightguard.bom import build_bom
from weightguard.policy import SigstoreIdentity
from weightguard.report import build_report

pytestmark = pytest.mark.skipif(not INTEROP.is_dir(), reason="../shared/interop not present")

V = INTEROP / "model-signing-v1.1.0" / "v1.1.0-sigstore"
IDENTITY = ("stefanb@us.ibm.com", "https://sigstore.verify.ibm.com/oauth2")


def test_sigstore_identity_and_tlog_entry() -> None:
    ev = build_report(V, SigstoreIdentity(*IDENTITY))
    p = ev.provenance
    assert p.verdict == "PASS" and p.kind == "sigstore"
    (proof,) = p.proofs
    assert proof.signer == f"{IDENTITY[0]} (issuer {IDENTITY[1]})"
    assert proof.time_source == "transparency-log"
    (entry,) = proof.tlog
    bundle = json.loads((V / "model.sig").read_text())
    (want,) = bundle["verificationMaterial"]["tlogEntries"]
    assert entry["log_index"] == want["logIndex"]
    assert entry["log_id"] == want["logId"]["keyId"]
    assert p.signed_at == entry["integrated_time"]
    assert ("ignore-me", "left out by the signer (the signature's ignore_paths)") in p.uncovered
    assert ev.protection.plain_weights == [] and ev.protection.encrypted == []
    bom = json.loads(build_bom(V, SigstoreIdentity(*IDENTITY)))
    props = {x["name"]: x["value"] for x in bom["metadata"]["component"]["properties"]}
    assert props["weightguard:signature:tlog_log_index"] == str(want["logIndex"])
    assert props["weightguard:encryption"] == "none"
