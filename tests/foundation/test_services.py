"""The local services are the real servers: prove it through their real client libraries."""

from __future__ import annotations

import base64
import datetime
import json
import os
import shutil
import socket
import time
import urllib.request
from pathlib import Path

import hvac
import hvac.exceptions
import pytest
from botocore.exceptions import ClientError

from tests.support import services
from tests.support.services import (
    JWTIssuer,
    MotoKMSServer,
    OpenBaoServer,
    SeaweedS3Server,
    ServiceError,
    TokenReviewServer,
    transit_policy_hcl,
)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# ----------------------------------------------------------------------------- OpenBao


def test_transit_round_trip(openbao: OpenBaoServer, transit_key: str) -> None:
    client = openbao.client()
    secret = os.urandom(32)
    ct = client.secrets.transit.encrypt_data(
        name=transit_key, plaintext=_b64(secret), context=_b64(b"model-a")
    )["data"]["ciphertext"]
    assert ct.startswith("vault:v1:")
    assert _b64(secret) not in ct
    # derived keys need the context: create a derived key and check a wrong context fails
    out = client.secrets.transit.decrypt_data(
        name=transit_key, ciphertext=ct, context=_b64(b"model-a")
    )
    assert base64.b64decode(out["data"]["plaintext"]) == secret


def test_transit_derived_key_wrong_context_fails(openbao: OpenBaoServer, new_name) -> None:
    client = openbao.client()
    name = new_name("derived")
    client.secrets.transit.create_key(name=name, derived=True)
    ct = client.secrets.transit.encrypt_data(
        name=name, plaintext=_b64(b"k" * 32), context=_b64(b"model-a")
    )["data"]["ciphertext"]
    with pytest.raises(hvac.exceptions.InvalidRequest):
        client.secrets.transit.decrypt_data(name=name, ciphertext=ct, context=_b64(b"model-b"))


def test_policy_limits_a_token_to_its_key(openbao: OpenBaoServer, new_name) -> None:
    mine, other = new_name("mine"), new_name("other")
    root = openbao.client()
    for key in (mine, other):
        root.secrets.transit.create_key(name=key)
    openbao.write_policy(f"only-{mine}", transit_policy_hcl(mine))
    token = openbao.create_token([f"only-{mine}"])
    client = openbao.client(token)
    ct = client.secrets.transit.encrypt_data(name=mine, plaintext=_b64(b"x"))["data"]["ciphertext"]
    assert client.secrets.transit.decrypt_data(name=mine, ciphertext=ct)["data"]["plaintext"]
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.transit.encrypt_data(name=other, plaintext=_b64(b"x"))


def test_openbao_audit_device_records_requests_without_secrets(
    openbao: OpenBaoServer, transit_key: str
) -> None:
    marker = os.urandom(16)
    openbao.client().secrets.transit.encrypt_data(name=transit_key, plaintext=_b64(marker))
    assert openbao.audit_file is not None
    text = openbao.audit_file.read_text()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    paths = {e.get("request", {}).get("path") for e in lines}
    assert f"transit/encrypt/{transit_key}" in paths
    assert _b64(marker) not in text  # request data is HMAC'd by the audit device
    assert openbao.root_token not in text


def test_bad_token_is_refused(openbao: OpenBaoServer) -> None:
    client = openbao.client("not-a-token")
    assert client.is_authenticated() is False
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.transit.list_keys()


def test_repr_hides_secrets(openbao: OpenBaoServer, s3: SeaweedS3Server) -> None:
    assert openbao.root_token not in repr(openbao)
    assert "<hidden>" in repr(openbao)
    assert s3.secret_key not in repr(s3)
    assert "<hidden>" in repr(s3)
    issuer = JWTIssuer()
    assert "PRIVATE" not in repr(issuer)


def test_openbao_env_scrubbed_and_isolated(openbao: OpenBaoServer) -> None:
    assert openbao.workdir is not None
    assert (openbao.workdir.stat().st_mode & 0o077) == 0
    assert not (openbao.workdir / ".vault-token").exists()
    assert openbao.addr.startswith("http://127.0.0.1:")
    env = openbao.env()
    assert env == {"VAULT_ADDR": openbao.addr, "VAULT_TOKEN": openbao.root_token}


# ----------------------------------------------------------------------------- S3


def test_s3_multipart_upload_and_ranged_get(s3: SeaweedS3Server, bucket: str) -> None:
    client = s3.client()
    part1 = os.urandom(5 * 1024 * 1024)
    part2 = os.urandom(123_457)
    upload = client.create_multipart_upload(Bucket=bucket, Key="model.safetensors")
    etags = []
    for number, body in ((1, part1), (2, part2)):
        resp = client.upload_part(
            Bucket=bucket,
            Key="model.safetensors",
            UploadId=upload["UploadId"],
            PartNumber=number,
            Body=body,
        )
        etags.append({"PartNumber": number, "ETag": resp["ETag"]})
    client.complete_multipart_upload(
        Bucket=bucket,
        Key="model.safetensors",
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": etags},
    )
    whole = part1 + part2
    head = client.head_object(Bucket=bucket, Key="model.safetensors")
    assert head["ContentLength"] == len(whole)
    start, end = len(part1) - 100, len(part1) + 99  # spans the part boundary
    got = client.get_object(Bucket=bucket, Key="model.safetensors", Range=f"bytes={start}-{end}")
    assert got["Body"].read() == whole[start : end + 1]
    assert got["ContentRange"] == f"bytes {start}-{end}/{len(whole)}"


def test_s3_wrong_secret_rejected(s3: SeaweedS3Server, bucket: str) -> None:
    bad = s3.client(secret_key="wrong-" + s3.secret_key, retries=1)
    with pytest.raises(ClientError) as err:
        bad.put_object(Bucket=bucket, Key="x", Body=b"x")
    assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    unknown = s3.client(access_key="AKIANOBODY000000", retries=1)
    with pytest.raises(ClientError) as err:
        unknown.list_buckets()
    assert err.value.response["Error"]["Code"] == "InvalidAccessKeyId"


def test_s3_object_lock_refuses_delete_of_retained_version(s3: SeaweedS3Server, new_name) -> None:
    name = s3.make_bucket(new_name("locked"), object_lock=True)
    client = s3.client(retries=1)
    assert (
        client.get_object_lock_configuration(Bucket=name)["ObjectLockConfiguration"][
            "ObjectLockEnabled"
        ]
        == "Enabled"
    )
    until = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)
    put = client.put_object(
        Bucket=name,
        Key="audit/0001.jsonl",
        Body=b"{}\n",
        ObjectLockMode="COMPLIANCE",
        ObjectLockRetainUntilDate=until,
    )
    version = put["VersionId"]
    retention = client.get_object_retention(Bucket=name, Key="audit/0001.jsonl", VersionId=version)
    assert retention["Retention"]["Mode"] == "COMPLIANCE"
    with pytest.raises(ClientError) as err:
        client.delete_object(Bucket=name, Key="audit/0001.jsonl", VersionId=version)
    assert err.value.response["Error"]["Code"] == "AccessDenied"
    with pytest.raises(ClientError):
        client.put_object_retention(
            Bucket=name,
            Key="audit/0001.jsonl",
            VersionId=version,
            Retention={
                "Mode": "COMPLIANCE",
                "RetainUntilDate": until - datetime.timedelta(hours=1),
            },
        )
    body = client.get_object(Bucket=name, Key="audit/0001.jsonl", VersionId=version)["Body"]
    assert body.read() == b"{}\n"


def test_s3_writes_to_many_buckets(s3: SeaweedS3Server, new_name) -> None:
    # Each bucket is a SeaweedFS collection with its own volume. weed mini's default volume
    # cap follows the disk's free space (44 buckets on a 45 GB-free disk), and CI's suite
    # makes a bucket per test: past the cap every PutObject answered InternalError. The
    # launcher pins the volume size and cap, whatever the disk; 50 buckets pass the old cap.
    with urllib.request.urlopen(f"http://127.0.0.1:{s3.ports['master']}/dir/status") as resp:
        assert json.load(resp)["Topology"]["Max"] >= 1000
    client = s3.client(retries=1)
    for i in range(50):
        name = s3.make_bucket(new_name(f"many{i}"), object_lock=i % 2 == 0)
        client.put_object(Bucket=name, Key="k", Body=b"x")
        assert client.get_object(Bucket=name, Key="k")["Body"].read() == b"x"


# ----------------------------------------------------------------------------- KMS


def test_kms_data_key_with_encryption_context(kms: MotoKMSServer, kms_key: str) -> None:
    client = kms.client()
    ctx = {"weightguard:model": "model-a"}
    resp = client.generate_data_key(KeyId=kms_key, KeySpec="AES_256", EncryptionContext=ctx)
    assert len(resp["Plaintext"]) == 32
    out = client.decrypt(CiphertextBlob=resp["CiphertextBlob"], EncryptionContext=ctx)
    assert out["Plaintext"] == resp["Plaintext"]
    with pytest.raises(ClientError) as err:
        client.decrypt(
            CiphertextBlob=resp["CiphertextBlob"],
            EncryptionContext={"weightguard:model": "model-b"},
        )
    assert err.value.response["Error"]["Code"] == "InvalidCiphertextException"


# ----------------------------------------------------------------------------- auth stand-ins


def test_token_review_and_kubernetes_auth(
    openbao: OpenBaoServer, token_review: TokenReviewServer, new_name
) -> None:
    mount, role = new_name("k8s"), "inference"
    services.configure_kubernetes_auth(
        openbao.client(),
        token_review,
        role=role,
        service_accounts=["model-a"],
        namespaces=["serving"],
        policies=["default"],
        mount=mount,
    )
    anon = openbao.client(token="")
    ok = anon.auth.kubernetes.login(
        role=role, jwt=token_review.issue_token("serving", "model-a"), mount_point=mount
    )
    assert ok["auth"]["metadata"]["service_account_name"] == "model-a"
    with pytest.raises(hvac.exceptions.Forbidden):
        anon.auth.kubernetes.login(
            role=role, jwt=token_review.issue_token("serving", "model-b"), mount_point=mount
        )
    forged = JWTIssuer(token_review.issuer.issuer)  # right issuer name, wrong key
    fake = TokenReviewServer(forged)
    with pytest.raises(hvac.exceptions.VaultError):
        anon.auth.kubernetes.login(
            role=role, jwt=fake.issue_token("serving", "model-a"), mount_point=mount
        )
    assert token_review.reviews[-1]["authenticated"] is False


# ----------------------------------------------------------------------------- lifecycle


def test_launchers_leave_no_process_behind(tmp_path: Path) -> None:
    started: list[tuple[int, list[int]]] = []
    for server in (OpenBaoServer(transit_mount=None), MotoKMSServer(), SeaweedS3Server()):
        with server:
            assert server.pid is not None and server.running
            if isinstance(server, SeaweedS3Server):
                ports = list(server.ports.values()) + [p + 10000 for p in server.ports.values()]
                assert _port_open(server.ports["s3"])
            else:
                ports = [server.port]
                assert _port_open(server.port)
            pid = server.pid
            workdir = server.workdir
        assert not server.running
        started.append((pid, ports))
        assert workdir is not None and not workdir.exists()
    time.sleep(0.2)
    for pid, ports in started:
        assert pid in services.started_pids()
        assert pid not in services.live_pids()
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
        assert not any(_port_open(p) for p in ports)


def test_start_failure_names_the_log_file(tmp_path: Path) -> None:
    class BrokenBao(OpenBaoServer):
        def _command(self) -> list[str]:
            return [*super()._command(), "-no-such-flag"]

    server = BrokenBao(keep=True)
    server.start_timeout = 20
    with pytest.raises(ServiceError) as err:
        server.start()
    assert "openbao" in str(err.value)
    assert str(server.log_path) in str(err.value)
    assert server.log_path is not None and server.log_path.exists()
    assert server.pid is None
    assert not server.running
    assert server.root_token not in str(err.value)
    shutil.rmtree(server.log_path.parent, ignore_errors=True)


def test_module_main_runs_a_command_with_the_service_env(tmp_path: Path) -> None:
    import subprocess
    import sys

    probe = (
        "import os, boto3, hvac; "
        "c = hvac.Client(url=os.environ['VAULT_ADDR'], token=os.environ['VAULT_TOKEN']); "
        "assert c.is_authenticated(); "
        "s3 = boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL_S3']); "
        "print(sorted(b['Name'] for b in s3.list_buckets()['Buckets'])); "
        "print(os.environ['VAULT_ADDR'])"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VAULT_", "AWS_"))}
    env["HOME"] = str(tmp_path)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.support.services",
            "--no-kms",
            "--bucket",
            "demo-models",
            "--",
            sys.executable,
            "-c",
            probe,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    buckets, addr = proc.stdout.strip().splitlines()[-2:]
    assert buckets == "['demo-models']"
    assert addr.startswith("http://127.0.0.1:")
    assert "root_token=<hidden>" in proc.stderr
    port = int(addr.rsplit(":", 1)[1])
    assert not _port_open(port)
