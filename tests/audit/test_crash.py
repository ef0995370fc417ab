"""A writer killed anywhere (``kill -9``, inside a rotation too) never makes its log BROKEN.

What a crash can leave, and how each is handled (docs/audit.md, "Crashes"):

* a torn last line: a prefix of one canonical record, without its newline, at the very
  end of the log.  ``verify`` reports it in ``result.crash`` (not counted, not a
  problem); the next writer cuts it off and writes a ``log.recover`` record;
* a rotated segment name that is a second hard link of the live file (killed between
  link and replace): read once by the verifier, removed by the next rotation;
* an orphan ``.<name>.rotate.*`` temp file: removed by the next rotation.

An incomplete line anywhere else, or one that is not a record prefix, stays
``truncated`` (tampering), and a cut that removes anchored or signed records is still
reported as ``truncated`` / ``unsigned``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from weightguard_cli.main import cli

from weightguard._internal.audit.readers import file_segments
from weightguard._internal.audit.record import ChainState, chain_record, digest
from weightguard.audit import AuditLog, generate_checkpoint_key, verify_log
from weightguard.errors import AuditError


@pytest.fixture
def shm() -> Iterator[Path]:
    """Hundreds of killed writers and their fsyncs: on tmpfs when there is one."""
    base = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
    d = Path(tempfile.mkdtemp(prefix="wg-audit-kill-", dir=base))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def ckey(tmp_path: Path) -> tuple[Path, Path]:
    priv = tmp_path / "ck.pem"
    generate_checkpoint_key(str(priv))
    return priv, Path(str(priv) + ".pub")


class MemoryAnchor:
    """The Anchor protocol in memory (the real S3 / Vault KV anchors: test_services)."""

    uri = "memory://anchor"

    def __init__(self) -> None:
        self.latest_by_log: dict[str, dict[str, Any]] = {}

    def publish(self, signed: dict[str, Any]) -> None:
        self.latest_by_log[signed["checkpoint"]["log"]] = signed

    def latest(self, log_id: str) -> dict[str, Any] | None:
        return self.latest_by_log.get(log_id)

    def log_ids(self) -> list[str]:
        return sorted(self.latest_by_log)


def _emit(log: AuditLog, i: int, big: bool = False) -> None:
    extra = {"note": ["a" * 900] * 10} if big else {}
    log.emit("fetch", object={"uri": f"s3://models/m{i}"}, bytes=i, **extra)


def _records(path: Path) -> list[dict[str, Any]]:
    out = []
    for seg in file_segments(str(path)):
        for line in Path(seg).read_bytes().splitlines():
            out.append(json.loads(line))
    return out


def test_torn_last_line_is_a_crash_not_tampering_and_the_next_writer_repairs_it(
    tmp_path: Path, ckey: tuple[Path, Path]
) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(str(path), signing_key=str(ckey[0]), checkpoint_every=4) as log:
        for i in range(6):
            _emit(log, i)  # seq 0-3, checkpoint 4, 5-6, the final checkpoint 7
    # what a writer killed inside write() leaves: a prefix of the next record's line
    last = json.loads(path.read_bytes().splitlines()[-1])
    state = ChainState(last["log"], next_seq=8, head=digest(last))
    whole = chain_record({"v": 1, "event": "load.ok", "outcome": "ok"}, state)
    torn = whole[:57]
    with open(path, "ab") as f:
        f.write(torn)
    res = verify_log(path, checkpoint_key=ckey[1], max_unsigned_tail=10)
    assert res.ok and res.problem is None, res.describe()
    assert res.crash is not None and res.crash.kind == "crash" and res.crash.line == 9
    assert res.records == 8  # the torn line is not one
    assert "BROKEN" not in res.describe() and "stopped mid-record" in res.describe()
    assert any("incomplete record" in w for w in res.warnings)
    cli_out = CliRunner().invoke(
        cli,
        [
            "audit",
            "verify",
            str(path),
            "--checkpoint-key",
            str(ckey[1]),
            "--max-unsigned-tail",
            "9",
        ],
    )
    assert cli_out.exit_code == 0, cli_out.output
    assert cli_out.output.startswith("OK: ") and "stopped mid-record" in cli_out.output

    # a later writer (a new process after the crash) cuts it off and says so
    log2 = AuditLog(str(path), signing_key=str(ckey[0]), checkpoint_every=4)
    _emit(log2, 99)
    log2.close()
    recs = _records(path)
    recover = [r for r in recs if r["event"] == "log.recover"]
    assert len(recover) == 1 and recover[0]["outcome"] == "error"
    assert recover[0]["extra"]["torn_bytes"] == len(torn)
    assert recover[0]["extra"]["torn_sha256"] == hashlib.sha256(torn).hexdigest()
    assert recover[0]["seq"] == 8 and recs[-2]["event"] == "fetch"
    res = verify_log(path, checkpoint_key=ckey[1])  # closed: nothing unsigned, no crash
    assert res.ok and res.crash is None, res.describe()


def test_an_unacknowledged_whole_record_without_its_newline_is_also_a_crash(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    with AuditLog(str(path)) as log:
        for i in range(3):
            _emit(log, i)
    data = path.read_bytes()
    path.write_bytes(data[:-1])  # killed after all but the last byte of the write
    res = verify_log(path)
    assert res.ok and res.crash is not None and res.records == 2


def test_incomplete_lines_that_a_crash_cannot_leave_are_still_truncated(
    tmp_path: Path, ckey: tuple[Path, Path]
) -> None:
    path = tmp_path / "audit.jsonl"
    write = tmp_path / "w.jsonl"
    with AuditLog(str(write)) as log:
        for i in range(3):
            _emit(log, i)
    good = write.read_bytes()
    # not the start of a record (a crash leaves a prefix of one canonical line)
    for junk in (b"garbage", b'{"a":"\xff', b"{\t", b'{"' + b"a" * 17_000):
        path.write_bytes(good + junk)
        res = verify_log(path)
        assert res.problem is not None and res.problem.kind == "truncated", junk[:10]
        assert "not the start of an audit record" in res.problem.message
        with pytest.raises(AuditError, match="not the start of an audit record"):
            AuditLog(str(path)).emit("load.start")
    # with --mixed, a foreign last line without newline is foreign output
    path.write_bytes(good + b"INFO shutting down")
    res = verify_log(path, allow_foreign=True)
    assert res.ok and res.foreign_lines == 1 and res.crash is None
    # an incomplete line at the end of a rotated segment: the log goes on after it
    lines = good.splitlines(keepends=True)
    seg = tmp_path / "audit.jsonl.000000000001"
    seg.write_bytes(lines[0] + lines[1][:40])
    path.write_bytes(lines[2])
    res = verify_log(path)
    assert res.problem is not None and res.problem.kind == "truncated"
    assert res.problem.source == str(seg) and "goes on after it" in res.problem.message


def test_a_cut_mid_record_that_removes_signed_or_anchored_records_is_still_detected(
    tmp_path: Path, ckey: tuple[Path, Path]
) -> None:
    """Cutting a log in the middle of a record is a crash only as far as the log itself
    can tell; what the anchor and the signed checkpoints prove still decides."""
    path = tmp_path / "audit.jsonl"
    anchor = MemoryAnchor()
    log = AuditLog(str(path), signing_key=str(ckey[0]), anchor=anchor, checkpoint_every=4)
    for i in range(10):
        _emit(log, i)
    log.close()
    full = path.read_bytes()
    assert verify_log(path, checkpoint_key=ckey[1], anchor=anchor).ok
    lines = full.splitlines(keepends=True)
    # cut inside line 6: records 0..5 stay, the anchored final checkpoint is gone
    path.write_bytes(b"".join(lines[:6]) + lines[6][:30])
    res = verify_log(path, checkpoint_key=ckey[1], anchor=anchor)
    assert res.problem is not None and res.problem.kind == "truncated"
    assert "the tail was cut off" in res.problem.message
    # without the anchor: records after the last signed checkpoint are unsigned
    res = verify_log(path, checkpoint_key=ckey[1])
    assert res.problem is not None and res.problem.kind == "unsigned"
    # a repaired log: the log.recover record does not hide the cut either
    AuditLog(str(path)).emit("load.start")
    res = verify_log(path, checkpoint_key=ckey[1], anchor=anchor)
    assert res.problem is not None and res.problem.kind in ("truncated", "edited")


def test_a_rotator_killed_between_link_and_replace_does_not_duplicate_records(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path), max_bytes=1_000, sync="none")
    while not path.exists() or path.stat().st_size < 1_000:
        _emit(log, 0)
    log.close()
    n = len(path.read_bytes().splitlines())
    # the killed rotator's link, and its temp file
    os.link(path, tmp_path / f"audit.jsonl.{n - 1:012d}")
    (tmp_path / ".audit.jsonl.rotate.0123abcd").write_bytes(b'{"v":1')
    res = verify_log(path)
    assert res.ok and res.records == n, res.describe()
    # a writer that does not rotate (no max_bytes) appends to the live file under both
    # names; the stale name is then an older seq: still read once
    AuditLog(str(path), sync="none").emit("load.start")
    res = verify_log(path)
    assert res.ok and res.records == n + 1, res.describe()
    # the next rotation removes both leftovers
    log = AuditLog(str(path), max_bytes=1_000, sync="none")
    _emit(log, 1)
    log.close()
    assert not list(tmp_path.glob(".audit.jsonl.rotate*"))
    inodes = [os.stat(p).st_ino for p in file_segments(str(path))]
    assert len(inodes) == len(set(inodes)) == len(list(tmp_path.glob("audit.jsonl*")))
    res = verify_log(path)
    assert res.ok and res.records == n + 3, res.describe()  # + rotate + event


# -- kill -9 at every system call of a writer going through rotations -------------------

_HOOKED = ("write", "fsync", "link", "replace", "open", "ftruncate", "unlink", "flock")


def _child_with_kill_at(k: int, mode: str, path: Path, key: Path, seed: int) -> None:
    """In a forked child: emit through rotations; SIGKILL self at hooked call ``k``."""
    import fcntl

    count = [0]
    rnd = random.Random(seed)

    def hook(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            count[0] += 1
            if count[0] == k:
                if name == "write" and mode == "partial" and len(args[1]) > 1:
                    real(args[0], bytes(args[1])[: rnd.randrange(1, len(args[1]))])
                elif mode == "after":
                    real(*args, **kwargs)
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*args, **kwargs)

        return wrapped

    for name in _HOOKED:
        if name == "flock":
            fcntl.flock = hook(name, fcntl.flock)
        else:
            setattr(os, name, hook(name, getattr(os, name)))
    log = AuditLog(str(path), signing_key=str(key), max_bytes=1_200, checkpoint_every=3)
    for i in range(12):
        _emit(log, i, big=i % 5 == 4)
    log.close()


def _run_child(fn: Callable[[], None]) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            fn()
        except BaseException:
            code = 3
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return status


def _check_after_crash(path: Path, pub: Path) -> bool:
    """Lenient (a crashed writer's unsigned tail accepted), then repaired and strict."""
    res = verify_log(path, checkpoint_key=pub, max_unsigned_tail=10_000)
    assert res.ok, res.describe()
    crashed = res.crash is not None
    log = AuditLog(str(path), signing_key=str(pub)[: -len(".pub")], max_bytes=1_200)
    _emit(log, 1000)
    log.close()
    res = verify_log(path, checkpoint_key=pub)
    assert res.ok and res.crash is None, res.describe()
    assert not list(path.parent.glob(f".{path.name}.rotate*"))
    segs = file_segments(str(path))
    assert len({os.stat(s).st_ino for s in segs}) == len(segs)
    return crashed


def test_kill_at_every_system_call_of_rotating_writers(shm: Path, ckey: tuple[Path, Path]) -> None:
    tmp_path = shm
    kills = torn = 0
    for mode in ("partial", "after"):
        k = 0
        while True:
            k += 1
            d = tmp_path / f"{mode}{k}"
            d.mkdir()
            path = d / "audit.jsonl"
            with AuditLog(str(path), signing_key=str(ckey[0])) as first:
                _emit(first, 0)  # a log to continue (a kill before any write: no log)
            status = _run_child(partial(_child_with_kill_at, k, mode, path, ckey[0], seed=k))
            if os.WIFEXITED(status):  # the run had fewer than k hooked calls: all covered
                assert os.WEXITSTATUS(status) == 0
                break
            assert os.WTERMSIG(status) == signal.SIGKILL
            kills += 1
            torn += _check_after_crash(path, ckey[1])
    assert kills > 150 and torn > 5, (kills, torn)
