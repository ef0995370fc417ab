"""The files of a model as the loader opens them: which ones, their signed digests, and
each one's head read once, checked against the signature, then parsed.

Nothing read from the model chooses anything before it matched the signature: the
index is checked as bytes before it is parsed, and without an index the set of weight
files is the signed one, never what a listing happens to show (issue 12.1).

A weight file signed without weightguard's chunk digests (by model_signing: a whole-file
digest, ``files`` serialization, or one per shard, ``shards``) cannot have its head
checked before the rest of it was read: its head is read once, parsed (bounded, strict)
only to place the records, and hashed with the rest in the load's one pass
(:mod:`weightguard._internal.load.stream_digests`); nothing is returned before every
digest of the file matched.  Its size was checked against the signature first, so the
header can only place bytes inside memory of the signed size.
"""

from __future__ import annotations

import hashlib
import hmac
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from weightguard._internal.format.layout import MAGICS
from weightguard._internal.format.model_dir import top_level_weights
from weightguard._internal.format.safetensors import MAX_HEADER_SIZE, TensorInfo
from weightguard._internal.foundation.names import safe_relative_name
from weightguard._internal.load.pipeline import FileJob, Record, digest_matches
from weightguard._internal.load.plan import Geometry
from weightguard._internal.load.sources import GrowingReader, Location, Source
from weightguard.errors import CoverageError, FormatError, IntegrityError

if TYPE_CHECKING:
    from weightguard._internal.format.layout import ArtifactHeader, ChunkCipher

__all__ = [
    "INDEX_NAME",
    "ModelFile",
    "SignedDigests",
    "check_signed_bytes",
    "check_streamed",
    "digests_for",
    "open_file",
    "select_files",
    "signed_ranges",
]

INDEX_NAME = "model.safetensors.index.json"
_PLAIN_UNSIGNED_CHUNK = 8 * 1024 * 1024  # record size of an unsigned plain file's load
_PROBE = 64 * 1024  # first read of an unsigned file: enough for most headers


# eq=False: working state, compared by identity (one generated method less to define on
# the loader's import path, issue 25)
@dataclass(eq=False)
class ModelFile:
    name: str  # relative name within the model (or the file's base name)
    display: str  # path or s3 URI for messages
    source: Source
    encrypted: bool
    geometry: Geometry
    tensors: tuple[TensorInfo, ...]
    metadata: dict[str, str] | None
    header_digest: str
    header: ArtifactHeader | None = None  # an encrypted file's artifact header
    cipher: ChunkCipher | None = None  # an encrypted file's, once unlocked
    # the bytes [0, data_offset) of an artifact, verified unless streamed; of a streamed
    # plain file, its header segment (hashed first in each load)
    head: bytes = b""
    st_raw: bytes = b""  # the original safetensors header segment (u64 length + JSON)

    # A ModelFile is completed here, in two steps the loader runs in order: open_file
    # (head read and checked against the signature), then, for an encrypted file,
    # unlock (its data key) and open_header (its authenticated safetensors header).

    @property
    def artifact(self) -> ArtifactHeader:
        """The artifact header of an encrypted file."""
        if self.header is None:
            raise FormatError(f"{self.display}: not an encrypted artifact")
        return self.header

    def unlock(self, data_key: bytearray) -> None:
        """The file's cipher from its data key (key commitment checked: WrongKeyError)."""
        from weightguard._internal.format.layout import ChunkCipher

        self.cipher = ChunkCipher(self.artifact, data_key)

    def open_header(self) -> None:
        """The original safetensors header, from record 0: decrypted, checked against
        the artifact header and parsed once (tensors and metadata)."""
        if self.cipher is None:
            raise FormatError(f"{self.display}: its data key was not unwrapped")
        off, length = self.artifact.record_span(0)
        self.st_raw, self.tensors, self.metadata = self.cipher.open_st_header(
            self.head[off : off + length]
        )

    @property
    def streamed(self) -> bool:
        """Checked by whole-file / shard digests: every load reads the whole file."""
        return self.geometry.units is not None

    def job(self, records: list[Record], segments: list[int]) -> FileJob:
        """The pipeline job for ``records`` of this file (with a fresh in-order digest
        check when the file is streamed: ``records`` must then be all of them)."""
        g = self.geometry
        stream = None
        if g.units is not None:
            from weightguard._internal.load.stream_digests import StreamCheck

            stream = StreamCheck(
                self.display, self.source.size, g.units, g.unit_algorithm, self.head
            )
        return FileJob(
            self.display,
            self.source,
            records,
            segments,
            self.cipher,
            algorithm=g.algorithm,
            stream=stream,
        )


def select_files(loc: Location, signed: Mapping[str, Any] | None) -> list[str]:
    """The weight files of a model: the index's shards, or every top-level .safetensors.

    ``signed`` (the verified manifest's files) decides for a signed load: the index is
    used only after its bytes matched the signed digest, and without an index the set
    is the signed ``.safetensors`` files, never what the listing happens to show.
    """
    if not loc.is_dir:
        return loc.names()
    names = loc.names() if signed is None else sorted(signed)
    if INDEX_NAME in names:
        from weightguard._internal.foundation.boundedjson import MAX_INDEX_BYTES, loads_index

        raw = loc.read_small(INDEX_NAME, limit=MAX_INDEX_BYTES)
        if signed is not None:  # verified before a byte of it is parsed
            check_signed_bytes(loc, INDEX_NAME, raw, signed[INDEX_NAME])
        if raw.startswith(MAGICS):
            return _sealed_index_shards(loc, names, signed)
        index = loads_index(raw, what=f"{loc.uri}/{INDEX_NAME}")
        try:
            weight_map = index["weight_map"]
            shards = sorted({str(v) for v in weight_map.values()})
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            raise FormatError(
                f"{loc.uri}/{INDEX_NAME}: not a valid safetensors index (no weight_map)"
            ) from None
        for shard in shards:
            safe_relative_name(shard, f"{loc.uri}/{INDEX_NAME}")
        missing = [s for s in shards if s not in names]
        if missing:
            if signed is not None:
                raise CoverageError(
                    f"{loc.uri}: the signed index names shards the signature does not "
                    f"cover: {', '.join(missing[:5])}",
                    hint="re-sign the whole model directory",
                )
            raise FormatError(
                f"{loc.uri}: the index names shards that are missing: {', '.join(missing[:5])}",
                hint="fetch the whole model directory",
            )
        return shards
    shards = top_level_weights(names)
    if not shards:
        raise FormatError(
            f"{loc.uri}: no .safetensors files in the model directory",
            hint="point at a model file or a directory holding .safetensors shards",
        )
    return shards


def _sealed_index_shards(
    loc: Location, names: list[str], signed: Mapping[str, Any] | None
) -> list[str]:
    """The shards of a model whose index ``encrypt --encrypt-other-files`` sealed.

    A signed load does not need the index: the verified listing already names the
    shards (every signed top-level .safetensors file), and the index's own data key would
    have to be unwrapped before the shards' headers are read.  An unverified load has
    nothing else it could trust, so it is refused."""
    if signed is None:
        raise FormatError(
            f"{loc.uri}/{INDEX_NAME}: the index is encrypted, and only a signed load can "
            "do without it",
            hint="load it with the signer's trust anchor (the signature names the shards)",
        )
    shards = top_level_weights(names)
    if not shards:
        raise FormatError(f"{loc.uri}: no signed .safetensors files in the model directory")
    return shards


def signed_ranges(fd: Any, path: str) -> tuple[tuple[int, int, bytes], ...]:
    """``(offset, length, digest)`` of each whole-file or shard digest of a file signed
    without chunk digests (``fd.chunked`` False): ``fd.digests[k]`` covers
    ``fd.range(k)``.  They must tile ``[0, size)`` exactly, else :class:`IntegrityError`."""
    size = int(fd.size)
    out: list[tuple[int, int, bytes]] = []
    pos = 0
    for k, digest in enumerate(fd.digests):
        off, length = fd.range(k)
        length = min(length, size - off)  # a shard larger than the file: the file
        if off != pos or length < 0 or (length == 0 and size != 0) or off + length > size:
            raise IntegrityError(
                f"signed digest {k} covers bytes {off}-{off + length}, which do not follow "
                f"on from {pos} within the signed size {size}",
                path=path,
            )
        out.append((int(off), int(length), bytes(digest)))
        pos = off + length
    if pos != size or not out:
        raise IntegrityError(
            f"the signed digests cover {pos} bytes, the signed size is {size}", path=path
        )
    return tuple(out)


def check_signed_bytes(loc: Location, name: str, data: bytes, fd: Any) -> None:
    """``data`` (read once, then used) must be exactly the signed file ``name``: the one
    check for every small file (index, config, tokenizer) before anything parses it.

    The whole-file digest, or (model_signing's ``shards``) each shard's digest."""
    from weightguard._internal.signing.hashing import whole_hasher

    path = f"{loc.uri.rstrip('/')}/{name}" if loc.is_dir else loc.uri
    alg = str(fd.resource_algorithm)
    if getattr(fd, "chunked", True):
        ranges: tuple[tuple[int, int, bytes], ...] = ((0, len(data), fd.resource_digest),)
    else:
        ranges = signed_ranges(fd, path)
    ok = len(data) == int(fd.size)
    view = memoryview(data)
    for off, length, digest in ranges:
        h = whole_hasher(alg, size=length, path=name)
        h.update(view[off : off + length])
        ok = hmac.compare_digest(h.digest(), digest) and ok
    if not ok:
        raise IntegrityError(f"{name} differs from the signed {alg} digest", path=path)


# NamedTuple, not @dataclass: immutable and compared by value all the same, and ~10x
# cheaper to define on the loader's import path (issue 25)
class SignedDigests(NamedTuple):
    size: int
    head: int
    stride: int
    digests: tuple[bytes, ...]
    algorithm: str  # chunk digest algorithm named in the signed record
    # signed without chunk digests: (offset, length, digest) of the whole-file or shard
    # digests, hashed in file order during the load (``unit_algorithm``: the OMS hash)
    units: tuple[tuple[int, int, bytes], ...] | None = None
    unit_algorithm: str = ""


def digests_for(
    loc: Location, files: list[str], signed: Mapping[str, Any]
) -> dict[str, SignedDigests]:
    """What each weight file is checked against: its signed chunk digests, or, signed
    without them (model_signing), its whole-file or shard digests (``units``)."""
    from weightguard._internal.signing.hashing import whole_hasher

    out: dict[str, SignedDigests] = {}
    for name in files:
        fd = signed.get(name if loc.is_dir else ".")
        if fd is None:
            raise CoverageError(
                f"{loc.uri}: the signature does not cover {name}",
                hint="re-sign the whole model directory",
            )
        if not getattr(fd, "chunked", True):
            path = f"{loc.uri.rstrip('/')}/{name}" if loc.is_dir else loc.uri
            alg = str(fd.resource_algorithm)
            whole_hasher(alg, path=path)  # an algorithm this weightguard has, or refused now
            units = signed_ranges(fd, path)
            out[name] = SignedDigests(int(fd.size), int(fd.size), int(fd.size), (), "", units, alg)
            continue
        out[name] = SignedDigests(
            int(fd.size),
            int(fd.head),
            int(fd.stride),
            tuple(bytes(d) for d in fd.digests),
            str(getattr(fd, "algorithm", "sha256-chunked-v1")),
        )
    return out


def check_streamed(loc: Location, name: str, signed: SignedDigests) -> None:
    """Read file ``name`` once, in order, and check its whole-file or shard digests
    (raises :class:`IntegrityError` when it differs).

    Only for a failure: a streamed file whose head did not parse (or whose key did not
    fit) is either tampered (this raises) or signed as it is (the caller's error stands).
    """
    assert signed.units is not None
    src = loc.open(name)
    try:
        if src.size != signed.size:
            raise IntegrityError(
                f"file is {src.size} bytes but the signature says {signed.size}", path=src.name
            )
        from weightguard._internal.load.stream_digests import StreamCheck

        check = StreamCheck(src.name, src.size, signed.units, signed.unit_algorithm)
        check.begin()
        buf = bytearray(max(1, min(_PLAIN_UNSIGNED_CHUNK, src.size)))
        off = 0
        while off < src.size:  # in order: each piece is hashed before the buffer is reused
            view = memoryview(buf)[: min(len(buf), src.size - off)]
            src.read_into(off, view)
            check.feed(off, view)
            off += len(view)
        check.finish()
    finally:
        src.close()


def open_file(loc: Location, name: str, signed: SignedDigests | None) -> ModelFile:
    """Read a file's head once, check it against the signature, parse it.

    Signed with chunk digests: the head is checked before it is parsed.  Signed with
    whole-file or shard digests (``signed.units``): the head is parsed and kept, and
    hashed with the rest of the file by every load (see the module's docstring).
    """
    from weightguard._internal.format import layout as fmt

    src = loc.open(name)
    display = src.name
    try:
        if signed is not None and src.size != signed.size:
            raise IntegrityError(
                f"file is {src.size} bytes but the signature says {signed.size}",
                path=display,
            )
        head, grow = _read_head(src, _chunked(signed))
        if len(head) < 8:
            raise FormatError(f"{display}: {src.size} bytes is too small for a model file")
        header_digest = "sha256:" + hashlib.sha256(head).hexdigest()
        if fmt.is_artifact(head):
            return _open_artifact(name, src, head, grow, signed, header_digest)
        return _open_plain(name, src, head, grow, signed, header_digest)
    except BaseException:
        src.close()
        raise


def _read_head(src: Source, chunked: SignedDigests | None) -> tuple[bytes, GrowingReader | None]:
    """The file's head: signed with chunk digests, the signed head length, read and
    checked against digest 0 before anything parses it; else a first probe, grown by
    the reader as the parser needs (``(head, reader)``)."""
    from weightguard._internal.format import layout as fmt

    if chunked is None:
        grow = GrowingReader(src, _PROBE)
        return bytes(grow.buf), grow
    display = src.name
    head_len = chunked.head
    if not 8 <= head_len <= min(src.size, MAX_HEADER_SIZE + fmt.MAX_HEADER_LEN + 1024):
        raise IntegrityError(f"signed head length {head_len} is implausible", path=display)
    head = src.read(0, head_len)
    if not chunked.digests or not digest_matches(
        head, chunked.digests[0], chunked.algorithm, path=display
    ):
        raise IntegrityError("header bytes do not match the signed digest", path=display, chunk=0)
    return head, None


def _chunked(signed: SignedDigests | None) -> SignedDigests | None:
    """``signed`` when it holds chunk digests (not whole-file or shard digests)."""
    return signed if signed is not None and signed.units is None else None


def _geometry(
    display: str,
    data_base: int,
    stride: int,
    chunk: int,
    tag: int,
    data_size: int,
    num_chunks: int,
    signed: SignedDigests | None,
) -> Geometry:
    """The file's record layout with what the signature checks it by."""
    chunked = _chunked(signed)
    return Geometry(
        display,
        data_base,
        stride,
        chunk,
        tag,
        data_size,
        num_chunks,
        chunked.digests if chunked else None,
        chunked.algorithm if chunked else "sha256-chunked-v1",
        signed.units if signed is not None else None,
        signed.unit_algorithm if signed is not None else "",
    )


def _open_artifact(
    name: str,
    src: Source,
    head: bytes,
    grow: GrowingReader | None,
    signed: SignedDigests | None,
    header_digest: str,
) -> ModelFile:
    """An encrypted artifact: its header parsed, its size and the signed chunk layout
    checked against it; the safetensors header inside waits for the data key."""
    from weightguard._internal.format import layout as fmt

    display = src.name
    chunked = _chunked(signed)
    reader: Any = grow if grow is not None else io.BytesIO(head)
    ah = fmt.read_header(reader, path=display)
    if ah.content != "safetensors":
        raise FormatError(
            f"{display}: artifact holds a {ah.content!r} file, not safetensors",
            hint="decrypt it with `weightguard decrypt` instead",
        )
    if src.size != ah.total_size:
        raise IntegrityError(
            f"artifact is {src.size} bytes, its header says {ah.total_size} "
            "(truncated or extended)",
            path=display,
        )
    stride = ah.chunk_size + fmt.TAG_SIZE
    if chunked is not None:
        if chunked.head != ah.data_offset or (chunked.stride != stride and ah.num_chunks > 1):
            raise IntegrityError("signed chunk layout does not match the artifact", path=display)
        if len(chunked.digests) != ah.num_chunks + 1:
            raise IntegrityError(
                f"signature has {len(chunked.digests)} digests, artifact has "
                f"{ah.num_chunks + 1} records",
                path=display,
            )
    else:
        assert grow is not None
        head = grow.upto(ah.data_offset)
    geo = _geometry(
        display,
        ah.data_offset,
        stride,
        ah.chunk_size,
        fmt.TAG_SIZE,
        ah.data_size,
        ah.num_chunks,
        signed,
    )
    return ModelFile(name, display, src, True, geo, (), None, header_digest, header=ah, head=head)


def _open_plain(
    name: str,
    src: Source,
    head: bytes,
    grow: GrowingReader | None,
    signed: SignedDigests | None,
    header_digest: str,
) -> ModelFile:
    """A plain safetensors file: its header parsed (bounded by the file's size) and
    the signed chunk digests checked to cover exactly its data."""
    from weightguard._internal.format.safetensors import parse_header_json

    display = src.name
    chunked = _chunked(signed)
    n = int.from_bytes(head[:8], "little")
    if n > MAX_HEADER_SIZE or 8 + n > src.size:
        raise FormatError(
            f"{display}: not a safetensors file or a weightguard artifact (header length {n})"
        )
    if chunked is not None:
        if chunked.head != 8 + n:
            raise IntegrityError("signed head does not match the safetensors header", path=display)
        st_raw = head[: 8 + n]
    else:
        assert grow is not None
        st_raw = grow.upto(8 + n)
    data_size = src.size - 8 - n
    _, tensors, metadata, _ = parse_header_json(st_raw[8:], data_size=data_size, path=display)
    if chunked is not None:
        chunk = chunked.stride
        num = (data_size + chunk - 1) // chunk if chunk > 0 else 0
        if chunk <= 0 or len(chunked.digests) != num + 1:
            raise IntegrityError("signed chunk digests do not match the file's size", path=display)
    else:
        chunk = _PLAIN_UNSIGNED_CHUNK
        num = (data_size + chunk - 1) // chunk
    streamed = signed is not None and signed.units is not None
    return ModelFile(
        name,
        display,
        src,
        False,
        _geometry(display, 8 + n, chunk, chunk, 0, data_size, num, signed),
        tensors,
        metadata,
        header_digest,
        head=st_raw if streamed else b"",
        st_raw=st_raw,
    )
