"""Minimal example inference server for the in-process pattern (k8s/overlays/in-process).

At start-up it calls :func:`weightguard.loader.load_file`: the model is read from S3 (or a
path) once, every chunk is checked against the signed digests, decrypted with the data
key that Vault unwraps for this pod's identity, and placed straight into device memory.
No plaintext weight ever touches a filesystem.  Audit events go to
``WEIGHTGUARD_AUDIT_LOG`` (``-`` = stdout in the manifests).

Endpoints (no tensor values are ever served):

* ``GET /healthz``  200 while the process runs (startup/liveness probe)
* ``GET /readyz``   200 once the weights are loaded, 503 before (readiness probe)
* ``GET /v1/model`` names, dtypes and shapes of the loaded tensors

A failed load (bad signature, tamper, key denied) ends the process with exit status 1
after the loader has written its audit event: the pod never serves unverified weights.
Replace the handler with your model's forward pass.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any


class _State:
    def __init__(self) -> None:
        self.ready = threading.Event()
        self.summary: dict[str, Any] = {}
        self.tensors: dict[str, Any] = {}


def _load(args: argparse.Namespace, state: _State, server: ThreadingHTTPServer) -> None:
    from weightguard.errors import WeightguardError
    from weightguard.loader import load_file
    from weightguard.policy import PublicKey

    started = time.monotonic()
    try:
        tensors = load_file(args.source, args.device, policy=PublicKey.from_file(args.public_key))
    except WeightguardError as exc:
        print(f"serve: error: {exc}", file=sys.stderr, flush=True)
        state.summary = {"error": type(exc).__name__}
        threading.Thread(target=server.shutdown, daemon=True).start()
        return
    state.tensors = tensors
    state.summary = {
        "source": args.source,
        "device": args.device,
        "tensors": {
            name: {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}
            for name, t in sorted(tensors.items())
        },
        "bytes": sum(t.numel() * t.element_size() for t in tensors.values()),
        "load_seconds": round(time.monotonic() - started, 3),
    }
    state.ready.set()
    print(
        f"serve: loaded {len(tensors)} tensors ({state.summary['bytes']} bytes) "
        f"on {args.device} in {state.summary['load_seconds']} s",
        file=sys.stderr,
        flush=True,
    )


def _handler(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "weightguard-example"

        def log_message(self, format: str, *args: Any) -> None:
            return None  # stdout carries the audit log; keep it clean

        def _send(self, code: int, body: dict[str, Any]) -> None:
            raw = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._send(200, {"status": "ok"})
            elif self.path == "/readyz":
                ok = state.ready.is_set()
                self._send(200 if ok else 503, {"ready": ok})
            elif self.path == "/v1/model":
                if state.ready.is_set():
                    self._send(200, state.summary)
                else:
                    self._send(503, {"ready": False})
            else:
                self._send(404, {"error": "not found"})

    return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--source", required=True, help="s3://bucket/prefix/ or a path")
    parser.add_argument("--public-key", required=True, help="release signing public key (PEM)")
    parser.add_argument("--device", default="cuda", help="torch device (default cuda)")
    parser.add_argument("--host", default="0.0.0.0", help="listen address")  # noqa: S104
    parser.add_argument("--port", type=int, default=8080)
    args = parser.parse_args(argv)

    state = _State()
    server = ThreadingHTTPServer((args.host, args.port), _handler(state))
    server.daemon_threads = True

    def stop(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    loader = threading.Thread(target=_load, args=(args, state, server), daemon=True)
    loader.start()
    print(f"serve: listening on {args.host}:{args.port}", file=sys.stderr, flush=True)
    server.serve_forever()
    server.server_close()
    if "error" in state.summary:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
