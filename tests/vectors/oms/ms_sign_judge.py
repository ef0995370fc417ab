"""Run under a released model_signing's own Python: sign one case, record its verdicts.

    /tmp/ms-1.1.1/bin/python ms_sign_judge.py SPEC.json

(``"judge_only": true`` in SPEC: only judge an existing signature.)

SPEC: {"case_dir", "kind" (key|cert), "method" (files|shards), "hash" (sha256|blake2|
blake3), "shard_size", "ignore_git", "ignore_paths", "keys"}.  Writes
``<case_dir>/model.sig`` and prints a JSON object of verdicts: for the model as signed
and for each tamper of tamper.py, whether this model_signing's API verifies it
(``verifying.Config()`` guessing the hashing configuration from the signature, as
``model_signing.verify`` does; ``explicit`` also with the hashing configuration the
signer used, the way a caller verifies what the guess cannot rebuild).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import traceback
from pathlib import Path

import model_signing
from model_signing import hashing, signing, verifying

sys.path.insert(0, str(Path(__file__).parent))
from tamper import SINGLE_FILE_TAMPERS, TAMPERS


def hashing_config(spec: dict) -> hashing.Config:
    cfg = hashing.Config()
    if spec["method"] == "shards":
        cfg = cfg.use_shard_serialization(
            hashing_algorithm=spec["hash"], shard_size=spec["shard_size"]
        )
    else:
        cfg = cfg.use_file_serialization(hashing_algorithm=spec["hash"])
    return cfg.set_ignored_paths(
        paths=spec.get("ignore_paths", []), ignore_git_paths=spec.get("ignore_git", True)
    )


def verifier(spec: dict, anchor: str) -> verifying.Config:
    keys = Path(spec["keys"])
    if spec["kind"] == "key":
        return verifying.Config().use_elliptic_key_verifier(public_key=keys / "key-pub.pem")
    return verifying.Config().use_certificate_verifier(certificate_chain=[keys / anchor])


def verdict(spec: dict, model: Path, sig: Path, *, explicit: bool, anchor: str) -> str:
    try:
        v = verifier(spec, anchor)
        if explicit:
            cfg = hashing_config(spec)
            if model.is_dir():
                cfg = cfg.set_ignored_paths(
                    paths=[model / p for p in spec.get("ignore_paths", [])],
                    ignore_git_paths=spec.get("ignore_git", True),
                )
            v = v.set_hashing_config(cfg)
        v.verify(model, sig)
        return "accept"
    except Exception as exc:
        return "refuse: " + (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    case = Path(spec["case_dir"])
    model = case / "model"
    sig = case / "model.sig"
    keys = Path(spec["keys"])
    cfg = hashing_config(spec)
    if model.is_dir():
        cfg = cfg.set_ignored_paths(
            paths=[model / p for p in spec.get("ignore_paths", [])],
            ignore_git_paths=spec.get("ignore_git", True),
        )
    # signing.Config() of model_signing < 1.1 starts with a Sigstore signer, which
    # fetches Sigstore's TUF metadata: offline, skip that default (replaced below).
    signing.Config.use_sigstore_signer = lambda self, **_: self
    s = signing.Config().set_hashing_config(cfg)
    if spec["kind"] == "key":
        s = s.use_elliptic_key_signer(private_key=keys / "key.pem")
    else:
        s = s.use_certificate_signer(
            private_key=keys / "leaf.pem",
            signing_certificate=keys / "leaf-cert.pem",
            certificate_chain=[keys / "int-cert.pem"],
        )
    try:
        if not spec.get("judge_only"):
            s.sign(model, sig)
    except Exception:
        print(json.dumps({"error": traceback.format_exc().splitlines()[-1]}))
        return
    out: dict = {"model_signing": getattr(model_signing, "__version__", "?"), "verdicts": {}}
    anchors = ["root-cert.pem", "int-cert.pem"] if spec["kind"] == "cert" else [""]
    tampers = SINGLE_FILE_TAMPERS if model.is_file() else tuple(TAMPERS)
    for anchor in anchors:
        for explicit in (False, True):
            tag = ("explicit" if explicit else "guess") + (
                "+intermediate-anchor" if anchor == "int-cert.pem" else ""
            )
            res = {"original": verdict(spec, model, sig, explicit=explicit, anchor=anchor)}
            for t in tampers:
                with tempfile.TemporaryDirectory() as tmp:
                    copy = Path(tmp) / "model"
                    if model.is_dir():
                        shutil.copytree(model, copy, symlinks=True)
                    else:
                        shutil.copy2(model, copy)
                    TAMPERS[t](copy)
                    res[t] = verdict(spec, copy, sig, explicit=explicit, anchor=anchor)
            out["verdicts"][tag] = res
    print(json.dumps(out))


if __name__ == "__main__":
    main()
