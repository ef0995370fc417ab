"""vault_client() against the real OpenBao: token, AppRole, JWT, Kubernetes; error mapping."""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import services
from tests.support.services import (
    JWTIssuer,
    OpenBaoServer,
    TokenReviewServer,
    free_port,
    transit_policy_hcl,
)
from weightguard._internal.foundation.vault import VaultAuth, lookup_self, vault_client
from weightguard.errors import ConfigError, KeyAccessDenied, KeyProviderError, KeyUnavailableError


def _roundtrip(client, key: str) -> bytes:  # type: ignore[no-untyped-def]
    ct = client.secrets.transit.encrypt_data(name=key, plaintext=base64.b64encode(b"dk").decode())
    out = client.secrets.transit.decrypt_data(name=key, ciphertext=ct["data"]["ciphertext"])
    return base64.b64decode(out["data"]["plaintext"])


@pytest.fixture
def key_policy(openbao: OpenBaoServer, transit_key: str) -> str:
    name = f"use-{transit_key}"
    openbao.write_policy(name, transit_policy_hcl(transit_key))
    return name


def test_token_from_env(
    vault_env: OpenBaoServer, transit_key: str, key_policy: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = vault_env.create_token([key_policy])
    monkeypatch.setenv("VAULT_TOKEN", token)
    client = vault_client()
    assert client.url == vault_env.addr
    assert _roundtrip(client, transit_key) == b"dk"
    info = lookup_self(client)
    assert info["policies"] == ["default", key_policy]
    assert token not in repr(info)


def test_explicit_token_and_bad_token(openbao: OpenBaoServer, clean_service_env) -> None:  # type: ignore[no-untyped-def]
    client = vault_client(openbao.addr, openbao.root_token)
    assert "root" in lookup_self(client)["policies"]
    bad = "hvs.this-is-not-a-valid-token"
    with pytest.raises(KeyAccessDenied) as err:
        lookup_self(vault_client(openbao.addr, bad))
    assert "denied" in str(err.value) and openbao.addr in str(err.value)
    assert bad not in str(err.value)


def test_never_reads_home_vault_token(
    openbao: OpenBaoServer, clean_service_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / ".vault-token").write_text(openbao.root_token)
    clean_service_env.setenv("HOME", str(tmp_path))
    clean_service_env.setenv("VAULT_ADDR", openbao.addr)
    with pytest.raises(ConfigError, match="no Vault credentials"):
        vault_client()


def test_unreachable_address(clean_service_env: pytest.MonkeyPatch) -> None:
    port = free_port()
    client = vault_client(f"http://127.0.0.1:{port}", "some-token-value")
    with pytest.raises(KeyUnavailableError) as err:
        lookup_self(client)
    msg = str(err.value)
    assert f"cannot reach Vault at http://127.0.0.1:{port}" in msg
    assert "some-token-value" not in msg
    assert "\n" not in msg


def test_missing_and_malformed_addr(clean_service_env: pytest.MonkeyPatch) -> None:
    clean_service_env.setenv("VAULT_TOKEN", "x")
    with pytest.raises(ConfigError, match="VAULT_ADDR is not set"):
        vault_client()
    with pytest.raises(ConfigError, match="not an http"):
        vault_client("127.0.0.1:8200")
    with pytest.raises(ConfigError, match="VAULT_CACERT"):
        vault_client("https://127.0.0.1:1", cacert="/no/such/ca.pem")


def test_approle(
    openbao: OpenBaoServer,
    transit_key: str,
    key_policy: str,
    clean_service_env: pytest.MonkeyPatch,
    new_name: Callable[[str], str],
) -> None:
    root = openbao.client()
    mount = new_name("approle")
    root.sys.enable_auth_method("approle", path=mount)
    root.write_data(f"auth/{mount}/role/loader", data={"token_policies": [key_policy]})
    role_id = root.read(f"auth/{mount}/role/loader/role-id")["data"]["role_id"]
    secret_id = root.write_data(f"auth/{mount}/role/loader/secret-id")["data"]["secret_id"]

    client = vault_client(openbao.addr, auth=VaultAuth.approle(role_id, secret_id, mount=mount))
    assert _roundtrip(client, transit_key) == b"dk"

    clean_service_env.setenv("VAULT_ADDR", openbao.addr)
    clean_service_env.setenv("WEIGHTGUARD_VAULT_ROLE_ID", role_id)
    clean_service_env.setenv("WEIGHTGUARD_VAULT_SECRET_ID", secret_id)
    clean_service_env.setenv("WEIGHTGUARD_VAULT_AUTH_MOUNT", mount)
    assert lookup_self(vault_client())["policies"] == ["default", key_policy]

    clean_service_env.setenv("WEIGHTGUARD_VAULT_SECRET_ID", "00000000-0000-0000-0000-000000000000")
    with pytest.raises(KeyProviderError) as err:
        vault_client()
    assert "AppRole login" in str(err.value)
    assert secret_id not in repr(VaultAuth.approle(role_id, secret_id))


def test_jwt(
    openbao: OpenBaoServer,
    transit_key: str,
    key_policy: str,
    clean_service_env: pytest.MonkeyPatch,
    new_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    issuer = JWTIssuer()
    mount = new_name("jwt")
    services.configure_jwt_auth(
        openbao.client(),
        issuer,
        role="release",
        policies=[key_policy],
        bound_audiences=["weightguard"],
        bound_subject="ci:release",
        mount=mount,
    )
    jwt = issuer.issue("ci:release", audience="weightguard")
    client = vault_client(openbao.addr, auth=VaultAuth.jwt("release", jwt=jwt, mount=mount))
    assert _roundtrip(client, transit_key) == b"dk"

    token_file = tmp_path / "jwt"
    token_file.write_text(jwt + "\n")
    for var, value in {
        "VAULT_ADDR": openbao.addr,
        "WEIGHTGUARD_VAULT_AUTH": "jwt",
        "WEIGHTGUARD_VAULT_ROLE": "release",
        "WEIGHTGUARD_VAULT_TOKEN_FILE": str(token_file),
        "WEIGHTGUARD_VAULT_AUTH_MOUNT": mount,
    }.items():
        clean_service_env.setenv(var, value)
    assert lookup_self(vault_client())["policies"] == ["default", key_policy]

    # signed by another key, or for another subject: refused
    for bad in (
        JWTIssuer(issuer.issuer).issue("ci:release", audience="weightguard"),
        issuer.issue("ci:someone-else", audience="weightguard"),
        issuer.issue("ci:release", audience="other"),
    ):
        token_file.write_text(bad)
        with pytest.raises(KeyAccessDenied) as err:
            vault_client()
        assert "jwt login as role 'release'" in str(err.value)
        assert bad not in str(err.value)


def test_kubernetes(
    openbao: OpenBaoServer,
    token_review: TokenReviewServer,
    transit_key: str,
    key_policy: str,
    clean_service_env: pytest.MonkeyPatch,
    new_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    mount = new_name("k8s")
    services.configure_kubernetes_auth(
        openbao.client(),
        token_review,
        role="model-a-loader",
        service_accounts=["model-a"],
        namespaces=["serving"],
        policies=[key_policy],
        audience="vault",
        mount=mount,
    )
    sa_token = tmp_path / "token"
    sa_token.write_text(token_review.issue_token("serving", "model-a", audience="vault"))
    for var, value in {
        "VAULT_ADDR": openbao.addr,
        "WEIGHTGUARD_VAULT_AUTH": "kubernetes",
        "WEIGHTGUARD_VAULT_ROLE": "model-a-loader",
        "WEIGHTGUARD_VAULT_TOKEN_FILE": str(sa_token),
        "WEIGHTGUARD_VAULT_AUTH_MOUNT": mount,
    }.items():
        clean_service_env.setenv(var, value)
    client = vault_client()
    assert _roundtrip(client, transit_key) == b"dk"
    assert lookup_self(client)["policies"] == ["default", key_policy]
    assert token_review.reviews[-1] == {
        "authenticated": True,
        "namespace": "serving",
        "service_account": "model-a",
    }

    # another service account, another namespace, wrong audience: refused
    for ns, sa, aud in (
        ("serving", "model-b", "vault"),
        ("other", "model-a", "vault"),
        ("serving", "model-a", "not-vault"),
    ):
        sa_token.write_text(token_review.issue_token(ns, sa, audience=aud))
        with pytest.raises(KeyAccessDenied) as err:
            vault_client()
        assert "kubernetes login as role 'model-a-loader'" in str(err.value)

    # deleted service account: the TokenReview says no
    sa_token.write_text(token_review.issue_token("serving", "model-a", audience="vault"))
    token_review.revoke_service_account("serving", "model-a")
    with pytest.raises(KeyAccessDenied):
        vault_client()


def test_kubernetes_missing_token_file(
    openbao: OpenBaoServer, clean_service_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_service_env.setenv("VAULT_ADDR", openbao.addr)
    clean_service_env.setenv("WEIGHTGUARD_VAULT_ROLE", "r")  # auto-selects kubernetes
    clean_service_env.setenv("WEIGHTGUARD_VAULT_TOKEN_FILE", str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match=r"service account token file .* does not exist"):
        vault_client()


def test_unknown_auth_method(clean_service_env: pytest.MonkeyPatch) -> None:
    clean_service_env.setenv("VAULT_ADDR", "http://127.0.0.1:1")
    clean_service_env.setenv("WEIGHTGUARD_VAULT_AUTH", "ldap")
    with pytest.raises(ConfigError, match="not a known auth method"):
        vault_client()


def _short_lived_approle(
    openbao: OpenBaoServer,
    env: pytest.MonkeyPatch,
    name: str,
    policy_hcl: str,
    *,
    ttl: str = "2s",
    secret_id_uses: int = 0,
) -> None:
    """AppRole credentials in the environment whose tokens live ``ttl`` (2 seconds)."""
    root = openbao.client()
    openbao.write_policy(name, policy_hcl)
    root.sys.enable_auth_method("approle", path=name)
    root.write_data(
        f"auth/{name}/role/pod",
        data={
            "token_policies": [name],
            "token_ttl": ttl,
            "token_max_ttl": ttl,
            "secret_id_num_uses": secret_id_uses,
        },
    )
    role_id = root.read(f"auth/{name}/role/pod/role-id")["data"]["role_id"]
    secret_id = root.write_data(f"auth/{name}/role/pod/secret-id")["data"]["secret_id"]
    env.setenv("VAULT_ADDR", openbao.addr)
    env.setenv("WEIGHTGUARD_VAULT_ROLE_ID", role_id)
    env.setenv("WEIGHTGUARD_VAULT_SECRET_ID", secret_id)
    env.setenv("WEIGHTGUARD_VAULT_AUTH_MOUNT", name)


def test_long_lived_users_log_in_again_when_the_token_expires(
    openbao: OpenBaoServer,
    clean_service_env: pytest.MonkeyPatch,
    new_name: Callable[[str], str],
    tmp_path: Path,
) -> None:
    """A pod outlives its login: the audit checkpoint signer, the KV anchor and the Transit
    data-key provider log in again on the 403 of an expired token; a client the caller
    handed in is never replaced (its expiry is a typed, audited failure)."""
    import time

    from weightguard._internal.keys.providers import VaultTransitProvider
    from weightguard.audit import AuditLog, VaultKVAnchor, verify_log
    from weightguard.errors import AuditError

    root = openbao.client()
    sign_key, data_key, kv = new_name("cp"), new_name("dk"), new_name("kv")
    root.secrets.transit.create_key(name=sign_key, key_type="ed25519")
    root.secrets.transit.create_key(name=data_key, derived=True)
    root.sys.enable_secrets_engine("kv", path=kv, options={"version": "2"})
    hcl = transit_policy_hcl(data_key) + (
        f'\npath "transit/sign/{sign_key}" {{ capabilities = ["update"] }}\n'
        f'path "{kv}/data/*" {{ capabilities = ["create", "read", "update"] }}\n'
    )
    _short_lived_approle(openbao, clean_service_env, new_name("pod"), hcl)

    path = tmp_path / "audit.jsonl"
    anchor_uri = f"vault-kv://{kv}/anchors"
    log = AuditLog(
        str(path), signing_key=f"vault://transit/{sign_key}", anchor=anchor_uri, checkpoint_every=2
    )
    provider = VaultTransitProvider(f"vault://transit/{data_key}")
    dk, wrapped = provider.generate("model-a")
    log.emit("load.ok", object={"uri": "s3://m/a"})
    log.emit("load.ok", object={"uri": "s3://m/a"})  # checkpoint signed and anchored
    time.sleep(3)  # every token issued so far has expired
    assert provider.unwrap(wrapped) == dk
    log.emit("load.ok", object={"uri": "s3://m/b"})
    log.emit("load.ok", object={"uri": "s3://m/b"})  # signed and anchored after a new login
    log.close()
    anchor = VaultKVAnchor(anchor_uri, client=root)
    res = verify_log(
        path, checkpoint_vault_key=f"vault://transit/{sign_key}", anchor=anchor, vault_client=root
    )
    assert res.ok, res.describe()
    assert res.logs[0].checkpoints_verified == res.logs[0].checkpoints >= 2
    assert res.logs[0].anchored_size is not None and res.logs[0].anchored_size >= 5

    # the caller's own client is theirs to renew: its expiry fails closed, typed
    given = vault_client()
    time.sleep(3)
    mine = AuditLog(
        str(tmp_path / "b.jsonl"),
        signing_key=f"vault://transit/{sign_key}",
        vault_client=given,
        checkpoint_every=2,
    )
    with pytest.raises(AuditError, match=f"Vault Transit sign for vault://transit/{sign_key}"):
        mine.emit("load.ok")
        mine.emit("load.ok")


def test_a_valid_token_lacking_a_permission_is_denied_without_a_new_login(
    openbao: OpenBaoServer,
    clean_service_env: pytest.MonkeyPatch,
    new_name: Callable[[str], str],
) -> None:
    """A 403 to a token that is still valid is a denial: no second login (the secret_id
    here allows one use, so a second login would fail differently)."""
    from weightguard._internal.keys.providers import VaultTransitProvider

    root = openbao.client()
    mine, other = new_name("dk"), new_name("dk")
    for k in (mine, other):
        root.secrets.transit.create_key(name=k, derived=True)
    _short_lived_approle(
        openbao,
        clean_service_env,
        new_name("pod"),
        transit_policy_hcl(mine),
        ttl="10m",
        secret_id_uses=1,
    )
    with pytest.raises(KeyAccessDenied) as err:
        VaultTransitProvider(f"vault://transit/{other}").generate("model-a")
    assert "permission denied for the token's policies" in str(err.value)
    assert "AppRole login" not in str(err.value)


def test_a_refused_login_reaches_the_user_as_it_was_worded(
    openbao: OpenBaoServer,
    clean_service_env: pytest.MonkeyPatch,
    new_name: Callable[[str], str],
) -> None:
    """The provider passes a typed login error through: no "failed to read the key of
    with" wrapper, no hint said twice."""
    from weightguard._internal.keys.providers import VaultTransitProvider

    key = new_name("dk")
    openbao.client().secrets.transit.create_key(name=key, derived=True)
    _short_lived_approle(
        openbao, clean_service_env, new_name("pod"), transit_policy_hcl(key), ttl="10m"
    )
    clean_service_env.setenv("WEIGHTGUARD_VAULT_SECRET_ID", "00000000-0000-0000-0000-000000000000")
    with pytest.raises(KeyAccessDenied) as err:
        VaultTransitProvider(f"vault://transit/{key}").generate("model-a")
    msg = str(err.value)
    assert msg.startswith(f"Vault at {openbao.addr} denied AppRole login at auth/pod-")
    assert "failed to" not in msg and msg.count("(check") <= 1
