"""One chain for every sink (_internal/audit/chain.py): a write that fails leaves the
chain as it was, so the next record continues what the log holds -- the same for
every sink, for events and for checkpoints (a stream checkpoint that failed used to
leave the chain advanced past a line that was never written)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from weightguard.audit import AuditLog, StreamSink, generate_checkpoint_key, verify_log
from weightguard.errors import AuditError


class FlakyStream(io.StringIO):
    """A text stream whose next ``fail`` writes raise (a full pipe, a closed socket)."""

    fail = 0

    def write(self, s: str) -> int:
        if self.fail:
            self.fail -= 1
            raise OSError(32, "Broken pipe")
        return super().write(s)


@pytest.fixture
def ckey(tmp_path: Path) -> tuple[Path, Path]:
    priv = tmp_path / "ck.pem"
    generate_checkpoint_key(str(priv))
    return priv, Path(str(priv) + ".pub")


def test_a_failed_write_leaves_the_chain_where_the_log_is(
    tmp_path: Path, ckey: tuple[Path, Path]
) -> None:
    stream = FlakyStream()
    log = AuditLog([StreamSink(stream, name="flaky")], signing_key=str(ckey[0]))
    log.emit("fetch", bytes=1)
    stream.fail = 1
    with pytest.raises(AuditError, match="cannot write audit log flaky: Broken pipe"):
        log.emit("fetch", bytes=2)  # not written: not in the chain
    log.emit("fetch", bytes=3)
    stream.fail = 1
    with pytest.raises(AuditError, match="Broken pipe"):
        log.checkpoint()  # nor is a checkpoint that could not be written
    log.emit("fetch", bytes=4)
    log.close()  # the final checkpoint
    path = tmp_path / "stream.jsonl"
    path.write_text(stream.getvalue())
    res = verify_log(path, checkpoint_key=ckey[1])
    assert res.ok and res.records == 4, res.describe()  # 1, 3, 4 and the checkpoint
    assert res.logs[0].checkpoints_verified == 1
