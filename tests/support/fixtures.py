"""pytest fixtures for the real local services (OpenBao, SeaweedFS S3, moto KMS, TokenReview).

Session-scoped servers, started on first use and stopped at session end:

* ``openbao``      -- :class:`OpenBaoServer`, Transit mounted at ``transit/``, file audit
                      device at ``openbao.audit_file``.
* ``s3``           -- :class:`SeaweedS3Server` (``s3.client()``, ``s3.make_bucket(...)``).
* ``kms``          -- :class:`MotoKMSServer` (``kms.client()``).
* ``token_review`` -- :class:`TokenReviewServer` (Kubernetes TokenReview stand-in).

Function-scoped helpers:

* ``transit_key``  -- a fresh Transit key (aes256-gcm96) created in ``openbao``; its name.
* ``new_name``     -- ``new_name("prefix")`` -> a fresh unique lowercase name.
* ``bucket``       -- a fresh S3 bucket in ``s3``; its name.
* ``kms_key``      -- a fresh symmetric KMS key in ``kms``; its KeyId.
* ``vault_env``    -- VAULT_ADDR/VAULT_TOKEN (root) set for this test; returns the server.
* ``s3_env``       -- AWS_ENDPOINT_URL_S3 + credentials set for this test; returns the server.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator

import pytest

from tests.support.services import (
    MotoKMSServer,
    OpenBaoServer,
    SeaweedS3Server,
    TokenReviewServer,
    live_pids,
    started_pids,
)

_CLEARED_ENV = (
    "VAULT_ADDR",
    "VAULT_TOKEN",
    "VAULT_NAMESPACE",
    "VAULT_CACERT",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ENDPOINT_URL_KMS",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
)


def _assert_stopped(pid: int | None) -> None:
    """Session teardown check: the launcher's process group is gone."""
    if pid is None or pid not in started_pids():
        raise RuntimeError(f"service process {pid} was not recorded by the launcher")
    if pid in live_pids():
        raise RuntimeError(f"service process group {pid} is still alive after stop")


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoServer]:
    audit = tmp_path_factory.mktemp("openbao-audit") / "audit.log"
    with OpenBaoServer(audit_file=audit) as server:
        pid = server.pid
        yield server
    _assert_stopped(pid)


@pytest.fixture(scope="session")
def s3() -> Iterator[SeaweedS3Server]:
    with SeaweedS3Server() as server:
        pid = server.pid
        yield server
    _assert_stopped(pid)


@pytest.fixture(scope="session")
def kms() -> Iterator[MotoKMSServer]:
    with MotoKMSServer() as server:
        pid = server.pid
        yield server
    _assert_stopped(pid)


@pytest.fixture(scope="session")
def token_review() -> Iterator[TokenReviewServer]:
    with TokenReviewServer() as server:
        yield server


@pytest.fixture
def new_name() -> Callable[[str], str]:
    def make(prefix: str = "wg") -> str:
        return f"{prefix}-{secrets.token_hex(5)}"

    return make


@pytest.fixture
def transit_key(openbao: OpenBaoServer, new_name: Callable[[str], str]) -> str:
    name = new_name("key")
    openbao.client().secrets.transit.create_key(
        name=name, key_type="aes256-gcm96", mount_point=openbao.transit_mount or "transit"
    )
    return name


@pytest.fixture
def bucket(s3: SeaweedS3Server, new_name: Callable[[str], str]) -> str:
    return s3.make_bucket(new_name("bucket"))


@pytest.fixture
def kms_key(kms: MotoKMSServer) -> str:
    return str(kms.client().create_key(Description="weightguard test")["KeyMetadata"]["KeyId"])


@pytest.fixture
def clean_service_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Remove Vault/AWS variables of the caller's environment for this test."""
    for var in _CLEARED_ENV:
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.fixture
def vault_env(openbao: OpenBaoServer, clean_service_env: pytest.MonkeyPatch) -> OpenBaoServer:
    for key, value in openbao.env().items():
        clean_service_env.setenv(key, value)
    return openbao


@pytest.fixture
def s3_env(s3: SeaweedS3Server, clean_service_env: pytest.MonkeyPatch) -> SeaweedS3Server:
    for key, value in s3.env().items():
        clean_service_env.setenv(key, value)
    return s3
