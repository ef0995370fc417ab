"""Byte sources for the loader: local files and S3 objects, read into caller buffers.

A :class:`Source` is one file (a local path or an ``s3://bucket/key`` object) of known
size; ``read_into(offset, out)`` fills ``out`` with exactly ``len(out)`` bytes starting
at ``offset`` or raises.  Buffers belong to the caller, so the loader reuses them and
never holds more than it asked for.

A :class:`Location` is what the user named: a file, a local directory, an S3 object or
an S3 prefix.  It lists file names and opens them as sources.

S3 reads are ranged ``GetObject`` calls (``If-Match`` on the ETag seen at open, so an
object replaced mid-load fails instead of mixing versions), the body streamed with
``readinto`` into the caller's buffer.  Transient failures (HTTP 5xx, throttling,
timeouts, dropped connections, short bodies) are retried with capped exponential
backoff and full jitter, a bounded number of times.  Credentials come from boto3's
standard chain (environment, shared config/credentials files, web identity, instance
metadata); the endpoint can be overridden for S3-compatible stores
(``endpoint_url=`` or ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``).  Error messages
name bucket, key and byte range, never credentials.
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from weightguard._internal.foundation.names import real_inside, safe_join, safe_relative_name
from weightguard._internal.foundation.s3 import parse_s3_uri, read_client
from weightguard.errors import SourceError, TruncatedError, VerificationError
from weightguard.manifest import RetryPolicy, S3Options

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "FileSource",
    "Location",
    "RetryPolicy",
    "S3Options",
    "S3Source",
    "Source",
    "open_location",
    "s3_list",
]

_MAX_SMALL_FILE = 64 * 1024 * 1024  # index JSON, signature bundles: refuse anything bigger


class Source:
    """One file of known size that can be read at any offset into a caller buffer."""

    name: str  # for messages: a local path or s3://bucket/key
    size: int
    concurrency: int = 1  # how many reads in flight pay off (remote sources: more)

    def read_into(self, offset: int, out: memoryview | bytearray) -> None:
        raise NotImplementedError

    def read(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        self.read_into(offset, buf)
        return bytes(buf)

    def close(self) -> None:
        return None

    def _check_range(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise TruncatedError(
                f"{self.name}: bytes [{offset}, {offset + length}) are past the end of the "
                f"file ({self.size} bytes)"
            )

    def __enter__(self) -> Source:
        return self

    def __exit__(
        self,
        et: type[BaseException] | None,
        ev: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, size={self.size})"


class GrowingReader:
    """The file's first bytes, read once in order as parsers ask for more: what the
    header is parsed from is exactly what a streamed digest hashes (a file object).
    It lives here, below the format parsers that call its ``read``, so a load's walk
    enters no module twice."""

    def __init__(self, source: Source, first: int) -> None:
        self._src = source
        self._pos = 0
        self.buf = bytearray(source.read(0, min(first, source.size)))

    def upto(self, end: int) -> bytes:
        """Bytes ``[0, end)`` (``end`` within the file), reading only what is missing."""
        have = len(self.buf)
        if end > have:
            self.buf += self._src.read(have, end - have)
        return bytes(self.buf[:end])

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = self._src.size - self._pos
        n = max(0, min(n, self._src.size - self._pos))
        end = self._pos + n
        if end > len(self.buf):
            self.upto(end)
        data = bytes(self.buf[self._pos : end])
        self._pos = end
        return data

    def fileno(self) -> int:  # pragma: no cover - parsers must be given the size
        raise OSError("no file descriptor")


class FileSource(Source):
    """A local file read with ``os.preadv`` (no shared file position, thread-safe)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.name = os.fspath(path)
        try:
            self._fd = os.open(self.name, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        except FileNotFoundError:
            raise SourceError(
                f"{self.name}: no such file", hint="check the path of the model"
            ) from None
        except OSError as exc:
            raise SourceError(f"{self.name}: cannot open: {exc.strerror}") from None
        st = os.fstat(self._fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(self._fd)
            raise SourceError(f"{self.name}: not a regular file")
        self.size = st.st_size
        self._closed = False
        if hasattr(os, "posix_fadvise"):  # records are read in ascending order: read ahead
            with contextlib.suppress(OSError):
                os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)

    def read_into(self, offset: int, out: memoryview | bytearray) -> None:
        mv = memoryview(out).cast("B")
        self._check_range(offset, len(mv))
        got = 0
        while got < len(mv):
            try:
                n = os.preadv(self._fd, [mv[got:]], offset + got)
            except OSError as exc:
                raise SourceError(
                    f"{self.name}: read of bytes [{offset}, {offset + len(mv)}) failed: "
                    f"{exc.strerror}"
                ) from None
            if n == 0:
                raise TruncatedError(
                    f"{self.name}: file ended at byte {offset + got}, expected "
                    f"{offset + len(mv)} (was it truncated while loading?)"
                )
            got += n

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)


_RETRY_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "503",
    "500",
    "502",
    "504",
}
_NOT_FOUND = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_DENIED = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "403",
    "Forbidden",
}


class _Retry(Exception):
    """Internal: a transient failure worth another attempt."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def _classify(exc: BaseException, where: str) -> Exception:
    """Map a boto/urllib3 exception to `_Retry` (transient) or a final `SourceError`."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.ClientError):
        err = exc.response.get("Error", {}) if isinstance(exc.response, dict) else {}
        code = str(err.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code in _NOT_FOUND or status == 404:
            return SourceError(
                f"{where}: not found ({code or status})",
                hint="check the bucket and key; was the model pushed?",
            )
        if code in _DENIED or status == 403:
            return SourceError(
                f"{where}: access denied ({code or status})",
                hint="check the AWS credentials (standard chain: env, profile, web identity) "
                "and the bucket policy",
            )
        if code in ("PreconditionFailed", "412") or status == 412:
            return SourceError(
                f"{where}: the object changed while it was being loaded",
                hint="the model was replaced during the load; load it again",
            )
        if code in ("InvalidRange", "416") or status == 416:
            return TruncatedError(f"{where}: range is past the end of the object")
        if code in _RETRY_CODES or status >= 500 or status == 429:
            return _Retry(f"HTTP {status} {code}".strip())
        return SourceError(f"{where}: S3 error {code or status}")
    if isinstance(
        exc,
        bx.EndpointConnectionError
        | bx.ConnectionClosedError
        | bx.ReadTimeoutError
        | bx.ConnectTimeoutError
        | bx.ResponseStreamingError
        | bx.IncompleteReadError
        | bx.HTTPClientError
        | ConnectionError
        | TimeoutError,
    ):
        return _Retry(type(exc).__name__)
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return SourceError(
            f"{where}: no AWS credentials found",
            hint="set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or a web identity",
        )
    if isinstance(exc, bx.BotoCoreError):
        return SourceError(f"{where}: {type(exc).__name__}")
    return _Retry(type(exc).__name__) if isinstance(exc, OSError) else exc  # type: ignore[return-value]


def _with_retries(policy: RetryPolicy, where: str, fn: Callable[[], Any]) -> Any:
    last = "unknown error"
    for attempt in range(1, policy.max_attempts + 1):
        try:
            return fn()
        except (SourceError, TruncatedError):
            raise
        except Exception as exc:
            mapped = exc if isinstance(exc, _Retry) else _classify(exc, where)
            if not isinstance(mapped, _Retry):
                raise mapped from None
            last = mapped.what
        if attempt < policy.max_attempts:
            time.sleep(policy.delay(attempt))
    raise SourceError(
        f"{where}: failed after {policy.max_attempts} attempts (last: {last})",
        hint="the store is unavailable or overloaded; retry later or check the endpoint",
    )


class S3Source(Source):
    """One S3 object, read with concurrent ranged GETs."""

    def __init__(
        self,
        bucket: str,
        key: str,
        options: S3Options | None = None,
        *,
        client: Any = None,
        size: int | None = None,
        etag: str | None = None,
    ) -> None:
        self.options = options or S3Options()
        self.bucket, self.key = bucket, key
        self.name = f"s3://{bucket}/{key}"
        self.concurrency = max(1, self.options.concurrency)
        self._client = client if client is not None else read_client(self.options)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        if size is None or etag is None:
            head = _with_retries(
                self.options.retry,
                self.name,
                lambda: self._client.head_object(Bucket=bucket, Key=key),
            )
            size, etag = int(head["ContentLength"]), str(head.get("ETag", "")) or None
        self.size = size
        self.etag = etag

    def _get_into(self, offset: int, mv: memoryview) -> None:
        where = f"{self.name} bytes [{offset}, {offset + len(mv)})"

        def attempt() -> None:
            kwargs: dict[str, Any] = {
                "Bucket": self.bucket,
                "Key": self.key,
                "Range": f"bytes={offset}-{offset + len(mv) - 1}",
            }
            if self.etag:
                kwargs["IfMatch"] = self.etag
            resp = self._client.get_object(**kwargs)
            body = resp["Body"]
            try:
                length = int(resp.get("ContentLength", -1))
                if length != len(mv):
                    raise _Retry(f"server sent {length} bytes for a {len(mv)}-byte range")
                got = 0
                while got < len(mv):
                    n = body.readinto(mv[got:])
                    if not n:
                        raise _Retry(f"body ended after {got} of {len(mv)} bytes")
                    got += n
            finally:
                body.close()

        _with_retries(self.options.retry, where, attempt)

    def read_into(self, offset: int, out: memoryview | bytearray) -> None:
        mv = memoryview(out).cast("B")
        self._check_range(offset, len(mv))
        if not len(mv):
            return
        part = max(1, self.options.part_size)
        if len(mv) <= part or self.concurrency == 1:
            self._get_into(offset, mv)
            return
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    max_workers=self.concurrency, thread_name_prefix="wg-s3"
                )
            pool = self._pool
        futures = [
            pool.submit(self._get_into, offset + start, mv[start : start + part])
            for start in range(0, len(mv), part)
        ]
        first: BaseException | None = None
        for f in futures:  # wait for all so no thread writes into `out` after we return
            exc = f.exception()
            if exc is not None and first is None:
                first = exc
        if first is not None:
            raise first

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None


class Location:
    """What the user named: a local file or directory, an S3 object or prefix."""

    def __init__(
        self,
        uri: str,
        *,
        is_dir: bool,
        local_path: Path | None = None,
        s3: S3Options | None = None,
        client: Any = None,
        bucket: str = "",
        prefix: str = "",
        listing: dict[str, tuple[int, str | None]] | None = None,
    ) -> None:
        self.uri = uri
        self.is_dir = is_dir
        self.local_path = local_path
        self.s3 = s3
        self._client = client
        self.bucket, self.prefix = bucket, prefix
        self._listing = listing
        self._roots: tuple[Path, ...] | None = None  # where local files may really be

    @property
    def is_s3(self) -> bool:
        return self.local_path is None

    @property
    def display_name(self) -> str:
        return self.uri

    def names(self) -> list[str]:
        """Relative names of the files (for a single file: its base name)."""
        if self.local_path is not None:
            if not self.is_dir:
                return [self.local_path.name]
            out: list[str] = []
            for root, dirs, files in os.walk(self.local_path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for f in files:
                    full = Path(root) / f
                    if full.is_file() and not f.startswith("."):
                        rel = full.relative_to(self.local_path).as_posix()
                        out.append(safe_relative_name(rel, self.uri))
            return sorted(out)
        assert self._listing is not None
        return sorted(self._listing)

    def size_of(self, name: str) -> int:
        """Size in bytes of a listed file."""
        if self.local_path is not None:
            return self._local(name).stat().st_size
        assert self._listing is not None
        if name not in self._listing:
            raise SourceError(f"{self.uri}: no file {name!r}")
        return self._listing[name][0]

    def exists(self, name: str) -> bool:
        if self.local_path is not None:
            return self._local(name).is_file()
        assert self._listing is not None
        return name in self._listing

    def _local(self, name: str) -> Path:
        assert self.local_path is not None
        if not self.is_dir:
            if name == self.local_path.name:
                return self.local_path  # what the caller named (a cache link: local_layout)
            path = self.local_path.parent / safe_relative_name(name, self.uri)  # sibling (.sig)
        else:
            path = safe_join(self.local_path, name, self.uri)
        # Containment by real paths (foundation.names): a name inside the model may not
        # reach outside it through a link, at any level, verified or not; in a hub-cache
        # snapshot links may also reach the repo's own blobs/ (format.hf_cache).
        if self._roots is None:
            from weightguard._internal.format.hf_cache import snapshot_blobs

            base = self.local_path if self.is_dir else self.local_path.parent
            blobs = snapshot_blobs(self.local_path, is_dir=self.is_dir)
            self._roots = (base,) if blobs is None else (base, blobs)
        if real_inside(path, self._roots) is None:
            raise VerificationError(
                f"{self.uri}: {name} resolves outside the model directory "
                f"(to {os.path.realpath(path)}); refused",
                hint="a model's files may not be symbolic links (or inside linked "
                "directories) pointing elsewhere, even when loading without verification",
            )
        return path

    def _s3_key(self, name: str) -> str:
        safe_relative_name(name, self.uri)
        if not self.is_dir:
            base = self.prefix.rsplit("/", 1)
            return name if len(base) == 1 else f"{base[0]}/{name}"
        return f"{self.prefix}{name}"

    def sibling_exists(self, name: str) -> bool:
        """Whether a file next to the named file (or inside the dir) exists."""
        if self.local_path is not None:
            return self._local(name).is_file()
        if self.is_dir:
            return self.exists(name)
        try:
            self.open(name).close()
        except SourceError:
            return False
        return True

    def open(self, name: str) -> Source:
        if self.local_path is not None:
            return FileSource(self._local(name))
        meta = self._listing.get(name) if (self._listing and self.is_dir) else None
        return S3Source(
            self.bucket,
            self._s3_key(name),
            self.s3,
            client=self._client,
            size=meta[0] if meta else None,
            etag=meta[1] if meta else None,
        )

    def read_small(self, name: str, limit: int = _MAX_SMALL_FILE) -> bytes:
        """A whole small file (index JSON, signature); bounded by ``limit`` bytes."""
        with self.open(name) as src:
            if src.size > limit:
                raise SourceError(f"{src.name}: {src.size} bytes, more than the {limit} allowed")
            return src.read(0, src.size)

    def local_file(self, name: str) -> Path | None:
        return self._local(name) if self.local_path is not None else None

    def __repr__(self) -> str:
        return f"Location({self.uri!r}, is_dir={self.is_dir})"


def _bind(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Callable[[], Any]:
    return lambda: fn(**kwargs)


def _list_refused(uri: str, what: str) -> SourceError:
    return SourceError(
        f"{uri}: listing refused: {what}",
        hint="a model is a few thousand files: check the URI (a prefix holding more than "
        "one model?) and the endpoint (a store that never finishes its answer?)",
    )


def s3_list(client: Any, bucket: str, prefix: str, options: S3Options) -> Iterator[dict[str, Any]]:
    """Every object under ``prefix`` (ListObjectsV2 pages), within ``options``' bounds.

    A store answering "truncated" forever, a new page of keys every time, one huge page,
    or a body trickling in byte by byte is refused whole with a :class:`SourceError`
    once it passes ``max_list_pages``, ``max_list_keys``, ``max_list_bytes`` (response
    bodies, read by this function in bounded pieces, not by botocore in one go) or
    ``list_timeout_s``; a truncated page without a new continuation token too.  The one
    listing of S3 prefixes for the loader, fetch and verify.
    """
    uri = f"s3://{bucket}/{prefix}"
    deadline = time.monotonic() + options.list_timeout_s
    left = [options.max_list_bytes]

    def late() -> SourceError:
        return _list_refused(uri, f"not complete after {options.list_timeout_s:g} s")

    def bounded_send(request: Any, **_: Any) -> Any:
        # botocore would read the whole body into memory before parsing it: send the
        # request here and read the body in pieces, against the byte and time budget.
        session = getattr(getattr(client, "_endpoint", None), "http_session", None)
        if session is None:
            return None  # a client without botocore's HTTP session: page bounds only
        request.stream_output = True
        response = session.send(request)
        raw, parts, ok = response.raw, [], False
        try:
            while True:
                if time.monotonic() > deadline:
                    raise late()
                piece = raw.read1(64 * 1024) if hasattr(raw, "read1") else raw.read(64 * 1024)
                if not piece:
                    break
                left[0] -= len(piece)
                if left[0] < 0:
                    raise _list_refused(
                        uri, f"more than {options.max_list_bytes} bytes of listing responses"
                    )
                parts.append(piece)
            ok = True
        finally:
            if not ok:
                with contextlib.suppress(Exception):
                    raw.close()  # drop the connection: the rest of the body is not wanted
        response._content = b"".join(parts)
        return response

    events = getattr(getattr(client, "meta", None), "events", None)
    event, uid = "before-send.s3.ListObjectsV2", f"weightguard-bounded-list-{id(left)}"
    if events is not None:
        events.register(event, bounded_send, unique_id=uid)
    try:
        token: str | None = None
        seen: set[str] = set()
        keys = 0
        for pages in range(1, options.max_list_pages + 2):
            if pages > options.max_list_pages:
                raise _list_refused(uri, f"more than {options.max_list_pages} pages")
            if time.monotonic() > deadline:
                raise late()
            kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": 1000}
            if token:
                kwargs["ContinuationToken"] = token
            page = _with_retries(options.retry, uri, _bind(client.list_objects_v2, kwargs))
            contents = page.get("Contents", [])
            keys += len(contents)
            if keys > options.max_list_keys:
                raise _list_refused(uri, f"more than {options.max_list_keys} keys")
            yield from contents
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")
            if not token or token in seen:
                raise _list_refused(uri, "a truncated page without a new continuation token")
            seen.add(token)
    finally:
        if events is not None:
            events.unregister(event, unique_id=uid)


def open_location(source: str | os.PathLike[str], *, s3: S3Options | None = None) -> Location:
    """Resolve a path, directory, ``s3://bucket/key`` or ``s3://bucket/prefix/``."""
    text = os.fspath(source)
    if text.startswith("s3://"):
        options = s3 or S3Options()
        bucket, key = parse_s3_uri(text)
        client = read_client(options)
        if key and not key.endswith("/"):
            # An object, unless it does not exist and a prefix of that name does.
            try:
                head = _with_retries(
                    options.retry, text, lambda: client.head_object(Bucket=bucket, Key=key)
                )
                return Location(
                    text,
                    is_dir=False,
                    s3=options,
                    client=client,
                    bucket=bucket,
                    prefix=key,
                    listing={
                        key.rsplit("/", 1)[-1]: (int(head["ContentLength"]), head.get("ETag"))
                    },
                )
            except SourceError as exc:
                if "not found" not in exc.message:
                    raise
            key = key + "/"
        listing: dict[str, tuple[int, str | None]] = {}
        for obj in s3_list(client, bucket, key, options):
            rel = str(obj["Key"])[len(key) :]
            if rel and not rel.endswith("/"):
                # A hostile bucket can hold keys like "../../x": refuse the whole listing
                # rather than skip, so nothing downstream sees a partial model.
                listing[safe_relative_name(rel, f"listing of {text}")] = (
                    int(obj["Size"]),
                    obj.get("ETag"),
                )
        if not listing:
            raise SourceError(f"{text}: no such object or prefix", hint="check the bucket and key")
        return Location(
            text, is_dir=True, s3=options, client=client, bucket=bucket, prefix=key, listing=listing
        )
    path = Path(text)
    if path.is_dir():
        return Location(text, is_dir=True, local_path=path)
    if path.is_file():
        return Location(text, is_dir=False, local_path=path)
    raise SourceError(f"{text}: no such file or directory", hint="check the path of the model")
