"""Every shipped manifest sets WEIGHTGUARD_ALLOW_KEY for every weightguard container.

Without it an artifact's (unauthenticated) header could point a pod at any ``vault://``
or ``awskms://`` key its credentials reach (README, docs/threat-model.md); the pattern
must admit the deployment's model keys and nothing else it holds (audit, signing keys).
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.k8s import (
    OVERLAYS,
    container_env,
    containers,
    find,
    pod_spec,
    render,
    render_kserve,
    tool,
)
from weightguard._internal.keys.providers import choose_key_uri
from weightguard.errors import KeyAccessDenied

pytestmark = pytest.mark.skipif(tool("kubectl") is None, reason="kubectl not installed")

MODEL_KEY = "vault://transit/wg-model-demo-llm"  # what overlays/release encrypts with
NOT_MODEL_KEYS = (
    "vault://transit/weightguard-audit",
    "vault://transit/wg-release-signing",
    "vault://transit/other-team",
    "awskms://alias/anything",
)


def _patterns(env: dict[str, str], where: str) -> str:
    value = env.get("WEIGHTGUARD_ALLOW_KEY", "")
    assert value.strip(), f"{where}: WEIGHTGUARD_ALLOW_KEY is not set"
    return value


def _check(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEIGHTGUARD_ALLOW_KEY", raising=False)
    assert choose_key_uri(MODEL_KEY, allowed=value.split(",")) == MODEL_KEY
    for other in NOT_MODEL_KEYS:
        with pytest.raises(KeyAccessDenied, match="not in the allowed keys"):
            choose_key_uri(other, allowed=value.split(","))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_container_has_an_allow_list(
    overlay: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    docs = render(overlay)
    spec = pod_spec(docs)
    every: list[dict[str, Any]] = [*spec.get("initContainers", []), *containers(spec)]
    ours = [c for c in every if "/weightguard/" in c["image"]]  # not a plain server's
    assert ours
    for c in ours:
        _check(_patterns(container_env(docs, c), f"{overlay}/{c['name']}"), monkeypatch)


def test_kserve_initializer_has_an_allow_list(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render_kserve()
    c = find(docs, "ClusterStorageContainer", "weightguard")["spec"]["container"]
    _check(_patterns(container_env(docs, c), "kserve/storage-initializer"), monkeypatch)
