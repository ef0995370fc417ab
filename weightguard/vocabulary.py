"""One vocabulary: each concept's CLI option, environment variable and Python keyword.

The one table (:data:`TERMS`) of what a setting is called where: the option of the
``weightguard`` command line, the variable the integrations read (vLLM, KServe:
``WEIGHTGUARD_`` + the setting's key upper case) and the Python keyword (the option
without its dashes, ``-`` -> ``_``: ``--data-key`` -> ``data_key=``).  docs/cli.md
shows it (the CLI's docgen adds which commands take each option);
tests/cli/test_vocabulary.py and tests/foundation/test_keywords.py hold the code to it.

Hints (:attr:`weightguard.errors.WeightguardError.hint`) are written once, naming
options (``--signature``, ``--allow-disk``); whoever reads them is told them in their
own words: ``str(exc)`` retells each option as the Python keyword that does the same
(:data:`TOLD`), unless the reader is the command line, which says so once at its
entry (``with speaking("cli"):``).  The integrations (vLLM, KServe) retell hints into
their variables themselves, in place, at their boundary
(:func:`weightguard.integrations._settings.retold`), with the same :func:`retell`.

The bottom of the package: the standard library only (``weightguard.errors`` imports
it).
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Collection, Iterator, Mapping
from contextvars import ContextVar
from typing import NamedTuple

__all__ = [
    "RENAMED_KEYWORDS",
    "TERMS",
    "TOLD",
    "UNTOLD",
    "Term",
    "retell",
    "speaking",
    "told",
]


class Term(NamedTuple):  # not a dataclass: errors imports this module (import cost)
    concept: str
    option: str  # the CLI spelling (its old spellings: docs/cli.md, "Renamed options")
    env: str = ""  # environment variable (integrations: vLLM, KServe, Kubernetes)
    python: tuple[str, ...] = ()  # "module:function(keyword)" taking the same thing
    # Why a Python keyword of ``python`` is not the option's spelling ("" = it is), or
    # why there is none.
    differs: str = ""
    # How a hint naming the option is told to a Python caller ("" = it has no Python
    # spelling: the clause naming it is left out).
    told: str = ""


_TRUST = "weightguard.policy:trust_policy"

TERMS: tuple[Term, ...] = (
    Term(
        "trusted signer public key",
        "--trust-key",
        "WEIGHTGUARD_TRUST_KEY",
        (f"{_TRUST}(trust_key)",),
        told="policy=PublicKey.from_file(...)",
    ),
    Term(
        "trusted CA root (then intermediates)",
        "--trust-chain",
        "WEIGHTGUARD_TRUST_CHAIN",
        (f"{_TRUST}(trust_chain)",),
        told="policy=ChainRoot(...)",
    ),
    Term(
        "an intermediate CA as the chain's anchor",
        "--trust-intermediate",
        "",
        ("weightguard.policy:ChainRoot(allow_intermediate_anchor)",),
        "the policy's own argument, as the trust anchor records it",
        "ChainRoot(allow_intermediate_anchor=True)",
    ),
    Term(
        "trusted Vault Transit signing key",
        "--trust-vault-key",
        "WEIGHTGUARD_TRUST_VAULT_KEY",
        (f"{_TRUST}(trust_vault_key)",),
        told="policy=vault_key_policy(...)",
    ),
    Term(
        "Sigstore identity",
        "--identity",
        "WEIGHTGUARD_TRUST_IDENTITY",
        (f"{_TRUST}(identity)",),
        told="policy=SigstoreIdentity(...)",
    ),
    Term(
        "Sigstore OIDC issuer",
        "--issuer",
        "WEIGHTGUARD_TRUST_ISSUER",
        (f"{_TRUST}(issuer)",),
        told="policy=SigstoreIdentity(...)",
    ),
    Term(
        "Sigstore trusted root",
        "--trust-root",
        "WEIGHTGUARD_TRUST_ROOT",
        (f"{_TRUST}(trust_root)",),
        told="SigstoreIdentity(trust_root=...)",
    ),
    Term(
        "every trusted signer required (co-signed)",
        "--require-all",
        "",
        (f"{_TRUST}(require_all)",),
        told="policy=CoSigned(...)",
    ),
    Term(
        "skip signature verification (unsafe)",
        "--unsafe-no-verification",
        "",
        (f"{_TRUST}(unsafe_no_verification)",),
        told="policy=UnsafeNoVerification()",
    ),
    Term(
        "signature bundle",
        "--signature",
        "",
        (
            "weightguard.signing:sign_model(signature)",
            "weightguard.verifying:verify_bundle(signature)",
            "weightguard.loader:load_file(signature)",
        ),
        told="signature=",
    ),
    Term(
        "unsigned files allowed (glob or path)",
        "--allow-unsigned",
        "",
        ("weightguard.verifying:verify_bundle(allow_unsigned)",),
        told="allow_unsigned=[...]",
    ),
    Term(
        "signing key (EC private key PEM)",
        "--signing-key",
        "",
        ("weightguard.signing:CertificateSigner.from_files(signing_key)",),
    ),
    Term(
        "signing certificate",
        "--signing-cert",
        "",
        ("weightguard.signing:CertificateSigner.from_files(signing_cert)",),
    ),
    Term(
        "certificates sent with the signing certificate",
        "--signing-chain",
        "",
        ("weightguard.signing:CertificateSigner.from_files(signing_chain)",),
    ),
    Term(
        "Vault Transit signing key (signs)",
        "--signing-vault-key",
        "",
        ("weightguard.signing:VaultTransitSigner(uri)",),
        "the signer object is the setting: sign_model(signer=VaultTransitSigner(uri))",
    ),
    Term(
        "password of an encrypted signing key",
        "--password-env",
        "",
        ("weightguard.signing:KeySigner.from_file(password)",),
        "the CLI names the variable holding it; Python passes the password itself",
    ),
    Term(
        "Sigstore OIDC token (signs)",
        "--identity-token",
        "",
        ("weightguard.signing:SigstoreSigner(identity_token)",),
        told="SigstoreSigner(identity_token=...)",
    ),
    Term(
        "a co-signature beside the primary bundle",
        "--co-sign",
        "",
        (),
        "sign_model writes a co-signature when the primary bundle exists",
    ),
    Term(
        "chunk digest of signatures (blake3, sha256)",
        "--chunk-digest",
        "",
        ("weightguard.signing:sign_model(chunk_algorithm)",),
        "the algorithm's full name: blake3-chunked-v1, sha256-chunked-v1",
        "chunk_algorithm=",
    ),
    Term(
        "chunk size (4MiB, 65536)",
        "--chunk-size",
        "",
        (
            "weightguard.crypt:encrypt_model(chunk_size)",
            "weightguard.signing:sign_model(chunk_size)",
        ),
    ),
    Term(
        "data key (key provider URI)",
        "--data-key",
        "",
        (
            "weightguard.crypt:encrypt_model(data_key)",
            "weightguard.crypt:decrypt_model(data_key)",
            "weightguard.crypt:rewrap(data_key)",
            "weightguard.crypt:inspect(data_key)",
            "weightguard.loader:load_file(data_key)",
        ),
        told="data_key=",
    ),
    Term(
        "new data key (rewrap)",
        "--new-data-key",
        "",
        ("weightguard.crypt:rewrap(new_data_key)",),
        told="new_data_key=",
    ),
    Term(
        "data keys allowed (URI patterns)",
        "--allow-key",
        "WEIGHTGUARD_ALLOW_KEY",
        (
            "weightguard.crypt:decrypt_model(allow_key)",
            "weightguard.crypt:rewrap(allow_key)",
            "weightguard.crypt:inspect(allow_key)",
            "weightguard.loader:load_file(allow_key)",
        ),
        told="allow_key=[...]",
    ),
    Term(
        "model identity bound to the data key",
        "--context",
        "",
        ("weightguard.crypt:encrypt_model(context)", "weightguard.crypt:rewrap(context)"),
        told="context=",
    ),
    Term(
        "tensor table encrypted too",
        "--encrypt-header",
        "",
        ("weightguard.crypt:encrypt_model(encrypt_header)",),
        told="encrypt_header=True",
    ),
    Term(
        "audit checkpoint public key",
        "--checkpoint-key",
        "",
        ("weightguard.audit:verify_log(checkpoint_key)",),
        told="checkpoint_key=",
    ),
    Term(
        "audit checkpoint Vault Transit key",
        "--checkpoint-vault-key",
        "",
        ("weightguard.audit:verify_log(checkpoint_vault_key)",),
        told="checkpoint_vault_key=",
    ),
    Term(
        "audit logs expected (ids)",
        "--log-id",
        "",
        ("weightguard.audit:verify_log(log_ids)",),
        "a list: the option is repeated, once per log",
        "log_ids=[...]",
    ),
    Term(
        "unsigned records accepted at a live log's end",
        "--max-unsigned-tail",
        "",
        ("weightguard.audit:verify_log(max_unsigned_tail)",),
        told="max_unsigned_tail=",
    ),
    Term(
        "accept an audit log without checkpoint signatures",
        "--allow-unsigned-log",
    ),
    Term(
        "audit log destination",
        "--audit-log",
        "WEIGHTGUARD_AUDIT_LOG",
        ("weightguard.loader:load_file(audit)",),
        "Python takes an open AuditLog object (audit=AuditLog.open(destination)), "
        "not a destination",
        "audit=",
    ),
    Term(
        "replace an existing output",
        "--replace",
        "",
        (
            "weightguard.signing:sign_model(replace)",
            "weightguard.transfer:fetch_model(replace)",
            "weightguard.transfer:push_model(replace)",
            "weightguard.watermark:embed_file(replace)",
        ),
        told="replace=True",
    ),
    Term(
        "write weights to a disk-backed destination",
        "--allow-disk",
        "WEIGHTGUARD_ALLOW_DISK",
        ("weightguard.transfer:fetch_model(allow_disk)",),
        told="allow_disk=True",
    ),
    Term(
        "S3 endpoint",
        "--endpoint-url",
        "",
        ("weightguard.transfer:push_model(endpoint_url)",),
        told="endpoint_url=",
    ),
    Term(
        "the owner's unmarked weights (watermark check)",
        "--original",
        "",
        ("weightguard.watermark:check(original)",),
        told="original=",
    ),
    Term("no progress display", "--quiet"),
    Term("machine-readable output", "--json"),
)

# Python keywords renamed to the concept's spelling: (function, old, new).  The old
# keyword is accepted until the next release, with a FutureWarning
# (weightguard._internal.foundation.keywords.renamed_keywords).
RENAMED_KEYWORDS: tuple[tuple[str, str, str], ...] = (
    ("weightguard.policy:trust_policy", "public_keys", "trust_key"),
    ("weightguard.policy:trust_policy", "chain", "trust_chain"),
    ("weightguard.policy:trust_policy", "vault_key", "trust_vault_key"),
    ("weightguard.policy:trust_policy", "unsafe", "unsafe_no_verification"),
    ("weightguard.audit:verify_log", "vault_key", "checkpoint_vault_key"),
    ("weightguard.signing:CertificateSigner.from_files", "key_path", "signing_key"),
    ("weightguard.signing:CertificateSigner.from_files", "cert_path", "signing_cert"),
    ("weightguard.signing:CertificateSigner.from_files", "chain_paths", "signing_chain"),
    ("weightguard.watermark:embed_file", "overwrite", "replace"),
    ("weightguard.crypt:encrypt_file", "key_uri", "data_key"),
    ("weightguard.crypt:encrypt_bytes", "key_uri", "data_key"),
    ("weightguard.crypt:encrypt_model", "key_uri", "data_key"),
    ("weightguard.crypt:decrypt_file", "key_uri", "data_key"),
    ("weightguard.crypt:decrypt_file", "allowed_keys", "allow_key"),
    ("weightguard.crypt:decrypt_model", "key_uri", "data_key"),
    ("weightguard.crypt:decrypt_model", "allowed_keys", "allow_key"),
    ("weightguard.crypt:rewrap", "to_uri", "new_data_key"),
    ("weightguard.crypt:rewrap", "key_uri", "data_key"),
    ("weightguard.crypt:rewrap", "allowed_keys", "allow_key"),
    ("weightguard.crypt:inspect", "key_uri", "data_key"),
    ("weightguard.crypt:inspect", "allowed_keys", "allow_key"),
    ("weightguard.integrations.vllm:Options.__init__", "allowed_keys", "allow_key"),
    *(
        (f, old, new)
        for f in (
            "weightguard.loader:open_model",
            "weightguard.loader:load_file",
            "weightguard.loader:load_model",
            "weightguard.transfer:fetch_model",
            "weightguard.lazy:safe_open",
            "weightguard.lazy:SafeOpen.__init__",
            "weightguard.integrations.peft:from_pretrained",
            "weightguard.integrations.safetensors:enable",
        )
        for old, new in (("key", "data_key"), ("allowed_keys", "allow_key"))
    ),
)

# How a hint's option is told to a Python caller: the keyword (with what it takes) of
# the public functions that do the same (TERMS' ``told``; a value the option takes gets
# its own entry).  An option of TERMS without one (UNTOLD) has no Python equivalent:
# :func:`retell` leaves the clause naming it out.  Any other option (vLLM's, pip's) is
# kept as written.
TOLD: Mapping[str, str] = {
    **{t.option: t.told for t in TERMS if t.told},
    "--chunk-digest sha256": 'chunk_algorithm="sha256-chunked-v1"',
}
TOLD_FALLBACK = "see the function's keyword arguments"
UNTOLD: Mapping[str, str] = {t.option: t.differs for t in TERMS if not t.told}

# An option as hints write it, with what follows it (kept when the spelling says "=").
_OPTION = re.compile(r"--[a-z][a-z0-9-]*(?: (?:sha256|[A-Z][A-Z_]*)\b)?")
_CLAUSES = re.compile(r",\s*or\s+|;\s*|,\s*(?=give |pass |use |set )")
_COMMAND = re.compile(r"`?weightguard [a-z]")


def retell(
    hint: str,
    names: Mapping[str, str],
    fallback: str,
    *,
    env_prefix: str = "",
    drop: Collection[str] | None = None,
) -> str:
    """``hint`` in another vocabulary: each option it names becomes ``names[option]``
    (tried with what follows it first: ``--chunk-digest sha256``, then alone); a
    clause naming an option ``names`` lacks is dropped (with ``drop``: only one of
    those, other options are kept as written); nothing left -> ``fallback``.
    A clause that names a ``weightguard`` command is kept as written (it tells the
    reader to run the command line).  ``env_prefix``: spellings starting with it are
    variables, which take the option's value as ``VAR=VALUE``."""
    if "--" not in hint:
        return hint
    kept: list[str] = []
    for clause in _CLAUSES.split(hint):
        if _COMMAND.search(clause):
            kept.append(clause.strip())
            continue

        def swap(m: re.Match[str]) -> str:
            whole = m.group(0)
            if whole in names:
                return names[whole]
            opt, _, meta = whole.partition(" ")
            spelled = names.get(opt)
            if spelled is None:
                if drop is not None and opt not in drop:
                    return whole  # another program's option (vLLM's, pip's)
                raise KeyError(opt)
            if not meta:
                return spelled
            if env_prefix and spelled.startswith(env_prefix):
                return f"{spelled}={meta}"
            return spelled if meta.isupper() else f"{spelled} {meta}"

        try:
            new = _OPTION.sub(swap, clause)
        except KeyError:
            continue
        # "WEIGHTGUARD_X=PATTERN or WEIGHTGUARD_X" -> "WEIGHTGUARD_X=PATTERN"
        new = re.sub(r"\b([A-Z_]{4,})(=\S+)? or \1\b", r"\1\2", new)
        for spelled in set(names.values()):  # two options told the same: say it once
            new = new.replace(f"{spelled} and {spelled}", spelled)
        kept.append(new.strip())
    return ", or ".join(k for k in kept if k) or fallback


_VOICE: ContextVar[str | None] = ContextVar("weightguard_voice", default=None)
VOICES = ("python", "cli")
# The voice of threads that set none: a load's worker threads start with an empty
# context, and an error they word (``f"...: {exc}"``) must read like the program's:
# the latest speaking() still running, in any thread (one entry per call, so calls
# in several threads ending in any order leave those still running; none: "python").
_PROGRAM: dict[object, str] = {}


@contextlib.contextmanager
def speaking(voice: str) -> Iterator[None]:
    """Hints rendered inside are told to ``voice``: ``"python"`` (the default: the
    keywords of the public functions) or ``"cli"`` (the options, as written).  The
    program's voice for its duration, its worker threads included: the command line
    says ``"cli"`` once, at its entry."""
    if voice not in VOICES:
        raise ValueError(f"voice must be one of {VOICES}, not {voice!r}")
    token = _VOICE.set(voice)
    entry = object()
    _PROGRAM[entry] = voice
    try:
        yield
    finally:
        del _PROGRAM[entry]
        _VOICE.reset(token)


def told(hint: str) -> str:
    """``hint`` in the words of whoever reads it now (:func:`speaking`)."""
    if not hint or "--" not in hint:
        return hint
    voice = _VOICE.get()
    if voice is None:
        running = list(_PROGRAM.values())  # one step under the GIL
        voice = running[-1] if running else "python"
    if voice == "cli":
        return hint
    return retell(hint, TOLD, TOLD_FALLBACK, drop=UNTOLD)
