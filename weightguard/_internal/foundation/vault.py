"""Authenticated Vault/OpenBao clients and error mapping.

``vault_client()`` returns a logged-in :class:`hvac.Client`.  Configuration, explicit
arguments first, then the environment:

=================================  =========================================================
``VAULT_ADDR``                     server URL (required)
``VAULT_TOKEN``                    token for ``token`` auth
``VAULT_NAMESPACE``                namespace (Vault Enterprise / OpenBao namespaces)
``VAULT_CACERT``                   PEM CA bundle used to verify the server's certificate
``WEIGHTGUARD_VAULT_AUTH``         ``token`` | ``approle`` | ``jwt`` | ``kubernetes``;
                                   unset: ``token`` if VAULT_TOKEN is set, else ``approle``
                                   if WEIGHTGUARD_VAULT_ROLE_ID is set, else ``kubernetes``
                                   if WEIGHTGUARD_VAULT_ROLE is set
``WEIGHTGUARD_VAULT_ROLE``         role name for ``jwt`` and ``kubernetes`` login
``WEIGHTGUARD_VAULT_TOKEN_FILE``   file holding the JWT (``jwt``), the projected service
                                   account token (``kubernetes``; default
                                   ``/var/run/secrets/kubernetes.io/serviceaccount/token``)
                                   or a Vault token (``token``, e.g. a Vault Agent sink)
``WEIGHTGUARD_VAULT_AUTH_MOUNT``   auth mount path (default: the method name)
``WEIGHTGUARD_VAULT_ROLE_ID``      AppRole role_id
``WEIGHTGUARD_VAULT_SECRET_ID``    AppRole secret_id (or ``WEIGHTGUARD_VAULT_SECRET_ID_FILE``)
=================================  =========================================================

``~/.vault-token`` is never read.  Token files are re-read at every login (projected
tokens rotate).  Long-lived users (the audit checkpoint signer and anchor, the Transit
data-key provider) hold a :class:`VaultSession`, which logs in again when Vault refuses
an expired token.  Every hvac/requests failure is mapped to :mod:`weightguard.errors`:
unreachable -> :class:`KeyUnavailableError`, refused -> :class:`KeyAccessDenied`, with a
one-line message that never contains a token, secret_id or JWT.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from weightguard._internal.foundation.uris import VAULT_SCHEMES, is_vault_uri
from weightguard.errors import (
    ConfigError,
    DependencyMissing,
    KeyAccessDenied,
    KeyProviderError,
    KeyUnavailableError,
    WeightguardError,
)

if TYPE_CHECKING:
    import hvac

__all__ = [
    "DEFAULT_K8S_TOKEN_FILE",
    "VAULT_SCHEMES",
    "AuthMethod",
    "VaultAuth",
    "VaultSession",
    "is_vault_uri",
    "lookup_self",
    "map_vault_error",
    "parse_vault_uri",
    "vault_client",
    "vault_errors",
]

AuthMethod = Literal["token", "approle", "jwt", "kubernetes"]
DEFAULT_K8S_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
_MAX_TOKEN_FILE = 64 * 1024
_METHODS: tuple[str, ...] = ("token", "approle", "jwt", "kubernetes")


@dataclass(frozen=True)
class VaultAuth:
    """How to authenticate to Vault.  Secret fields never appear in ``repr``.

    Build with the class methods: ``VaultAuth.with_token(...)``, ``.approle(...)``,
    ``.jwt(...)``, ``.kubernetes(...)`` or ``.from_env()``.
    """

    method: AuthMethod
    role: str | None = None
    mount: str | None = None
    token_file: str | None = None
    role_id: str | None = None
    token: str | None = field(default=None, repr=False)
    secret_id: str | None = field(default=None, repr=False)
    jwt_value: str | None = field(default=None, repr=False)

    @classmethod
    def with_token(cls, token: str | None = None, *, token_file: str | None = None) -> VaultAuth:
        return cls("token", token=token, token_file=token_file)

    @classmethod
    def approle(cls, role_id: str, secret_id: str | None, *, mount: str = "approle") -> VaultAuth:
        return cls("approle", role_id=role_id, secret_id=secret_id, mount=mount)

    @classmethod
    def jwt(
        cls,
        role: str,
        *,
        jwt: str | None = None,
        token_file: str | None = None,
        mount: str = "jwt",
    ) -> VaultAuth:
        if jwt is None and token_file is None:
            raise ConfigError(
                "JWT auth needs a JWT or a file holding one",
                hint="pass jwt=... or token_file=..., or set WEIGHTGUARD_VAULT_TOKEN_FILE",
            )
        return cls("jwt", role=role, jwt_value=jwt, token_file=token_file, mount=mount)

    @classmethod
    def kubernetes(
        cls,
        role: str,
        *,
        token_file: str = DEFAULT_K8S_TOKEN_FILE,
        mount: str = "kubernetes",
    ) -> VaultAuth:
        return cls("kubernetes", role=role, token_file=token_file, mount=mount)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> VaultAuth:
        """Auth configuration from the environment (see the module docstring)."""
        env = os.environ if environ is None else environ
        method = env.get("WEIGHTGUARD_VAULT_AUTH", "").strip().lower()
        role = env.get("WEIGHTGUARD_VAULT_ROLE") or None
        token_file = env.get("WEIGHTGUARD_VAULT_TOKEN_FILE") or None
        mount = env.get("WEIGHTGUARD_VAULT_AUTH_MOUNT") or None
        if not method:
            if env.get("VAULT_TOKEN"):
                method = "token"
            elif env.get("WEIGHTGUARD_VAULT_ROLE_ID"):
                method = "approle"
            elif role:
                method = "kubernetes"
            else:
                raise ConfigError(
                    "no Vault credentials configured",
                    hint="set VAULT_TOKEN, or WEIGHTGUARD_VAULT_AUTH=kubernetes|jwt|approle "
                    "with WEIGHTGUARD_VAULT_ROLE (see `weightguard doctor`)",
                )
        if method not in _METHODS:
            raise ConfigError(
                f"WEIGHTGUARD_VAULT_AUTH={method!r} is not a known auth method",
                hint="use one of: " + ", ".join(_METHODS),
            )
        if method == "token":
            token = env.get("VAULT_TOKEN") or None
            if token is None and token_file is None:
                raise ConfigError(
                    "token auth selected but VAULT_TOKEN is not set",
                    hint="set VAULT_TOKEN or WEIGHTGUARD_VAULT_TOKEN_FILE",
                )
            return cls.with_token(token, token_file=None if token else token_file)
        if method == "approle":
            role_id = env.get("WEIGHTGUARD_VAULT_ROLE_ID")
            if not role_id:
                raise ConfigError(
                    "AppRole auth selected but WEIGHTGUARD_VAULT_ROLE_ID is not set",
                    hint="set WEIGHTGUARD_VAULT_ROLE_ID and WEIGHTGUARD_VAULT_SECRET_ID",
                )
            secret_id = env.get("WEIGHTGUARD_VAULT_SECRET_ID") or None
            secret_file = env.get("WEIGHTGUARD_VAULT_SECRET_ID_FILE")
            if secret_id is None and secret_file:
                secret_id = _read_secret_file(secret_file, "AppRole secret_id")
            return cls.approle(role_id, secret_id, mount=mount or "approle")
        if not role:
            raise ConfigError(
                f"{method} auth selected but WEIGHTGUARD_VAULT_ROLE is not set",
                hint="set WEIGHTGUARD_VAULT_ROLE to the Vault role bound to this workload",
            )
        if method == "jwt":
            if token_file is None:
                raise ConfigError(
                    "JWT auth selected but WEIGHTGUARD_VAULT_TOKEN_FILE is not set",
                    hint="point WEIGHTGUARD_VAULT_TOKEN_FILE at the file holding the JWT",
                )
            return cls.jwt(role, token_file=token_file, mount=mount or "jwt")
        return cls.kubernetes(
            role, token_file=token_file or DEFAULT_K8S_TOKEN_FILE, mount=mount or "kubernetes"
        )


def parse_vault_uri(uri: str, *, what: str = "Vault key") -> tuple[str, str]:
    """``vault://<mount>/<key>`` -> (mount, key name); the mount may hold slashes."""
    scheme = next((s for s in VAULT_SCHEMES if uri.startswith(s)), None)
    if scheme is None:
        raise ConfigError(f"{what} URI {uri!r} is not vault://<mount>/<key>")
    parts = uri[len(scheme) :].strip("/").split("/")
    if len(parts) < 2 or any(p in ("", ".", "..") for p in parts):
        raise ConfigError(
            f"{what} URI {uri!r} must be vault://<mount>/<key>",
            hint="e.g. vault://transit/models",
        )
    return "/".join(parts[:-1]), parts[-1]


def _read_secret_file(path: str, what: str) -> str:
    p = Path(path)
    try:
        with p.open("rb") as fh:
            raw = fh.read(_MAX_TOKEN_FILE + 1)
    except FileNotFoundError:
        raise ConfigError(
            f"{what} file {path} does not exist",
            hint="check the path (for Kubernetes: the projected service account token volume)",
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror}") from None
    if len(raw) > _MAX_TOKEN_FILE:
        raise ConfigError(f"{what} file {path} is larger than {_MAX_TOKEN_FILE} bytes")
    try:
        value = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{what} file {path} is not ASCII text") from None
    if not value:
        raise ConfigError(f"{what} file {path} is empty")
    return value


# --------------------------------------------------------------------------- errors


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "<redacted>")
    return text


def _vault_messages(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if isinstance(errors, list | tuple) and errors:
        msg = "; ".join(str(e) for e in errors)
    else:
        msg = str(exc)
    msg = msg.split(", on ")[0]  # hvac appends ", on <method> <url>"
    msg = re.sub(r"\d+ errors? occurred:", "", msg).replace("* ", "")
    msg = " ".join(msg.split())
    return "" if msg == "None" else msg[:300]  # "None": hvac's text for an empty 404 body


def _token_state(client: Any) -> tuple[str, list[str]]:
    """After a 403: ``("invalid", [])`` if the token itself is refused (expired, revoked,
    unknown), ``("valid", policies)`` if it is fine and only lacks a permission,
    ``("unknown", [])`` if that cannot be told (no client, a login method, no reply)."""
    import hvac.exceptions as hx

    if client is None or not getattr(client, "token", None):
        return "unknown", []
    try:
        data = client.auth.token.lookup_self()["data"]
    except (hx.Forbidden, hx.Unauthorized):
        return "invalid", []
    except Exception:  # the probe is only a diagnosis: the original error stands
        return "unknown", []
    return "valid", [str(p) for p in (data.get("policies") or [])]


def map_vault_error(
    exc: BaseException,
    operation: str,
    *,
    addr: str | None = None,
    secrets: tuple[str, ...] = (),
    client: Any = None,
) -> WeightguardError:
    """Translate an hvac/requests exception into a weightguard error (not raised).

    ``operation`` says what was being done, as a gerund phrase ("logging in with
    kubernetes auth", "unwrapping the data key with vault://transit/models").
    ``secrets`` are strings scrubbed from the message should the server echo them.
    ``client`` (the one that failed) tells an expired token from a missing permission
    and supplies the address when ``addr`` is not given.
    """
    import hvac.exceptions as hx
    import requests

    if isinstance(exc, WeightguardError):
        return exc
    addr = addr or (str(getattr(client, "url", "") or "") or None)
    at = f"Vault at {addr}" if addr else "Vault"
    if isinstance(exc, requests.exceptions.SSLError):
        text = str(exc).lower()
        if "wrong version number" in text or "record layer" in text or "packet length" in text:
            return KeyUnavailableError(
                f"TLS handshake with {at} failed while {operation}: the server did not "
                "answer in TLS",
                hint="use an http:// VAULT_ADDR for a plain listener, or enable TLS on it",
            )
        return KeyUnavailableError(
            f"TLS verification of {at} failed while {operation}",
            hint="set VAULT_CACERT to the CA bundle that signed the Vault server certificate",
        )
    if isinstance(exc, requests.exceptions.Timeout):
        return KeyUnavailableError(
            f"{at} timed out while {operation}", hint="check VAULT_ADDR and the network"
        )
    if isinstance(exc, requests.exceptions.ConnectionError):
        return KeyUnavailableError(
            f"cannot reach {at} while {operation}",
            hint="check VAULT_ADDR and that the server is running",
        )
    if isinstance(exc, requests.exceptions.RequestException):
        return KeyUnavailableError(
            f"request to {at} failed while {operation}: {type(exc).__name__}",
            hint="check VAULT_ADDR (it must be an http(s):// URL)",
        )
    detail = _redact(_vault_messages(exc) if isinstance(exc, Exception) else "", secrets)
    suffix = f": {detail}" if detail else ""
    if isinstance(exc, hx.Forbidden | hx.Unauthorized):
        state, policies = _token_state(client)
        if state == "invalid":
            return KeyAccessDenied(
                f"{at} rejected the token while {operation}: it is expired, revoked or invalid",
                hint="get a new token into VAULT_TOKEN, or log in again",
            )
        if state == "valid":
            return KeyAccessDenied(
                f"{at} denied {operation}: permission denied for the token's policies "
                f"({', '.join(policies) or 'none'})",
                hint="grant a policy that allows this path, or use a token that has one",
            )
        return KeyAccessDenied(f"{at} denied {operation}{suffix}")
    if isinstance(exc, hx.VaultDown):
        return KeyUnavailableError(
            f"{at} is sealed or unavailable while {operation}",
            hint="unseal Vault or wait for it to become active",
        )
    if isinstance(exc, hx.RateLimitExceeded):
        return KeyUnavailableError(
            f"{at} rate-limited {operation}", hint="retry later or raise the quota"
        )
    if isinstance(exc, hx.InvalidPath):
        return KeyProviderError(
            f"{at}: path not found while {operation}{suffix}",
            hint="check the mount path and the key or role name",
        )
    if isinstance(exc, hx.InvalidRequest):
        if "http request to an https server" in detail.lower():
            return KeyUnavailableError(
                f"{at} expects TLS while {operation}",
                hint="use an https:// VAULT_ADDR (and VAULT_CACERT)",
            )
        return KeyProviderError(f"{at} rejected {operation}{suffix}")
    if isinstance(exc, hx.InternalServerError | hx.BadGateway | hx.UnexpectedError):
        return KeyUnavailableError(f"{at} failed while {operation}{suffix}")
    if isinstance(exc, hx.VaultError):
        return KeyProviderError(f"{at} error while {operation}{suffix}")
    return KeyProviderError(f"unexpected error while {operation}: {type(exc).__name__}")


@contextlib.contextmanager
def vault_errors(
    operation: str,
    *,
    addr: str | None = None,
    secrets: tuple[str, ...] = (),
    client: Any = None,
) -> Iterator[None]:
    """Context manager: re-raise hvac/requests failures as weightguard errors."""
    import hvac.exceptions as hx
    import requests

    try:
        yield
    except (hx.VaultError, requests.exceptions.RequestException) as exc:
        raise map_vault_error(exc, operation, addr=addr, secrets=secrets, client=client) from None


# --------------------------------------------------------------------------- client


def vault_client(
    addr: str | None = None,
    token: str | None = None,
    *,
    auth: VaultAuth | None = None,
    namespace: str | None = None,
    cacert: str | None = None,
    timeout: float = 10.0,
    environ: Mapping[str, str] | None = None,
) -> hvac.Client:
    """A logged-in hvac client.

    Precedence: explicit ``token`` > explicit ``auth`` > :meth:`VaultAuth.from_env`.
    With ``token`` auth nothing is sent to the server here (use :func:`lookup_self` to
    check the token); login methods (AppRole, JWT, Kubernetes) log in now and raise
    :class:`KeyAccessDenied` when refused, :class:`KeyUnavailableError` when Vault
    cannot be reached.
    """
    env = os.environ if environ is None else environ
    try:
        import hvac
    except ImportError:
        raise DependencyMissing("Vault support needs the hvac package") from None

    url = (addr or env.get("VAULT_ADDR") or "").strip()
    if not url:
        raise ConfigError("VAULT_ADDR is not set", hint="set VAULT_ADDR to the Vault/OpenBao URL")
    if not url.startswith(("http://", "https://")):
        raise ConfigError(
            f"VAULT_ADDR {url!r} is not an http(s):// URL", hint="e.g. https://vault:8200"
        )
    ns = namespace or env.get("VAULT_NAMESPACE") or None
    ca = cacert or env.get("VAULT_CACERT") or None
    verify: bool | str = True
    if ca:
        if not Path(ca).is_file():
            raise ConfigError(
                f"VAULT_CACERT file {ca} does not exist", hint="point it at a PEM CA bundle"
            )
        verify = ca

    if token is not None:
        auth = VaultAuth.with_token(token)
    elif auth is None:
        auth = VaultAuth.from_env(env)

    # token="" (never None): hvac would otherwise fall back to ~/.vault-token.
    client = hvac.Client(url=url, token="", verify=verify, timeout=timeout, namespace=ns)
    _login(client, auth, url)
    return client


_T = TypeVar("_T")
_log = logging.getLogger("weightguard.vault")


def _is_forbidden(exc: BaseException) -> bool:
    try:
        import hvac.exceptions
    except ImportError:  # pragma: no cover - hvac is a core dependency
        return False
    return isinstance(exc, hvac.exceptions.Forbidden)


class VaultSession:
    """One Vault client for a user that outlives a token (a pod serving for days).

    Tokens from a login (AppRole, JWT, Kubernetes) and Vault Agent sink files expire or
    rotate.  When Vault answers 403 to a session that logged in itself, it logs in again
    (re-reading token files) and retries that one call once; a 403 to a token that
    is still valid (it lacks a permission), or a second 403, is the caller's to map.
    A client the caller handed in is theirs to renew and is never replaced.
    """

    def __init__(self, client: Any = None, **options: Any) -> None:
        self._given = client is not None
        self._client = client
        self._options = options

    @property
    def current(self) -> Any:
        """The client now in use, or None before the first call (for error mapping)."""
        return self._client

    def client(self) -> Any:
        if self._client is None:
            self._client = vault_client(**self._options)
        return self._client

    def call(self, fn: Callable[[Any], _T]) -> _T:
        client = self.client()
        try:
            return fn(client)
        except Exception as exc:
            if self._given or not _is_forbidden(exc):
                raise
            # A token that is fine and only lacks a permission is a real denial: logging
            # in again would not help (and would spend an AppRole secret_id use).
            if _token_state(client)[0] == "valid":
                raise
        _log.info("Vault refused this session's token (expired or revoked); logging in again")
        self._client = None
        return fn(self.client())

    def __repr__(self) -> str:
        return f"VaultSession(logged_in={self._client is not None}, given={self._given})"


def _login(client: hvac.Client, auth: VaultAuth, url: str) -> None:
    if auth.method == "token":
        value = auth.token
        if value is None and auth.token_file:
            value = _read_secret_file(auth.token_file, "Vault token")
        if not value:
            raise ConfigError("no Vault token given", hint="set VAULT_TOKEN")
        client.token = value
        return
    if auth.method == "approle":
        if not auth.role_id:
            raise ConfigError("AppRole auth needs a role_id")
        mount = auth.mount or "approle"
        with _login_errors(f"AppRole login at auth/{mount}", url, (auth.secret_id or "",)):
            client.auth.approle.login(
                role_id=auth.role_id, secret_id=auth.secret_id, mount_point=mount
            )
        return
    jwt = auth.jwt_value
    if jwt is None:
        what = "service account token" if auth.method == "kubernetes" else "JWT"
        jwt = _read_secret_file(auth.token_file or DEFAULT_K8S_TOKEN_FILE, what)
    if not auth.role:
        raise ConfigError(f"{auth.method} auth needs a role", hint="set WEIGHTGUARD_VAULT_ROLE")
    mount = auth.mount or auth.method
    operation = f"{auth.method} login as role {auth.role!r} at auth/{mount}"
    with _login_errors(operation, url, (jwt,)):
        if auth.method == "kubernetes":
            client.auth.kubernetes.login(role=auth.role, jwt=jwt, mount_point=mount)
        else:
            client.auth.jwt.jwt_login(role=auth.role, jwt=jwt, path=mount)


@contextlib.contextmanager
def _login_errors(operation: str, url: str, secrets: tuple[str, ...]) -> Iterator[None]:
    """A refused login (AppRole, JWT, Kubernetes answer 400) is a denial, worded once;
    everything else is mapped as any Vault call."""
    with vault_errors(operation, addr=url, secrets=secrets):
        try:
            yield
        except Exception as exc:
            import hvac.exceptions as hx

            if isinstance(exc, hx.InvalidRequest):
                detail = _redact(_vault_messages(exc), secrets)
                raise KeyAccessDenied(f"Vault at {url} denied {operation}: {detail}") from None
            raise


def lookup_self(client: hvac.Client) -> dict[str, Any]:
    """Check the client's token (``auth/token/lookup-self``); its non-secret metadata.

    Returns ``{"display_name", "policies", "ttl", "expire_time", "renewable"}``.
    """
    url = str(getattr(client, "url", "") or "") or None
    with vault_errors("looking up the token (token invalid or expired?)", addr=url):
        data = client.auth.token.lookup_self()["data"]
    return {
        "display_name": data.get("display_name"),
        "policies": list(data.get("policies") or []),
        "ttl": data.get("ttl"),
        "expire_time": data.get("expire_time"),
        "renewable": data.get("renewable"),
    }
