"""End to end: run the rendered k8s manifests' commands against real local services.

There is no cluster here, so each container is run the way the kubelet would run it,
from the manifest rendered by ``kubectl kustomize``: its ``command`` + ``args``, its
environment (the ConfigMap via ``envFrom``, downward-API fields, the optional S3
credentials Secret) and its volume mounts.  Only locations change:

* paths: every ``mountPath`` prefix in args/env becomes a local directory --
  the projected service-account token -> a directory holding ``token``, a JWT issued by
  the local TokenReview stand-in for the pod's namespace/ServiceAccount with the
  projected audience and expiry; ``emptyDir: {medium: Memory}`` -> a tmpfs mount (or a
  directory under /dev/shm when mounting is not permitted); other emptyDirs and the
  staging claim -> temp directories; the trust ConfigMap -> its files;
  image paths: ``weightguard`` -> the virtualenv's entry point, ``python`` -> its
  interpreter (``WEIGHTGUARD_IMAGE_BIN``: a virtualenv built like the image),
  ``/app/serve.py`` -> ``k8s/image/serve.py`` (the Dockerfile's COPY);
* addresses: ``VAULT_ADDR`` -> the local OpenBao, ``AWS_ENDPOINT_URL_S3`` -> the local
  SeaweedFS, the server's ``--host`` -> 127.0.0.1 and ``--port`` -> a free port;
* ``--device cuda`` -> ``cpu`` when no GPU is present.

Vault is configured by ``k8s/vault/apply.sh`` (the script operators run), with
Kubernetes auth pointed at the TokenReview stand-in (TLS) and the JWT alternative at
its issuer key.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import importlib.util
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hvac
import pytest

from tests.support.k8s import (
    K8S,
    container,
    container_env,
    containers,
    find,
    mounts,
    pod_spec,
    quantity_bytes,
    render,
    workload,
)
from tests.support.services import OpenBaoServer, TokenReviewServer, free_port

MODEL = "demo-llm"
BIN = Path(sys.executable).parent  # the test's tools (the bao CLI that apply.sh runs)
# The image's environment: by default this virtualenv; tests/packaging/test_image.py points
# it at a virtualenv built the way the Dockerfile builds the image.
IMAGE_BIN = Path(os.environ.get("WEIGHTGUARD_IMAGE_BIN") or BIN)


def _cli_missing(*commands: str) -> str | None:
    """Why these `weightguard` sub-commands cannot run yet (None when they all can)."""
    from weightguard_cli.main import LAZY_COMMANDS

    missing = []
    for name in commands:
        module, attr = LAZY_COMMANDS[name][0].split(":")
        if importlib.util.find_spec(module) is None:
            missing.append(f"`weightguard {name}` ({module} not written yet)")
            continue
        if not hasattr(importlib.import_module(module), attr):
            missing.append(f"`weightguard {name}` ({module}:{attr} missing)")
    if missing:
        return "needs " + ", ".join(missing)
    return None


# ----------------------------------------------------------------------------- the "kubelet"


@dataclass
class Pod:
    """One rendered pod template, with its volumes materialised locally."""

    docs: tuple[dict[str, Any], ...]
    root: Path
    services: Services
    token_for: tuple[str, str] | None = None  # (namespace, sa) override: identity swap
    paths: dict[str, Path] = field(default_factory=dict)  # volume name -> local dir
    tmpfs: list[Path] = field(default_factory=list)
    mount: bool = True  # False: /dev/shm stand-ins, reachable by other users (no 0700 parents)

    @property
    def spec(self) -> dict[str, Any]:
        return pod_spec(self.docs)

    @property
    def namespace(self) -> str:
        ns: str = workload(self.docs)["metadata"]["namespace"]
        return ns

    def materialise(self, staging: Path | None = None) -> None:
        for vol in self.spec["volumes"]:
            name = vol["name"]
            local = self.root / "volumes" / name
            local.mkdir(parents=True, exist_ok=True)
            if "projected" in vol:
                (src,) = vol["projected"]["sources"]
                sat = src["serviceAccountToken"]
                ns, sa = self.token_for or (self.namespace, self.spec["serviceAccountName"])
                jwt = self.services.token_review.issue_token(
                    ns, sa, audience=sat["audience"], ttl_s=sat["expirationSeconds"]
                )
                (local / sat["path"]).write_text(jwt)
            elif "configMap" in vol:
                cm = find(self.docs, "ConfigMap", vol["configMap"]["name"])
                for key, value in cm["data"].items():
                    (local / key).write_text(value)
                if "release-signing.pub" in cm["data"]:  # what the operator puts there
                    shutil.copy(self.services.public_key, local / "release-signing.pub")
            elif "emptyDir" in vol:
                ed = vol["emptyDir"]
                if ed.get("medium") == "Memory":
                    self._mount_tmpfs(local, ed.get("sizeLimit", "64Mi"))
            elif "persistentVolumeClaim" in vol:
                assert staging is not None, f"claim {name} needs staging data"
                local.rmdir()
                local = staging
            else:
                raise AssertionError(f"volume type of {name} not handled")
            # a /dev/shm stand-in is reached through a link; a pod sees a real directory
            # (and destinations that are links are refused, as they should be)
            self.paths[name] = local.resolve() if local.is_symlink() else local

    def _mount_tmpfs(self, local: Path, size_limit: str) -> None:
        size = min(quantity_bytes(size_limit), 256 << 20)  # local stand-in, small models
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(local)],
            capture_output=True,
            timeout=30,
        ) if self.mount else None  # fmt: skip
        if res is not None and res.returncode == 0:
            self.tmpfs.append(local)
            return
        # No mount privilege: a directory on the /dev/shm tmpfs stands in.
        shm = Path("/dev/shm") / f"wg-k8s-{os.getpid()}-{local.name}-{id(self)}"
        shm.mkdir(mode=0o700)
        local.rmdir()
        local.symlink_to(shm)

    def cleanup(self) -> None:
        for mnt in self.tmpfs:
            subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30)
        for vol in (self.root / "volumes").glob("*"):
            if vol.is_symlink():
                shutil.rmtree(vol.resolve(), ignore_errors=True)

    # -- container -> local process

    def _map_path(self, c: dict[str, Any], value: str) -> str:
        for m in sorted(mounts(c).values(), key=lambda m: -len(m["mountPath"])):
            mp = m["mountPath"]
            if value == mp or value.startswith(mp + "/"):
                return str(self.paths[m["name"]]) + value[len(mp) :]
        return value

    def command(self, name: str, **replace_args: str) -> tuple[list[str], dict[str, str]]:
        c = container(self.spec, name)
        argv = [*c["command"], *c.get("args", [])]
        image_paths = {
            "weightguard": str(IMAGE_BIN / "weightguard"),
            "python": str(IMAGE_BIN / "python"),
            "/app/serve.py": str(K8S / "image" / "serve.py"),
        }
        out = []
        previous = ""
        for arg in argv:
            if previous in replace_args:
                arg = replace_args[previous]
            elif arg in image_paths:
                arg = image_paths[arg]
            else:
                arg = self._map_path(c, arg)
            out.append(arg)
            previous = arg
        fields = {
            "metadata.namespace": self.namespace,
            "metadata.name": f"{workload(self.docs)['metadata']['name']}-local",
            "metadata.uid": "00000000-0000-4000-8000-000000000000",
            "spec.serviceAccountName": self.spec["serviceAccountName"],
            "spec.nodeName": "local",
        }
        env = container_env(
            self.docs, c, fields, {"weightguard-s3-credentials": self.services.s3_credentials}
        )
        env = {k: self._map_path(c, v) for k, v in env.items()}
        if "VAULT_ADDR" in env:
            env["VAULT_ADDR"] = self.services.bao.addr
            env.pop("VAULT_CACERT", None)  # the local OpenBao speaks plain HTTP on loopback
        if "AWS_ENDPOINT_URL_S3" in env:
            env["AWS_ENDPOINT_URL_S3"] = self.services.s3.endpoint
        base = {"PATH": f"{IMAGE_BIN}:/usr/bin:/bin", "HOME": str(self.root / "home")}
        if IMAGE_BIN == BIN and os.environ.get("PYTHONPATH"):
            # the checkout under test, not the dev venv's installed copy (an image venv
            # runs exactly what it installed)
            base["PYTHONPATH"] = os.environ["PYTHONPATH"]
        (self.root / "home").mkdir(exist_ok=True)
        return out, {**base, **env}

    def run(self, name: str, **replace_args: str) -> subprocess.CompletedProcess[str]:
        argv, env = self.command(name, **replace_args)
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)


@dataclass
class Services:
    bao: OpenBaoServer
    token_review: TokenReviewServer
    s3: Any
    public_key: Path
    s3_credentials: dict[str, str]


def _assert_sealed_by_transit_checkpoint(stdout: str, services: Services) -> None:
    """The manifests sign checkpoints (WEIGHTGUARD_AUDIT_SIGNING_KEY): the pod's stdout
    log verifies with the Transit audit key's public keys, no record left unsigned."""
    from weightguard._internal.audit.checkpoint import load_vault_public_keys
    from weightguard._internal.audit.verify import verify_lines

    lines = [("-", i, (line + "\n").encode()) for i, line in enumerate(stdout.splitlines(), 1)]
    verifier = load_vault_public_keys(
        "vault://transit/weightguard-audit", client=services.bao.client()
    )
    res = verify_lines(lines, verifier=verifier, allow_foreign=True)
    assert res.ok and res.signed, res.describe()
    assert all(s.unsigned_tail == 0 and s.checkpoints_verified for s in res.logs), res.logs


def audit_events(stdout: str) -> list[dict[str, Any]]:
    events = []
    for line in stdout.splitlines():
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            if isinstance(obj, dict) and "event" in obj:
                events.append(obj)
    return events


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def services(s3: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    """A fresh OpenBao configured by k8s/vault/apply.sh, the TokenReview stand-in, S3."""
    work = tmp_path_factory.mktemp("k8s-vault")
    with OpenBaoServer(transit_mount=None) as bao, TokenReviewServer() as tr:
        (work / "ca.crt").write_text(tr.ca_pem)
        (work / "reviewer.jwt").write_text(tr.issue_token("vault", "vault-token-reviewer"))
        (work / "issuer.pem").write_text(tr.issuer.public_key_pem)
        pub = work / "release-signing.pub"
        res = apply_script(
            bao,
            "--model", MODEL,
            "--auth", "both",
            "--k8s-host", tr.url,
            "--k8s-ca-cert", str(work / "ca.crt"),
            "--token-reviewer-jwt-file", str(work / "reviewer.jwt"),
            "--jwt-issuer", tr.issuer.issuer,
            "--jwt-pubkey-file", str(work / "issuer.pem"),
            "--write-public-key", str(pub),
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        s3.make_bucket("models")
        creds = {k: v for k, v in s3.env().items() if k.startswith("AWS_") and "KEY" in k}
        yield Services(bao, tr, s3, pub, creds)


def apply_script(bao: OpenBaoServer, *args: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "HOME": "/nonexistent",
        "VAULT_ADDR": bao.addr,
        "VAULT_TOKEN": bao.root_token,
    }
    return subprocess.run(
        [str(K8S / "vault" / "apply.sh"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def pod_factory(services: Services, tmp_path: Path) -> Iterator[Any]:
    pods: list[Pod] = []

    def make(overlay: str, *, token_for: tuple[str, str] | None = None) -> Pod:
        pod = Pod(render(overlay), tmp_path / f"{overlay}-{len(pods)}", services, token_for)
        pods.append(pod)
        return pod

    yield make
    for pod in pods:
        pod.cleanup()


def login_response(
    services: Services, method: str, role: str, namespace: str, sa: str
) -> dict[str, Any]:
    client = services.bao.client(token="")
    jwt = services.token_review.issue_token(namespace, sa, audience="vault")
    if method == "kubernetes":
        resp: dict[str, Any] = client.auth.kubernetes.login(role=role, jwt=jwt)
    else:
        resp = client.auth.jwt.jwt_login(role=role, jwt=jwt)
    return resp


def login(services: Services, method: str, role: str, namespace: str, sa: str) -> hvac.Client:
    resp = login_response(services, method, role, namespace, sa)
    return services.bao.client(token=resp["auth"]["client_token"])


# ----------------------------------------------------------------------------- Vault side


@pytest.mark.parametrize("method", ["kubernetes", "jwt"])
def test_roles_bind_the_manifests_service_accounts(services: Services, method: str) -> None:
    for overlay in ("in-process", "init-container", "release"):
        docs = render(overlay)
        ns = workload(docs)["metadata"]["namespace"]
        sa = pod_spec(docs)["serviceAccountName"]
        cfg = container_env(docs, containers(pod_spec(docs))[0])
        role = cfg["WEIGHTGUARD_VAULT_ROLE"]
        auth = login_response(services, method, role, ns, sa)["auth"]
        expected = (
            "weightguard-release" if overlay == "release" else f"weightguard-inference-{MODEL}"
        )
        assert auth["policies"] == [expected]  # token_no_default_policy: nothing else
        assert auth["lease_duration"] <= 15 * 60
    # Another service account, or the right name in another namespace, is refused.
    for ns, sa in [("ml-inference", "default"), ("ml-release", "weightguard-inference")]:
        with pytest.raises(hvac.exceptions.VaultError):
            login(services, method, "weightguard-inference", ns, sa)
    with pytest.raises(hvac.exceptions.VaultError):
        login(services, method, "weightguard-release", "ml-inference", "weightguard-inference")


def test_policies_are_least_privilege_in_a_real_openbao(services: Services) -> None:
    root = services.bao.client()
    ctx = base64.b64encode(MODEL.encode()).decode()
    ct = root.secrets.transit.encrypt_data(
        name=f"wg-model-{MODEL}", plaintext=base64.b64encode(b"k" * 32).decode(), context=ctx
    )["data"]["ciphertext"]
    inference = login(services, "kubernetes", "weightguard-inference", "ml-inference",
                      "weightguard-inference")  # fmt: skip
    release = login(services, "kubernetes", "weightguard-release", "ml-release",
                    "weightguard-release")  # fmt: skip
    # inference: decrypt its model's key (batch too), nothing else
    batch = [{"ciphertext": ct, "context": ctx}]
    out = inference.write_data(f"transit/decrypt/wg-model-{MODEL}", data={"batch_input": batch})
    assert base64.b64decode(out["data"]["batch_results"][0]["plaintext"]) == b"k" * 32
    for path, data in [
        (f"transit/encrypt/wg-model-{MODEL}", {"plaintext": "AA==", "context": ctx}),
        (f"transit/rewrap/wg-model-{MODEL}", {"ciphertext": ct, "context": ctx}),
        ("transit/sign/wg-release-signing", {"input": "AA=="}),
        ("transit/decrypt/wg-model-other", {"ciphertext": ct, "context": ctx}),
        (f"transit/keys/wg-model-{MODEL}/rotate", {}),
    ]:
        with pytest.raises(hvac.exceptions.Forbidden):
            inference.write_data(path, data=data)
    # release: wrap and sign, never decrypt or rewrap
    assert release.write_data(
        f"transit/encrypt/wg-model-{MODEL}", data={"plaintext": "AA==", "context": ctx}
    )["data"]["ciphertext"].startswith("vault:v1:")
    sig = release.write_data("transit/sign/wg-release-signing/sha2-256", data={"input": "AA=="})
    assert sig["data"]["signature"].startswith("vault:v1:")
    for path, data in [
        (f"transit/decrypt/wg-model-{MODEL}", {"ciphertext": ct, "context": ctx}),
        (f"transit/decrypt/wg-model-{MODEL}", {"batch_input": batch}),
        (f"transit/rewrap/wg-model-{MODEL}", {"ciphertext": ct, "context": ctx}),
        (f"transit/keys/wg-model-{MODEL}/config", {"deletion_allowed": True}),
    ]:
        with pytest.raises(hvac.exceptions.Forbidden):
            release.write_data(path, data=data)


def test_pinned_context_policy_is_enforced_by_openbao(services: Services) -> None:
    """--pin-context: only the model's derivation context, and no batch_input."""
    model, role, sa = "pinned-llm", "wg-pinned", "pinned-server"
    res = apply_script(
        services.bao, "--model", model, "--pin-context", "--auth", "kubernetes",
        "--k8s-host", services.token_review.url,
        "--k8s-ca-cert", str(services.public_key.parent / "ca.crt"),
        "--token-reviewer-jwt-file", str(services.public_key.parent / "reviewer.jwt"),
        "--inference-role", role, "--inference-sa", sa,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    root = services.bao.client()

    def wrap(context: str) -> str:
        return str(
            root.secrets.transit.encrypt_data(
                name=f"wg-model-{model}",
                plaintext=base64.b64encode(b"d" * 32).decode(),
                context=base64.b64encode(context.encode()).decode(),
            )["data"]["ciphertext"]
        )

    client = login(services, "kubernetes", role, "ml-inference", sa)
    ok_ctx = base64.b64encode(model.encode()).decode()
    out = client.write_data(
        f"transit/decrypt/wg-model-{model}", data={"ciphertext": wrap(model), "context": ok_ctx}
    )
    assert base64.b64decode(out["data"]["plaintext"]) == b"d" * 32
    other = base64.b64encode(b"someone-else").decode()
    with pytest.raises(hvac.exceptions.Forbidden):
        client.write_data(
            f"transit/decrypt/wg-model-{model}",
            data={"ciphertext": wrap("someone-else"), "context": other},
        )
    with pytest.raises(hvac.exceptions.Forbidden):
        client.write_data(
            f"transit/decrypt/wg-model-{model}",
            data={"batch_input": [{"ciphertext": wrap("someone-else"), "context": other}]},
        )


def test_apply_script_is_idempotent_and_refuses_unsafe_names(services: Services) -> None:
    again = apply_script(
        services.bao, "--model", MODEL, "--auth", "kubernetes",
        "--k8s-host", services.token_review.url,
        "--k8s-ca-cert", str(services.public_key.parent / "ca.crt"),
        "--token-reviewer-jwt-file", str(services.public_key.parent / "reviewer.jwt"),
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "exists" in again.stderr
    bad = apply_script(services.bao, "--model", "x/../*", "--k8s-host", "https://h")
    assert bad.returncode == 1
    assert "--model 'x/../*' must be lowercase letters" in bad.stderr


# ----------------------------------------------------------------------------- the pods


def _write_model(staging: Path) -> dict[str, bytes]:
    import numpy as np
    from safetensors.numpy import save_file

    model = staging / MODEL
    model.mkdir(parents=True)
    rng = np.random.default_rng(7)
    save_file(
        {
            "embed.weight": rng.standard_normal((256, 64)).astype(np.float32),
            "head.weight": rng.standard_normal((64, 32)).astype(np.float16),
            "head.bias": np.arange(32, dtype=np.int32),
        },
        str(model / "model.safetensors"),
    )
    (model / "config.json").write_text(json.dumps({"model_type": "demo", "hidden_size": 64}))
    return {p.name: p.read_bytes() for p in model.iterdir()}


@pytest.fixture(scope="module")
def released(services: Services, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The release Job's three steps run as written: encrypt -> sign -> push."""
    why = _cli_missing("encrypt", "sign", "push")
    if why:
        pytest.skip(f"release Job cannot run: {why}")
    root = tmp_path_factory.mktemp("release")
    staging = root / "staging"
    original = _write_model(staging)
    pod = Pod(render("release"), root / "pod", services)
    pod.materialise(staging=staging)
    try:
        for step in ("encrypt", "sign", "push"):
            res = pod.run(step)
            assert res.returncode == 0, f"{step}: {res.stderr}"
            events = audit_events(res.stdout)
            if step in ("encrypt", "sign"):  # audit to stdout, as the manifest says
                assert [e["event"] for e in events if e["event"] != "checkpoint"] == [step]
                _assert_sealed_by_transit_checkpoint(res.stdout, services)
                assert all(e.get("outcome", "ok") == "ok" for e in events), events
            else:  # push: audited too, unsigned (no Vault token in that container)
                assert [(e["event"], e["outcome"]) for e in events] == [("push", "ok")]
        keys = {
            o["Key"]
            for o in services.s3.client().list_objects_v2(Bucket="models", Prefix=f"{MODEL}/v1/")[
                "Contents"
            ]
        }
        assert keys >= {f"{MODEL}/v1/{n}" for n in (*original, "model.sig")}
        # Ciphertext only: the pushed weights are not the plaintext.
        body = (
            services.s3.client()
            .get_object(Bucket="models", Key=f"{MODEL}/v1/model.safetensors")["Body"]
            .read()
        )
        assert body != original["model.safetensors"]
    finally:
        pod.cleanup()
    return original


def test_init_container_fetch_decrypts_into_tmpfs(
    released: dict[str, bytes], pod_factory: Any
) -> None:
    why = _cli_missing("fetch")
    if why:
        pytest.skip(f"init container cannot run: {why}")
    pod = pod_factory("init-container")
    pod.materialise()
    res = pod.run("fetch")
    assert res.returncode == 0, res.stderr
    fetch = container(pod.spec, "fetch")
    to = fetch["args"][fetch["args"].index("--output") + 1]
    out = Path(pod._map_path(fetch, to))
    # What the serving container sees through its read-only mount of the same volume.
    assert mounts(container(pod.spec, "server"))["models"]["mountPath"] == "/models"
    for name, data in released.items():
        assert (out / name).read_bytes() == data, name
        assert (out / name).stat().st_mode & 0o077 == 0, f"{name} readable by others"
    events = audit_events(res.stdout)
    names = [e["event"] for e in events]
    assert "key.unwrap" in names or "fetch" in names, names
    assert all(e.get("outcome") in (None, "ok") for e in events), events
    subject = json.dumps(events)
    assert "ml-inference" in subject and "weightguard-inference" in subject
    for data in released.values():  # no plaintext in the log
        assert data[-64:].hex() not in res.stdout


def test_init_container_refuses_another_service_account(
    released: dict[str, bytes], pod_factory: Any
) -> None:
    why = _cli_missing("fetch")
    if why:
        pytest.skip(f"init container cannot run: {why}")
    pod = pod_factory("init-container", token_for=("ml-release", "weightguard-release"))
    pod.materialise()
    res = pod.run("fetch")
    assert res.returncode == 1, res.stdout + res.stderr
    assert res.stderr.startswith("error: ") and len(res.stderr.strip().splitlines()) == 1
    assert "denied" in res.stderr.lower() or "not authorized" in res.stderr.lower()
    assert not any(pod.paths["models"].rglob("*.safetensors")), "plaintext left behind"
    denied = [e for e in audit_events(res.stdout) if e.get("outcome") not in (None, "ok")]
    assert denied, res.stdout


def test_init_container_works_with_jwt_auth(released: dict[str, bytes], pod_factory: Any) -> None:
    """The documented JWT alternative: only WEIGHTGUARD_VAULT_AUTH(_MOUNT) change."""
    why = _cli_missing("fetch")
    if why:
        pytest.skip(f"init container cannot run: {why}")
    pod = pod_factory("init-container")
    pod.materialise()
    argv, env = pod.command("fetch")
    env.update(WEIGHTGUARD_VAULT_AUTH="jwt", WEIGHTGUARD_VAULT_AUTH_MOUNT="jwt")
    res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    to = Path(argv[argv.index("--output") + 1])
    assert (to / "model.safetensors").read_bytes() == released["model.safetensors"]


def test_in_process_server_loads_and_serves(released: dict[str, bytes], pod_factory: Any) -> None:
    import torch

    pod = pod_factory("in-process")
    pod.materialise()
    port = free_port()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    argv, env = pod.command("server", **{"--host": "127.0.0.1", "--port": str(port),
                                         "--device": device})  # fmt: skip
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        summary = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            url = f"http://127.0.0.1:{port}/v1/model"
            with (
                contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
                urllib.request.urlopen(url, timeout=2) as r,
            ):
                summary = json.loads(r.read())
                break
            time.sleep(0.3)
        assert summary is not None, "server never became ready"
        from safetensors import safe_open

        staging = pod.root / "orig.safetensors"
        staging.write_bytes(released["model.safetensors"])
        with safe_open(str(staging), "np") as f:
            expected = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        assert {k: v["shape"] for k, v in summary["tensors"].items()} == expected
    finally:
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    names = [e["event"] for e in audit_events(stdout)]
    assert "load.ok" in names, names


# ----------------------------------------------------------------------------- KServe


def kserve_pod(storage_uri: str) -> tuple[dict[str, Any], ...]:
    """The predictor pod KServe builds from k8s/kserve: the ClusterStorageContainer's
    container as the ``storage-initializer`` init container with KServe's two arguments
    and the model volume at /mnt/models (what its storage-initializer injector does),
    the predictor's volumes and security context."""
    from tests.support.k8s import render_kserve

    docs = render_kserve()
    csc = find(docs, "ClusterStorageContainer", "weightguard")
    isvc = find(docs, "InferenceService")
    pred = isvc["spec"]["predictor"]
    init = copy.deepcopy(csc["spec"]["container"])
    init["args"] = [storage_uri, "/mnt/models"]
    init.setdefault("volumeMounts", []).append(
        {"name": "kserve-provision-location", "mountPath": "/mnt/models"}
    )
    server = {
        "name": "kserve-container",
        "image": "kserve/huggingfaceserver",
        "volumeMounts": [
            {"name": "kserve-provision-location", "mountPath": "/mnt/models", "readOnly": True}
        ],
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": f"{isvc['metadata']['name']}-predictor",
            "namespace": isvc["metadata"]["namespace"],
        },
        "spec": {
            "template": {
                "spec": {
                    "serviceAccountName": pred["serviceAccountName"],
                    "securityContext": pred["securityContext"],
                    "initContainers": [init],
                    "containers": [server],
                    "volumes": pred["volumes"],
                }
            }
        },
    }
    return (deployment, *(d for d in docs if d["kind"] == "ConfigMap"))


def _kserve_command(pod: Pod) -> tuple[list[str], dict[str, str]]:
    argv, env = pod.command("storage-initializer")
    script = BIN / "weightguard-storage-initializer"
    if argv[0] == "weightguard-storage-initializer":  # the image's console script
        argv[:1] = [str(script)] if script.exists() else [
            sys.executable, "-m", "weightguard_cli.storage_initializer"
        ]  # fmt: skip
    return argv, env


def test_kserve_storage_initializer_decrypts_for_the_model_server(
    released: dict[str, bytes], services: Services, tmp_path: Path
) -> None:
    from tests.support.k8s import render_kserve

    uri = find(render_kserve(), "InferenceService")["spec"]["predictor"]["model"]["storageUri"]
    pod = Pod(kserve_pod(uri), tmp_path / "kserve", services, mount=False)
    pod.materialise()
    try:
        volume = Path(os.path.realpath(pod.paths["kserve-provision-location"]))
        fs_group = pod.spec["securityContext"]["fsGroup"]
        os.chown(volume, -1, fs_group)  # what the kubelet does for fsGroup
        os.chmod(volume, 0o2770)
        argv, env = _kserve_command(pod)
        assert argv[-2:] == [uri, str(pod.paths["kserve-provision-location"])]
        res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
        for name, data in released.items():
            f = volume / name
            assert f.read_bytes() == data, name
            st = f.stat()
            assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == fs_group, name
        events = [e["event"] for e in audit_events(res.stdout)]
        assert "verify.ok" in events and "key.unwrap" in events and "fetch" in events
        assert all(stat.S_IMODE(a.stat().st_mode) & 0o001 for a in volume.parents)
        # The model server: another user, in the pod's fsGroup, reads every file.
        server_uid = pod.spec["securityContext"]["runAsUser"]
        init_uid = container(pod.spec, "storage-initializer")["securityContext"]["runAsUser"]
        assert server_uid != init_uid
        read = subprocess.run(
            ["/bin/cat", *(str(volume / n) for n in released)],
            user=server_uid, group=fs_group, extra_groups=[], capture_output=True,
            timeout=30,
        )  # fmt: skip
        assert read.returncode == 0, read.stderr
        assert read.stdout == b"".join(released[n] for n in released)
        stranger = subprocess.run(
            ["/bin/cat", str(volume / "model.safetensors")],
            user=20000, group=20000, extra_groups=[], capture_output=True, timeout=30,
        )  # fmt: skip
        assert stranger.returncode != 0  # not in the fsGroup: nothing
    finally:
        pod.cleanup()


def test_kserve_storage_initializer_refuses_a_key_not_allowed(
    released: dict[str, bytes], services: Services, tmp_path: Path
) -> None:
    pod = Pod(kserve_pod("weightguard+s3://models/demo-llm/v1/"), tmp_path / "k", services)
    pod.materialise()
    try:
        argv, env = _kserve_command(pod)
        env["WEIGHTGUARD_ALLOW_KEY"] = "vault://transit/wg-model-other"
        res = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300)
        assert res.returncode == 1, res.stdout
        (line,) = res.stderr.strip().splitlines()
        assert (
            "names key 'vault://transit/wg-model-demo-llm', which is not in the allowed keys"
            in line
        )
        out = Path(os.path.realpath(pod.paths["kserve-provision-location"]))
        assert not any(out.rglob("*.safetensors")), "plaintext left behind"
        denied = [e for e in audit_events(res.stdout) if e.get("outcome") == "denied"]
        assert denied and "KeyAccessDenied" in denied[-1]["reason"]
    finally:
        pod.cleanup()
