"""Many threads and processes appending to one file keep one valid chain."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import threading
from pathlib import Path

import pytest

import weightguard._internal.audit.sinks as sinks_mod
from weightguard.audit import AuditLog, generate_checkpoint_key, verify_log


def _proc_worker(path: str, key: str, worker: int, n: int) -> None:
    log = AuditLog(path, signing_key=key, checkpoint_every=25, sync="batch")
    for i in range(n):
        log.emit("load.ok", object={"uri": f"s3://m/p{worker}"}, bytes=i)
    log.close()


def test_threads_and_processes_share_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    key = tmp_path / "ck.pem"
    generate_checkpoint_key(str(key))
    n_threads, n_procs, per = 6, 4, 60

    shared = AuditLog(str(path), signing_key=str(key), checkpoint_every=25)

    def thread_worker(t: int) -> None:
        for i in range(per):
            shared.emit("fetch", object={"uri": f"s3://m/t{t}"}, bytes=i)

    ctx = mp.get_context("fork")
    procs = [
        ctx.Process(target=_proc_worker, args=(str(path), str(key), w, per)) for w in range(n_procs)
    ]
    threads = [threading.Thread(target=thread_worker, args=(t,)) for t in range(n_threads)]
    for p in procs:
        p.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    shared.close()

    recs = [json.loads(x) for x in path.read_bytes().splitlines()]
    events = [r for r in recs if r["event"] != "checkpoint"]
    assert len(events) == (n_threads + n_procs) * per
    assert [r["seq"] for r in recs] == list(range(len(recs)))
    assert len({r["log"] for r in recs}) == 1
    pids = {r["subject"]["pid"] for r in events}
    assert len(pids) == n_procs + 1
    # every (writer, i) pair is present exactly once
    seen = sorted((r["object"]["uri"], r["bytes"]) for r in events)
    assert len(set(seen)) == len(seen)
    res = verify_log(path, checkpoint_key=str(key) + ".pub")
    assert res.ok, res.describe()
    assert res.logs[0].checkpoints >= len(recs) // 25 - 1
    assert res.logs[0].checkpoints == res.logs[0].checkpoints_verified
    assert recs[-1]["event"] == "checkpoint"  # final checkpoint at close


def _rot_worker(path: str, worker: int, n: int) -> None:
    with AuditLog(path, max_bytes=20_000) as log:
        for i in range(n):
            log.emit("fetch", object={"uri": f"s3://m/r{worker}"}, bytes=i)


def test_concurrent_writers_across_rotation(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_rot_worker, args=(str(path), w, 80)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    segments = list(tmp_path.glob("audit.jsonl.*"))
    assert len(segments) >= 3
    res = verify_log(path)
    assert res.ok, res.describe()
    rotates = sum(
        1 for s in [*segments, path] for x in s.read_bytes().splitlines() if b'"log.rotate"' in x
    )
    assert res.records == 4 * 80 + rotates and rotates == len(segments)


def test_a_writer_that_opens_the_new_segment_waits_for_the_rotator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The window between naming the new segment and locking it is closed.

    A second writer (its own file description, so its own flock) appends right
    after the rotator's replace; it must wait for the rotator's record, or both
    write the same seq.
    """
    path = tmp_path / "audit.jsonl"
    rotator = AuditLog(str(path), max_bytes=1_000, sync="none")
    other = AuditLog(str(path), sync="none")
    while not path.exists() or path.stat().st_size < 1_000:
        rotator.emit("fetch", object={"uri": "s3://m/a"}, bytes=0)
    real_replace = os.replace
    late: list[threading.Thread] = []

    def replace_then_race(src: str, dst: str) -> None:
        real_replace(src, dst)
        if not late:
            t = threading.Thread(target=other.emit, args=("fetch",), kwargs={"bytes": 1})
            late.append(t)
            t.start()
            t.join(0.3)  # the late writer gets every chance to slip in

    monkeypatch.setattr(sinks_mod.os, "replace", replace_then_race)
    rotator.emit("fetch", object={"uri": "s3://m/a"}, bytes=2)
    late[0].join(10)
    rotator.close()
    other.close()
    res = verify_log(path)
    assert res.ok, res.describe()
    seqs = [json.loads(x)["seq"] for x in path.read_bytes().splitlines()]
    assert seqs == list(range(seqs[0], seqs[0] + 3))  # rotate, rotator's event, the late one


def test_a_rotation_that_failed_after_linking_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed rotation removes the segment link it made; one left by a rotator killed
    after linking is reused, not an error on every later append (every later load)."""
    from weightguard.errors import AuditError

    path = tmp_path / "audit.jsonl"
    log = AuditLog(str(path), max_bytes=1_000, sync="none")
    while not path.exists() or path.stat().st_size < 1_000:
        log.emit("fetch", bytes=0)
    real_replace = os.replace
    calls = {"n": 0}

    def fail_once(src: str, dst: str) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)

    monkeypatch.setattr(sinks_mod.os, "replace", fail_once)
    with pytest.raises(AuditError):
        log.emit("fetch", bytes=1)
    assert not list(tmp_path.glob("audit.jsonl.*"))  # its link was removed
    assert not list(tmp_path.glob(".audit.jsonl.rotate*"))  # and its temp file
    # a rotator killed between link and replace leaves the link: reused
    seq = json.loads(path.read_bytes().splitlines()[-1])["seq"]
    os.link(path, tmp_path / f"audit.jsonl.{seq:012d}")
    log.emit("fetch", bytes=2)
    assert len(list(tmp_path.glob("audit.jsonl.*"))) == 1
    log.close()
    res = verify_log(path)
    assert res.ok, res.describe()
    first = json.loads(path.read_bytes().splitlines()[0])
    assert first["event"] == "log.rotate"
