"""Preflight checks for a pod or a workstation (`weightguard doctor`).

Each check yields one :class:`Check` with status ``ok``, ``warn`` or ``fail`` and a
one-line reason.  Checks never raise and never print a token or a secret key:
configuration problems become a ``fail`` line, not a traceback.

Checks (names usable with ``only=``):

* ``python``       -- Python >= 3.11
* ``torch``        -- torch importable; ``cuda``: CUDA devices (warn when none)
* ``cryptography`` -- AESGCM with ``encrypt_into``/``decrypt_into`` (zero-copy AEAD)
* ``vault``        -- VAULT_ADDR reachable (``sys/health``) and ``vault.auth``: the
                      configured credentials log in and ``lookup-self`` succeeds
* ``s3``           -- endpoint from ``AWS_ENDPOINT_URL_S3``/``AWS_ENDPOINT_URL``,
                      credentials present and accepted (ListBuckets, or HeadBucket of
                      ``bucket``/``WEIGHTGUARD_S3_BUCKET``)
* ``shm``          -- /dev/shm is a tmpfs (the init-container pattern writes plaintext there)
* ``audit``        -- where audit events go and whether checkpoints are signed (and
                      anchored); an unsigned log is a warning that says what it cannot
                      prove
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from weightguard._internal.foundation.extras import install_command
from weightguard.errors import WeightguardError

__all__ = ["CHECK_NAMES", "Check", "missing_extra", "run_checks", "summarize"]

Status = Literal["ok", "warn", "fail"]
CHECK_NAMES = ("python", "torch", "cryptography", "vault", "s3", "shm", "audit")


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------------- checks


def check_python() -> list[Check]:
    v = sys.version_info
    version = f"{v.major}.{v.minor}.{v.micro}"
    if (v.major, v.minor) >= (3, 11):
        return [Check("python", "ok", f"Python {version} ({sys.executable})")]
    return [Check("python", "fail", f"Python {version} is too old; weightguard needs >= 3.11")]


def check_torch() -> list[Check]:
    try:
        import torch
    except ImportError:
        # A release job or an auditor runs the core install, without torch: only load
        # and watermark need it, so this is not a failure of the machine.
        hint = f"needed by load and watermark only; `{install_command('torch')}`"
        return [Check("torch", "warn", f"torch is not installed ({hint})")]
    except Exception as exc:  # broken install (missing CUDA libs ...)
        return [Check("torch", "fail", f"import torch failed: {_one_line(str(exc), 200)}")]
    out = [Check("torch", "ok", f"torch {torch.__version__}")]
    try:
        available = bool(torch.cuda.is_available())
    except Exception as exc:
        return [*out, Check("cuda", "warn", f"CUDA probe failed: {_one_line(str(exc), 200)}")]
    if not available:
        built = getattr(torch.version, "cuda", None)
        why = "torch is a CPU-only build" if not built else f"torch built for CUDA {built}"
        return [*out, Check("cuda", "warn", f"no CUDA device available ({why}); loads go to CPU")]
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return [
        *out,
        Check(
            "cuda",
            "ok",
            f"{len(names)} device(s): " + ", ".join(f"cuda:{i} {n}" for i, n in enumerate(names)),
        ),
    ]


def check_cryptography() -> list[Check]:
    try:
        import cryptography
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        return [Check("cryptography", "fail", "cryptography is not installed")]
    missing = [m for m in ("encrypt_into", "decrypt_into") if not hasattr(AESGCM, m)]
    if missing:
        return [
            Check(
                "cryptography",
                "fail",
                f"cryptography {cryptography.__version__} AESGCM lacks {', '.join(missing)}; "
                "upgrade cryptography",
            )
        ]
    return [
        Check(
            "cryptography",
            "ok",
            f"cryptography {cryptography.__version__}, AESGCM encrypt_into/decrypt_into",
        )
    ]


def check_vault(env: Mapping[str, str], timeout: float) -> list[Check]:
    addr = (env.get("VAULT_ADDR") or "").strip()
    if not addr:
        return [Check("vault", "warn", "VAULT_ADDR not set; Vault/OpenBao keys unavailable")]
    try:
        import requests
    except ImportError:
        return [Check("vault", "fail", "the requests/hvac packages are not installed")]
    from weightguard._internal.foundation.vault import lookup_self, map_vault_error, vault_client

    ca = env.get("VAULT_CACERT") or None
    if ca and not Path(ca).is_file():
        return [Check("vault", "fail", f"VAULT_CACERT file {ca} does not exist")]
    if not addr.startswith(("http://", "https://")):
        return [Check("vault", "fail", f"VAULT_ADDR {addr!r} is not an http(s):// URL")]
    t0 = time.monotonic()
    try:
        resp = requests.get(
            addr.rstrip("/") + "/v1/sys/health",
            params={"standbyok": "true", "perfstandbyok": "true"},
            timeout=timeout,
            verify=ca or True,
        )
    except requests.RequestException as exc:
        err = map_vault_error(exc, "checking sys/health", addr=addr)
        return [Check("vault", "fail", _one_line(str(err)))]
    ms = (time.monotonic() - t0) * 1000
    try:
        health = resp.json()
    except ValueError:
        health = {}
    if not isinstance(health, dict) or "sealed" not in health:
        return [Check("vault", "fail", f"{addr} answered HTTP {resp.status_code} but is not Vault")]
    if health.get("sealed"):
        return [Check("vault", "fail", f"Vault at {addr} is sealed; unseal it")]
    version = health.get("version", "?")
    out = [Check("vault", "ok", f"{addr} reachable, unsealed, version {version} ({ms:.0f} ms)")]
    try:
        client = vault_client(environ=env, timeout=timeout)
        info = lookup_self(client)
    except WeightguardError as exc:
        return [*out, Check("vault.auth", "fail", _one_line(str(exc)))]
    except Exception as exc:  # never a traceback
        return [*out, Check("vault.auth", "fail", f"unexpected {type(exc).__name__}")]
    ttl = info.get("ttl")
    ttl_text = "no expiry" if not ttl else f"ttl {int(ttl)} s"
    status: Status = "ok"
    if ttl and int(ttl) < 300:
        status = "warn"
        ttl_text += " (expires soon)"
    policies = ", ".join(info["policies"]) or "none"
    name = info.get("display_name") or "?"
    return [
        *out,
        Check("vault.auth", status, f"token valid ({name}; policies {policies}; {ttl_text})"),
    ]


def check_s3(env: Mapping[str, str], timeout: float, bucket: str | None) -> list[Check]:
    endpoint = (env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or "").strip()
    bucket = bucket or env.get("WEIGHTGUARD_S3_BUCKET") or None
    try:
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError, ClientError, EndpointConnectionError
    except ImportError:
        return [Check("s3", "fail", "boto3 is not installed")]
    where = endpoint or "AWS S3 (default endpoint)"
    try:
        session = boto3.session.Session()
        creds = session.get_credentials()
    except Exception as exc:
        return [Check("s3", "fail", f"reading AWS credentials failed: {type(exc).__name__}")]
    if creds is None:
        status: Status = "fail" if (endpoint or bucket) else "warn"
        return [
            Check(
                "s3",
                status,
                f"no S3 credentials for {where}; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
                "or AWS_PROFILE (or use the pod's IAM role)",
            )
        ]
    method = getattr(creds, "method", "?")
    client = session.client(
        "s3",
        endpoint_url=endpoint or None,
        config=Config(
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"max_attempts": 1, "mode": "standard"},
        ),
    )
    op = f"HeadBucket {bucket}" if bucket else "ListBuckets"
    try:
        if bucket:
            client.head_bucket(Bucket=bucket)
            detail = f"{where}: credentials ({method}) accepted, bucket {bucket} reachable"
        else:
            n = len(client.list_buckets().get("Buckets", []))
            detail = f"{where}: credentials ({method}) accepted, {n} bucket(s) visible"
    except EndpointConnectionError:
        return [Check("s3", "fail", f"cannot reach S3 endpoint {where}")]
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", "?"))
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"):
            return [Check("s3", "fail", f"{where} rejected the credentials ({method}): {code}")]
        if code in ("AccessDenied", "403") and not bucket:
            return [
                Check(
                    "s3",
                    "warn",
                    f"{where}: {op} denied ({code}); credentials may still read objects "
                    "(set WEIGHTGUARD_S3_BUCKET to check a bucket)",
                )
            ]
        if code in ("404", "NoSuchBucket", "NotFound"):
            return [Check("s3", "fail", f"{where}: bucket {bucket} does not exist")]
        return [Check("s3", "fail", f"{where}: {op} failed: {code}")]
    except BotoCoreError as exc:
        return [Check("s3", "fail", f"{where}: {op} failed: {type(exc).__name__}")]
    return [Check("s3", "ok", detail)]


def check_shm(mounts_file: str = "/proc/mounts") -> list[Check]:
    fstype = None
    try:
        for line in Path(mounts_file).read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] == "/dev/shm":
                fstype = parts[2]  # last mount wins (stacked mounts)
    except OSError:
        return [Check("shm", "warn", f"cannot read {mounts_file}; /dev/shm type unknown")]
    if fstype is None:
        return [Check("shm", "warn", "/dev/shm is not mounted; use an emptyDir medium: Memory")]
    if fstype != "tmpfs":
        return [
            Check("shm", "warn", f"/dev/shm is {fstype}, not tmpfs; decrypted files would hit disk")
        ]
    try:
        st = os.statvfs("/dev/shm")
        size = f", {st.f_blocks * st.f_frsize / 2**30:.1f} GiB"
    except OSError:
        size = ""
    return [Check("shm", "ok", f"/dev/shm is tmpfs{size}")]


# The variables weightguard.audit reads (named here: _internal does not import it).
_AUDIT_LOG, _AUDIT_KEY, _AUDIT_ANCHOR = (
    "WEIGHTGUARD_AUDIT_LOG",
    "WEIGHTGUARD_AUDIT_SIGNING_KEY",
    "WEIGHTGUARD_AUDIT_ANCHOR",
)

UNSIGNED_LOG_LIMITS = (
    "an unsigned log shows accidental damage (a torn or edited line, a gap) but proves "
    "nothing against whoever can write it: they can rewrite, cut or replace it and "
    "recompute the chain; `weightguard audit verify` exits 1 on it unless --allow-unsigned-log"
)


def check_audit(env: Mapping[str, str]) -> list[Check]:
    dest = env.get(_AUDIT_LOG) or (
        "- (stdout)" if env.get("KUBERNETES_SERVICE_HOST") else "the default state file"
    )
    key = env.get(_AUDIT_KEY, "").strip()
    anchor = env.get(_AUDIT_ANCHOR, "").strip() or (dest if dest.startswith("s3://") else "")
    if not key:
        return [
            Check(
                "audit",
                "warn",
                f"audit log {dest}: checkpoints are NOT signed ({_AUDIT_KEY} unset); "
                f"{UNSIGNED_LOG_LIMITS}. Production default: set {_AUDIT_KEY} "
                "(vault://transit/<ed25519 key>) and an anchor",
            )
        ]
    if key.startswith(("vault://", "openbao://", "bao://")):
        where = f"Transit key {key} (not contacted here)"
    else:
        path = key[len("file://") :] if key.startswith("file://") else key
        try:
            from weightguard._internal.audit.checkpoint import Ed25519FileSigner

            where = f"key {Ed25519FileSigner(path).key_id} ({path})"
        except WeightguardError as exc:
            return [Check("audit", "fail", f"{_AUDIT_KEY}: {_one_line(exc.message, 200)}")]
    if not anchor:
        return [
            Check(
                "audit",
                "warn",
                f"audit log {dest}: checkpoints signed with {where}, but no anchor "
                f"({_AUDIT_ANCHOR} unset): a tail cut after the last checkpoint is "
                "detectable only against an anchor",
            )
        ]
    detail = f"audit log {dest}: checkpoints signed with {where}, anchored at {anchor}"
    return [Check("audit", "ok", detail)]


# --------------------------------------------------------------------------- driver


def run_checks(
    *,
    only: Iterable[str] | None = None,
    environ: Mapping[str, str] | None = None,
    timeout: float = 5.0,
    bucket: str | None = None,
) -> list[Check]:
    """Run the checks (all, or those named in ``only``) and return their results."""
    env = os.environ if environ is None else environ
    selected = list(CHECK_NAMES) if only is None else list(only)
    unknown = [n for n in selected if n not in CHECK_NAMES]
    if unknown:
        from weightguard.errors import ConfigError

        raise ConfigError(
            f"unknown check(s): {', '.join(unknown)}", hint="choose from " + ", ".join(CHECK_NAMES)
        )
    table: dict[str, Callable[[], list[Check]]] = {
        "python": check_python,
        "torch": check_torch,
        "cryptography": check_cryptography,
        "vault": lambda: check_vault(env, timeout),
        "s3": lambda: check_s3(env, timeout, bucket),
        "shm": check_shm,
        "audit": lambda: check_audit(env),
    }
    results: list[Check] = []
    for name in CHECK_NAMES:
        if name not in selected:
            continue
        try:
            results.extend(table[name]())
        except Exception as exc:  # a check must never crash the doctor
            results.append(Check(name, "fail", f"check crashed: {type(exc).__name__}"))
    return results


def summarize(results: list[Check]) -> dict[str, Any]:
    counts = {s: sum(1 for r in results if r.status == s) for s in ("ok", "warn", "fail")}
    return {
        "ok": counts["fail"] == 0,
        "counts": counts,
        "checks": [r.as_dict() for r in results],
    }


def missing_extra(exc: ModuleNotFoundError) -> WeightguardError | None:
    """The typed error naming the extra to install for an optional dependency's
    ModuleNotFoundError (None when the module is not one of weightguard's extras)."""
    from weightguard._internal.foundation.extras import from_import_error

    return from_import_error(exc)
