"""Every user-facing CLI message of issue 16: the real `weightguard` process, its exact
first line(s) and exit code (0 ok, 1 refused or failed, 2 usage).

Vault cases run against the real OpenBao of tests/support/fixtures.py; push against the
real SeaweedFS.  Nothing is mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.format import build_safetensors
from tests.support.services import OpenBaoServer, SeaweedS3Server, free_port
from tests.support.signing import write_chain

DEV_WARNING = (
    "weightguard: warning: using development key file {key}; not for production "
    "(use vault:// or awskms://)"
)
_SERVICE_VARS = (
    "VAULT_ADDR",
    "VAULT_TOKEN",
    "VAULT_NAMESPACE",
    "VAULT_CACERT",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
)


@dataclass
class Run:
    rc: int
    out: list[str]
    err: list[str]


@pytest.fixture
def wg(tmp_path: Path) -> Callable[..., Run]:
    """Run `python -m weightguard_cli ARGS` in tmp_path with a clean service environment."""
    base = {k: v for k, v in os.environ.items() if k not in _SERVICE_VARS}
    base["WEIGHTGUARD_AUDIT_LOG"] = str(tmp_path / "audit.jsonl")
    # The artifacts name the dev key file; the caller allows exactly that one (issue 12.2).
    base["WEIGHTGUARD_ALLOW_KEY"] = "file://dev.key"
    base["AWS_CONFIG_FILE"] = base["AWS_SHARED_CREDENTIALS_FILE"] = str(tmp_path / "none")

    def run(*args: str, env: dict[str, str] | None = None) -> Run:
        p = subprocess.run(
            [sys.executable, "-m", "weightguard_cli", *args],
            cwd=tmp_path,
            env={**base, **(env or {})},
            capture_output=True,
            text=True,
            timeout=120,
        )
        return Run(p.returncode, p.stdout.splitlines(), p.stderr.splitlines())

    return run


def _events(tmp_path: Path) -> list[dict[str, object]]:
    log = tmp_path / "audit.jsonl"
    if not log.exists():
        return []
    return [json.loads(x) for x in log.read_text().splitlines() if x.strip()]


def _floats(n: int) -> bytes:
    import struct

    return struct.pack(f"<{n}f", *(((i * 7919) % 1000) / 1000.0 - 0.5 for i in range(n)))


@pytest.fixture
def model(tmp_path: Path) -> Path:
    d = tmp_path / "m"
    d.mkdir()
    (d / "model.safetensors").write_bytes(
        build_safetensors({"w": ("F32", [32, 32], _floats(1024))}, {})
    )
    (d / "config.json").write_text("{}")
    return d


@pytest.fixture
def released(wg: Callable[..., Run], model: Path, tmp_path: Path) -> Path:
    """m encrypted to enc/ with file://dev.key and signed with rel.pem (enc/model.sig)."""
    assert wg("keys", "create", "--data-key", "dev.key", "--signing-key", "rel.pem").rc == 0
    assert wg("encrypt", "m", "-o", "enc", "--data-key", "file://dev.key").rc == 0
    assert wg("sign", "enc", "--signing-key", "rel.pem").rc == 0
    return tmp_path / "enc"


# ------------------------------------------------------------------ keys create


def test_keys_create_writes_private_0600_and_says_what_to_pass(
    wg: Callable[..., Run], tmp_path: Path
) -> None:
    r = wg("keys", "create", "--data-key", "dev.key", "--signing-key", "rel.pem")
    assert r.rc == 0
    assert r.out[0] == "wrote data key dev.key (development only; keep it secret)"
    assert r.out[1] == "  encrypt with: --data-key file://dev.key"
    assert r.out[2].startswith(
        "wrote P-256 signing key rel.pem (keep it secret) and public key rel.pub; "
        "fingerprint sha256:"
    )
    assert r.out[3:] == ["  sign with: --signing-key rel.pem",
                         "  verify, load and fetch with: --trust-key rel.pub"]  # fmt: skip
    assert (tmp_path / "dev.key").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "rel.pem").stat().st_mode & 0o777 == 0o600
    assert b"BEGIN PUBLIC KEY" in (tmp_path / "rel.pub").read_bytes()
    # the fingerprint printed is the one sign prints for this key
    fp = r.out[2].rsplit(" ", 1)[1]
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a.bin").write_bytes(b"x")
    s = wg("sign", "m", "--signing-key", "rel.pem")
    assert s.rc == 0 and s.out[1] == f"signer: EC P-256 key {fp}"


def test_keys_create_refuses_existing_and_leaves_nothing(
    wg: Callable[..., Run], tmp_path: Path
) -> None:
    (tmp_path / "rel.pub").write_text("old")
    r = wg("keys", "create", "--data-key", "dev.key", "--signing-key", "rel.pem")
    assert (r.rc, r.err) == (
        1,
        ["error: rel.pub already exists (choose another path or remove it)"],
    )
    assert not (tmp_path / "dev.key").exists() and not (tmp_path / "rel.pem").exists()


def test_keys_create_needs_a_kind(wg: Callable[..., Run]) -> None:
    r = wg("keys", "create")
    assert r.rc == 2
    assert r.err[0] == "Usage: weightguard keys create [OPTIONS]"
    assert r.err[-1] == "Error: give --data-key PATH, --signing-key PATH, or both"


def test_missing_key_file_hint_points_at_keys_create(wg: Callable[..., Run], model: Path) -> None:
    r = wg("encrypt", "m", "-o", "enc", "--data-key", "file://nope.key")
    assert r.rc == 1
    assert r.err[-1] == (
        "error: key file nope.key does not exist (create one with "
        "`weightguard keys create --data-key PATH`, or fix the URI)"
    )


def test_sign_with_ed25519_key_names_it(wg: Callable[..., Run], model: Path) -> None:
    assert wg("audit", "keygen", "ed.pem").rc == 0  # an Ed25519 key pair
    r = wg("sign", "m", "--signing-key", "ed.pem")
    assert r.rc == 1
    assert r.err == [
        "error: private key file ed.pem holds an Ed25519 key, not an EC (ECDSA) key (OMS "
        "signatures use ECDSA P-256, P-384 or P-521 keys; create one with "
        "`weightguard keys create --signing-key FILE`)"
    ]


# ------------------------------------------------------------------ vocabulary


def test_old_spelling_warns_and_still_works(
    wg: Callable[..., Run], model: Path, tmp_path: Path
) -> None:
    assert wg("keys", "create", "--data-key", "dev.key").rc == 0
    r = wg("encrypt", "m", "-o", "enc", "--key", "file://dev.key")
    assert r.rc == 0
    assert r.err[0] == "warning: --key is deprecated here; use --data-key"
    assert r.out[0].startswith("encrypted 1 file(s), ")
    assert (tmp_path / "enc" / "model.safetensors").is_file()


def test_old_and_new_spelling_together_is_a_usage_error(
    wg: Callable[..., Run], model: Path
) -> None:
    r = wg("encrypt", "m", "-o", "enc", "--key", "file://a", "--data-key", "file://b")
    assert r.rc == 2
    assert r.err[-1] == "Error: --key and --data-key are the same option; give --data-key once"


def test_required_new_option_named_when_missing(wg: Callable[..., Run], model: Path) -> None:
    r = wg("encrypt", "m", "-o", "enc")
    assert r.rc == 2
    assert r.err[0] == "Usage: weightguard encrypt [OPTIONS] SRC"
    assert r.err[-1] == "Error: Missing option '--data-key'."


def test_load_old_key_option_with_a_uri_says_which_option(
    wg: Callable[..., Run], released: Path
) -> None:
    r = wg("load", "enc", "--key", "vault://transit/m")
    assert r.rc == 2
    assert r.err[-1] == (
        "Error: --key (now --trust-key) takes a public key file, not a URI; "
        "give the data key as --data-key vault://transit/m"
    )


def test_no_trust_anchor_names_cli_options(wg: Callable[..., Run], released: Path) -> None:
    r = wg("verify", "enc")
    assert r.rc == 2
    assert r.err[-1] == (
        "Error: no trust anchor given (give a trust anchor: a signer public key "
        "(--trust-key), a CA chain (--trust-chain), a Vault Transit key (--trust-vault-key) "
        "or a Sigstore --identity and --issuer)"
    )


# ------------------------------------------------------------------ verify / load / fetch


def test_verify_finds_model_sig_by_default(wg: Callable[..., Run], released: Path) -> None:
    r = wg("verify", "enc", "--trust-key", "rel.pub")
    assert r.rc == 0
    assert r.out[0] == "OK: enc matches enc/model.sig"


def test_single_file_signature_defaults_to_file_sig(
    wg: Callable[..., Run], model: Path, tmp_path: Path
) -> None:
    assert wg("keys", "create", "--signing-key", "rel.pem").rc == 0
    s = wg("sign", "m/model.safetensors", "--signing-key", "rel.pem")
    assert s.rc == 0 and s.out[0] == "signed 1 file(s) -> m/model.safetensors.sig"
    v = wg("verify", "m/model.safetensors", "--trust-key", "rel.pub")
    assert v.rc == 0 and v.out[0] == "OK: m/model.safetensors matches m/model.safetensors.sig"
    (tmp_path / "m" / "model.safetensors.sig").unlink()
    v = wg("verify", "m/model.safetensors", "--trust-key", "rel.pub")
    assert v.rc == 1
    assert v.err == [
        "error: m/model.safetensors: no signature found (looked for m/model.safetensors.sig) "
        "(sign the model with `weightguard sign`, or give the bundle's path with --signature)"
    ]


def test_wrong_key_prints_the_fingerprint_sign_prints(
    wg: Callable[..., Run], released: Path
) -> None:
    other = wg("keys", "create", "--signing-key", "other.pem")
    fp = other.out[0].rsplit(" ", 1)[1]
    r = wg("verify", "enc", "--trust-key", "other.pub")
    assert r.rc == 1
    assert r.err == [
        f"error: signature enc/model.sig does not satisfy the policy: enc/model.sig was "
        f"signed with another key, not {fp} (P-256) (check the expected identity, issuer, "
        "key or root)"
    ]


def test_no_none_in_output(wg: Callable[..., Run], released: Path) -> None:
    r = wg("inspect", "enc/model.safetensors")
    assert r.rc == 0
    assert r.out[1] == "  key:        file://dev.key (file), context 'm'"
    assert not any("None" in line for line in r.out + r.err)
    assert wg("load", "enc", "--trust-key", "rel.pub").rc == 0
    shown = wg("audit", "show", "audit.jsonl")
    assert shown.rc == 0 and any("key=file://dev.key " in line for line in shown.out)
    assert not any("None" in line for line in shown.out)
    assert wg("keys", "create", "--data-key", "new.key").rc == 0
    r = wg("rewrap", "enc", "--new-data-key", "file://new.key")
    assert r.rc == 0
    assert r.out == ["enc/model.safetensors: file://dev.key -> file://new.key"]


def test_load_check_is_load(wg: Callable[..., Run], released: Path) -> None:
    plain = wg("load", "enc", "--trust-key", "rel.pub")
    assert plain.rc == 0 and plain.out[0].startswith("ok: 1 tensors, ")
    old = wg("load", "enc", "--trust-key", "rel.pub", "--check")
    assert old.rc == 0 and old.out[0].startswith("ok: 1 tensors, ")
    assert old.err[0] == (
        "warning: --check is deprecated: load always verifies, decrypts and keeps nothing"
    )


def test_fetch_refuses_non_empty_destination_unless_replace(
    wg: Callable[..., Run], released: Path, tmp_path: Path
) -> None:
    dest = Path("/dev/shm") / f"wg-t16b-{os.getpid()}-{tmp_path.name}"
    dest.mkdir()
    try:
        (dest / "stale.bin").write_bytes(b"old")
        r = wg("fetch", "enc", "-o", str(dest), "--trust-key", "rel.pub")
        assert r.rc == 1
        assert r.err[-1] == (
            f"error: {dest} is not empty: the model would be mixed with what is there "
            "(use an empty directory, or pass --replace)"
        )
        assert sorted(os.listdir(dest)) == ["stale.bin"]
        refused = [e for e in _events(tmp_path) if e["event"] == "fetch"][-1]
        assert refused["outcome"] == "denied"
        assert str(refused["reason"]).startswith("DestinationError: ")
        r = wg("fetch", "enc", "-o", str(dest), "--trust-key", "rel.pub", "--replace")
        assert r.rc == 0
        assert r.out == [f"ok: 2 files, {4096 + _header(released)} bytes written to {dest}"]
        assert sorted(os.listdir(dest)) == ["config.json", "model.safetensors"]
        assert (dest / "model.safetensors").read_bytes() == (
            tmp_path / "m" / "model.safetensors"
        ).read_bytes()
    finally:
        for p in dest.iterdir():
            p.unlink()
        dest.rmdir()


def _header(enc: Path) -> int:
    plain = enc.parent / "m" / "model.safetensors"
    return plain.stat().st_size - 4096


# ------------------------------------------------------------------ Vault (real OpenBao)


@pytest.fixture
def derived_key(openbao: OpenBaoServer, new_name: Callable[[str], str]) -> str:
    name = new_name("t16b")
    openbao.client().secrets.transit.create_key(
        name=name, derived=True, mount_point=openbao.transit_mount or "transit"
    )
    return f"vault://{openbao.transit_mount or 'transit'}/{name}"


def _encrypt_vault(wg: Callable[..., Run], uri: str, env: dict[str, str]) -> Run:
    return wg("encrypt", "m", "-o", "enc", "--data-key", uri, env=env)


def test_vault_revoked_token(
    wg: Callable[..., Run], model: Path, openbao: OpenBaoServer, derived_key: str, tmp_path: Path
) -> None:
    token = openbao.create_token(["default"])
    openbao.client().auth.token.revoke(token)
    r = _encrypt_vault(wg, derived_key, openbao.env(token))
    assert r.rc == 1
    assert r.err[-1] == (
        f"error: Vault at {openbao.addr} rejected the token while wrapping a data key with "
        f"{derived_key}: it is expired, revoked or invalid (get a new token into "
        "VAULT_TOKEN, or log in again)"
    )
    assert not (tmp_path / "enc").exists()


def test_vault_policy_without_permission(
    wg: Callable[..., Run], model: Path, openbao: OpenBaoServer, derived_key: str
) -> None:
    # A valid token whose policies allow reading the key but not using it.
    mount, name = derived_key.removeprefix("vault://").split("/")
    openbao.write_policy(
        f"{name}-read", f'path "{mount}/keys/{name}" {{ capabilities = ["read"] }}'
    )
    token = openbao.create_token([f"{name}-read"])
    r = _encrypt_vault(wg, derived_key, openbao.env(token))
    assert r.rc == 1
    assert r.err[-1] == (
        f"error: Vault at {openbao.addr} denied wrapping a data key with {derived_key}: "
        f"permission denied for the token's policies (default, {name}-read) (grant a policy "
        "that allows this path, or use a token that has one)"
    )


def test_vault_wrong_port(
    wg: Callable[..., Run], model: Path, openbao: OpenBaoServer, derived_key: str
) -> None:
    addr = f"http://127.0.0.1:{free_port()}"
    r = _encrypt_vault(wg, derived_key, {"VAULT_ADDR": addr, "VAULT_TOKEN": openbao.root_token})
    assert r.rc == 1
    assert r.err[-1] == (
        f"error: cannot reach Vault at {addr} while reading the Transit key {derived_key} "
        "(check VAULT_ADDR and that the server is running)"
    )


def test_vault_tls_to_plain_listener(
    wg: Callable[..., Run], model: Path, openbao: OpenBaoServer, derived_key: str
) -> None:
    addr = openbao.addr.replace("http://", "https://")
    r = _encrypt_vault(wg, derived_key, {"VAULT_ADDR": addr, "VAULT_TOKEN": openbao.root_token})
    assert r.rc == 1
    assert r.err[-1] == (
        f"error: TLS handshake with Vault at {addr} failed while reading the Transit key "
        f"{derived_key}: the server did not answer in TLS (use an http:// VAULT_ADDR for a "
        "plain listener, or enable TLS on it)"
    )


# ------------------------------------------------------------------ push (real SeaweedFS)


def test_push_bad_credentials_is_one_line(
    wg: Callable[..., Run], released: Path, s3: SeaweedS3Server, bucket: str
) -> None:
    env = {**s3.env(), "AWS_SECRET_ACCESS_KEY": "wrong-secret"}
    r = wg("push", "enc", f"s3://{bucket}/rel", env=env)
    assert r.rc == 1
    assert r.err == [
        f"error: listing s3://{bucket}/rel/ was refused: the "  # push's first request
        "secret key does not match the access key (SignatureDoesNotMatch) (check the "
        "bucket name, the S3 credentials (standard AWS chain) and --endpoint-url)"
    ]


def test_push_ok_then_fetchable(
    wg: Callable[..., Run], released: Path, s3: SeaweedS3Server, bucket: str
) -> None:
    r = wg("push", "enc", f"s3://{bucket}/rel", env=s3.env())
    assert r.rc == 0
    assert r.out[0].startswith("ok: 3 files, ") and r.out[0].endswith(f" to s3://{bucket}/rel")
    keys = s3.client().list_objects_v2(Bucket=bucket, Prefix="rel/")["Contents"]
    assert sorted(k["Key"] for k in keys) == [
        "rel/config.json", "rel/model.safetensors", "rel/model.sig"]  # fmt: skip


# ------------------------------------------------------------------ other option hints


def test_watermark_embed_existing_output_names_replace(
    wg: Callable[..., Run], model: Path, tmp_path: Path
) -> None:
    (tmp_path / "wm.key").write_bytes(os.urandom(32))
    (tmp_path / "marked").mkdir()
    r = wg("watermark", "embed", "m", "-o", "marked", "--watermark-key", "wm.key")
    assert r.rc == 1
    assert r.err == ["error: marked already exists (choose another output or pass --replace)"]


def test_sign_encrypted_key_without_password_names_the_option(
    wg: Callable[..., Run], model: Path, tmp_path: Path
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    (tmp_path / "k.pem").write_bytes(pem)
    r = wg("sign", "m", "--signing-key", "k.pem")
    assert r.rc == 1
    assert r.err == [
        "error: private key file k.pem is encrypted and no password was given (give the "
        "environment variable that holds it: --password-env VAR)"
    ]
    assert not (tmp_path / "m" / "model.sig").exists()


def test_every_old_spelling_still_works(
    wg: Callable[..., Run], released: Path, tmp_path: Path
) -> None:
    """One release of grace: each renamed option, old name, same result and a warning."""
    (tmp_path / "wm.key").write_bytes(os.urandom(32))
    assert wg("keys", "create", "--data-key", "new.key").rc == 0
    c = write_chain(tmp_path)
    leaf = ["--cert", str(c["leaf_cert"]), "--signing-key", str(c["leaf_key"])]
    signed = wg("sign", "m", "--signature", "c.sig", *leaf, "--cert-chain", str(c["intermediate"]))
    assert signed.rc == 0, signed.err
    assert signed.err[:2] == [
        "warning: --cert is deprecated here; use --signing-cert",
        "warning: --cert-chain is deprecated here; use --signing-chain",
    ]
    dest = Path("/dev/shm") / f"wg-t16b-old-{os.getpid()}-{tmp_path.name}"
    try:
        r = wg("fetch", "enc", "--to", str(dest), "--key", "rel.pub")
        assert r.rc == 0, r.err
        assert r.err[:2] == ["warning: --to is deprecated here; use --output",
                             "warning: --key is deprecated here; use --trust-key"]  # fmt: skip
        assert sorted(os.listdir(dest)) == ["config.json", "model.safetensors"]
    finally:
        for p in dest.glob("*"):
            p.unlink()
        if dest.exists():
            dest.rmdir()
    cases = [
        (["verify", "enc", "--key", "rel.pub"], "--key", "--trust-key"),
        (["verify", "m", "--signature", "c.sig", "--cert-chain", str(c["root"])],
         "--cert-chain", "--trust-chain"),
        (["load", "enc", "--key", "rel.pub"], "--key", "--trust-key"),
        (["inspect", "enc", "--verify", "--key", "file://dev.key"], "--key", "--data-key"),
        (["decrypt", "enc", "-o", "dec", "--key", "file://dev.key"], "--key", "--data-key"),
        (["sign", "m", "--signature", "m.sig", "--key", "rel.pem"], "--key", "--signing-key"),
        (["watermark", "embed", "m", "-o", "marked", "--key", "wm.key"],
         "--key", "--watermark-key"),
        (["watermark", "check", "marked", "--key", "wm.key"], "--key", "--watermark-key"),
        (["watermark", "embed", "m", "-o", "marked", "--watermark-key", "wm.key", "--force"],
         "--force", "--replace"),
        # last: it changes enc's headers, so enc/model.sig no longer matches
        (["rewrap", "enc", "--to", "file://new.key", "--data-key", "file://dev.key"],
         "--to", "--new-data-key"),
    ]  # fmt: skip
    for args, old, new in cases:
        r = wg(*args)
        assert r.rc == 0, (args, r.err)
        assert f"warning: {old} is deprecated here; use {new}" in r.err, args
    assert (tmp_path / "dec" / "model.safetensors").read_bytes() == (
        tmp_path / "m" / "model.safetensors"
    ).read_bytes()


def test_unsigned_file_hint_names_only_the_entry_points_options(
    wg: Callable[..., Run], released: Path
) -> None:
    """verify can allow an unsigned extra file and says how; load and fetch cannot, and
    their hint names no option they lack (issue 20)."""
    (released / "notes.txt").write_text("added after signing")
    head = "error: files not covered by signature enc/model.sig: notes.txt (remove them, "
    for args in (["load", "enc"], ["fetch", "enc", "-o", "out", "--allow-disk"]):
        r = wg(*args, "--trust-key", "rel.pub")
        assert r.rc == 1 and r.err[-1] == head + "or re-sign the model so that it covers them)"
    r = wg("verify", "enc", "--trust-key", "rel.pub")
    assert r.rc == 1
    assert r.err[-1] == (
        head + "or re-sign the model so that it covers them, or allow them with "
        "--allow-unsigned PATTERN)"
    )
    assert wg("verify", "enc", "--trust-key", "rel.pub", "--allow-unsigned", "notes.txt").rc == 0


def test_load_without_signature_points_at_sign(wg: Callable[..., Run], released: Path) -> None:
    (released / "model.sig").unlink()
    r = wg("load", "enc", "--trust-key", "rel.pub")
    assert r.rc == 1
    assert r.err[-1] == (
        "error: enc: no signature found (looked for enc/model.sig) (sign the model with "
        "`weightguard sign`, give the bundle's path with --signature, or load it unverified "
        "with --unsafe-no-verification)"
    )
