"""The verifier streams: a log is read once, in memory that does not grow with it, and
each record that chains is handed to a visitor (the report counts as it verifies).
The audit lines' fast JSON path (boundedjson.loads_canonical) agrees with the bounded
parser on every input: the same value or the same refusal."""

from __future__ import annotations

import contextlib
import hashlib
import json
import tracemalloc
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from weightguard._internal.audit.record import GENESIS, canonical
from weightguard._internal.foundation import boundedjson
from weightguard.audit import log_size, verify_log
from weightguard.errors import FormatError


def _write_log(path: Path, n: int) -> None:
    """``n`` chained canonical records shaped like the access events the writer emits
    (written directly: the real writer takes minutes for this many)."""
    prev = GENESIS
    with open(path, "wb") as f:
        for seq in range(n):
            rec = {
                "event": "load.ok",
                "log": "7d1f0c2e-0000-4000-8000-000000000001",
                "object": {"key_id": "vault://transit/models", "uri": "s3://models/m"},
                "outcome": "ok",
                "prev": prev,
                "seq": seq,
                "subject": {"k8s_namespace": "serving", "k8s_pod": f"llama-{seq % 6}"},
                "time": f"2026-11-02T08:{seq // 60 % 60:02d}:{seq % 60:02d}.000000Z",
                "v": 1,
            }
            line = canonical(rec)
            f.write(line + b"\n")
            prev = "sha256:" + hashlib.sha256(line).hexdigest()


def test_a_large_log_verifies_in_bounded_memory_with_a_visitor(tmp_path: Path) -> None:
    n = 100_000
    log = tmp_path / "big.jsonl"
    _write_log(log, n)
    size = log_size(str(log))
    assert size == log.stat().st_size and size > 25_000_000
    seen = [0]
    steps: list[int] = []

    def visit(rec: dict[str, Any]) -> None:
        seen[0] += 1

    tracemalloc.start()
    try:
        res = verify_log(log, on_record=visit, progress=steps.append)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert res.ok and res.records == n and seen[0] == n, res.describe()
    assert res.logs[0].last_seq == n - 1
    # the log is over 25 MB; holding its records (or a digest per record) would be far
    # more than this
    assert peak < 4 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert sum(steps) == size and len(steps) >= 20  # the progress advanced (~ every MiB)


def test_the_visitor_sees_only_what_chained_before_the_first_problem(tmp_path: Path) -> None:
    log = tmp_path / "l.jsonl"
    _write_log(log, 50)
    lines = log.read_bytes().splitlines(keepends=True)
    del lines[30]
    log.write_bytes(b"".join(lines))
    seqs: list[int] = []
    res = verify_log(log, on_record=lambda r: seqs.append(r["seq"]))
    assert not res.ok and res.problem is not None and res.problem.kind == "deleted"
    assert seqs == list(range(30))  # the caller keeps what it gathered only if ok


def test_a_reorder_found_by_looking_ahead(tmp_path: Path) -> None:
    """Where a seq is out of place the verifier looks ahead as the log streams by:
    the expected record later in the log makes it a reorder, not a deletion."""
    log = tmp_path / "l.jsonl"
    _write_log(log, 40)
    lines = log.read_bytes().splitlines(keepends=True)
    lines.append(lines.pop(10))  # seq 10 moved to the end
    log.write_bytes(b"".join(lines))
    res = verify_log(log)
    assert res.problem is not None and res.problem.kind == "reordered"
    assert "seq 10 comes later" in res.problem.message
    lines.pop()  # and without it: deleted
    log.write_bytes(b"".join(lines))
    res = verify_log(log)
    assert res.problem is not None and res.problem.kind == "deleted"


def _both(data: bytes, **kw: Any) -> tuple[Any, Any]:
    out = []
    for fn in (boundedjson.loads, boundedjson.loads_canonical):
        try:
            out.append(("value", fn(data, what="x", max_bytes=4096, **kw)))
        except FormatError as exc:
            out.append(("refused", str(exc)))
    return out[0], out[1]


RECORD = canonical(
    {
        "event": "load.ok",
        "extra": {"a": [1, 2.5, None, True], "n": -(2**63)},
        "log": "4f0c",
        "prev": "sha256:" + "ab" * 32,
        "seq": 2**63 - 1,
        "subject": {"user": "u", "host": 'h":x'},
    }
)
MUTATIONS = [b'"', b":", b" :", b",", b"{", b"}", b"[", b"]", b"1", b"9" * 20, b"1e400",
             b"NaN", b"-", b".", b"\\", b"\xff", b'"log":"x"', b'"a":1,"a":1', b" "]  # fmt: skip


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.lists(
        st.tuples(st.integers(0, len(RECORD)), st.integers(0, 3), st.sampled_from(MUTATIONS)),
        max_size=4,
    ),
    st.booleans(),
    st.integers(1, 6),
)
def test_fast_path_agrees_with_the_bounded_parser(
    edits: list[tuple[int, int, bytes]], floats: bool, max_depth: int
) -> None:
    data = RECORD
    for at, cut, ins in edits:
        data = data[:at] + ins + data[at + cut :]
    slow, fast = _both(data, floats=floats, max_depth=max_depth)
    assert slow == fast
    if slow[0] == "value":  # and the same key order
        assert list(json.dumps(slow[1])) == list(json.dumps(fast[1]))


def test_fast_path_refusals_are_the_bounded_parsers() -> None:
    cases = [b'{"a":1,"a" :2,"b":3}', b'{"a":1,"a":2}', b'{"a":NaN}', b'{"a":1e400}',
             b'{"a":12345678901234567890}', b'{"a":-9223372036854775809}', b'{"a":1.5}',
             b'{"a":[[[[[[[[1]]]]]]]]}', b'{"a":"\xff"}', b'{"a":[1,{"b":1,"b":1}]}']  # fmt: skip
    for data in cases:
        slow, fast = _both(data, max_depth=6)
        assert slow[0] == "refused" and slow == fast, data
    with contextlib.suppress(FormatError):
        boundedjson.loads_canonical(b"1" * 5000, what="x", max_bytes=8192)
