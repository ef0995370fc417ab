"""A TCP proxy in front of a real S3 server that injects faults (resets, 5xx, short bodies)."""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlparse

_ERROR_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>InternalError</Code>'
    b"<Message>injected by test proxy</Message></Error>"
)


class FaultProxy:
    def __init__(self, upstream: str) -> None:
        u = urlparse(upstream)
        self.upstream = (u.hostname or "127.0.0.1", u.port or 80)
        self.fail_next = 0  # answer this many requests with HTTP 500
        self.fail_forever = False
        self.cut_next = 0  # drop this many connections mid-response
        self.cut_forever = False
        self.cut_after = 64 * 1024
        self.only_ranged = True  # inject only into ranged GETs (not HEAD/list)
        self.injected_500 = 0
        self.injected_cuts = 0
        self.requests = 0
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port = self._sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._stop = False
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop = True
        with contextlib.suppress(OSError):
            self._sock.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._stop:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    @staticmethod
    def _read_head(conn: socket.socket) -> bytes:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                return data
            data += chunk
            if len(data) > 1 << 20:
                break
        return data

    def _handle(self, conn: socket.socket) -> None:
        try:
            head = self._read_head(conn)
            if not head:
                conn.close()
                return
            first = head.split(b"\r\n", 1)[0]
            ranged = first.startswith(b"GET ") and b"\r\nrange:" in head.lower()
            eligible = ranged or not self.only_ranged
            with self._lock:
                self.requests += 1
                action = "pass"
                if eligible and (self.fail_forever or self.fail_next > 0):
                    action = "500"
                    self.fail_next = max(0, self.fail_next - 1)
                    self.injected_500 += 1
                elif eligible and (self.cut_forever or self.cut_next > 0):
                    action = "cut"
                    self.cut_next = max(0, self.cut_next - 1)
                    self.injected_cuts += 1
            if action == "500":
                conn.sendall(
                    b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/xml\r\n"
                    + f"Content-Length: {len(_ERROR_BODY)}\r\n".encode()
                    + b"Connection: close\r\n\r\n"
                    + _ERROR_BODY
                )
                conn.close()
                return
            up = socket.create_connection(self.upstream)
            up.sendall(self._one_request_per_connection(head))
            limit = self.cut_after if action == "cut" else None
            t = threading.Thread(target=self._pipe, args=(conn, up, None), daemon=True)
            t.start()
            self._pipe(up, conn, limit)
        except OSError:
            pass
        finally:
            for s in (conn,):
                with contextlib.suppress(OSError):
                    s.close()

    @staticmethod
    def _one_request_per_connection(head: bytes) -> bytes:
        # Ask the server to close after this response, so that every request arrives on a
        # fresh connection and is inspected.
        top, sep, rest = head.partition(b"\r\n\r\n")
        lines = [ln for ln in top.split(b"\r\n") if not ln.lower().startswith(b"connection:")]
        return b"\r\n".join([*lines, b"Connection: close"]) + sep + rest

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket, limit: int | None) -> None:
        sent = 0
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if limit is not None and sent + len(data) >= limit:
                    dst.sendall(data[: max(0, limit - sent)])
                    break
                dst.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    s.close()
