"""The audit hash chain: append, checkpoint, rollback and publish, once for every sink.

A sink is a byte writer (:class:`ChainedSink`): it gives the chain exclusive access
to its log and the state the log's end continues (:meth:`ChainedSink._session`), and
writes the bytes the chain hands it (:meth:`ChainedSink._write`).  The chain turns a
record *body* (what happened) into a record (body + ``log``, ``seq``, ``prev``),
adds a signed checkpoint when one is due, undoes its state when the write fails (so
the next record continues what was written), and publishes the checkpoint to the
anchor only once its line is written.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from weightguard._internal.audit.checkpoint import Anchor, CheckpointSigner, checkpoint_payload
from weightguard._internal.audit.record import (
    FORMAT_VERSION,
    ChainState,
    chain_record,
    utc_now,
)
from weightguard.errors import ConfigError


class Checkpointer:
    """Decides when a checkpoint is due, signs it and anchors it."""

    def __init__(
        self,
        signer: CheckpointSigner | None,
        anchor: Anchor | None,
        *,
        every: int = 1000,
        interval_s: float = 300.0,
    ) -> None:
        if every < 2:
            raise ConfigError("checkpoint interval must be at least 2 records")
        self.signer = signer
        self.anchor = anchor
        self.every = every
        self.interval_s = interval_s
        self._last = time.monotonic()

    def can_sign(self, state: ChainState) -> bool:
        """Whether a checkpoint would cover something: a key, records, none since."""
        return self.signer is not None and state.next_seq > 0 and not state.last_is_checkpoint

    def due(self, state: ChainState) -> bool:
        if not self.can_sign(state):
            return False
        if state.next_seq % self.every == 0:
            return True
        return time.monotonic() - self._last >= self.interval_s

    def make(self, state: ChainState) -> dict[str, Any]:
        """A signed checkpoint body for the current head."""
        assert self.signer is not None
        cp = {"log": state.log_id, "size": state.next_seq, "head": state.head, "time": utc_now()}
        sig = self.signer.sign(checkpoint_payload(cp))
        self._last = time.monotonic()
        return {
            "v": FORMAT_VERSION,
            "time": cp["time"],
            "event": "checkpoint",
            "outcome": "ok",
            "checkpoint": cp,
            "sig": sig,
        }


def publish(anchor: Anchor | None, body: dict[str, Any]) -> None:
    if anchor is not None:
        anchor.publish({"checkpoint": body["checkpoint"], "sig": body["sig"]})


class ChainedSink:
    """A sink whose chain this module keeps; subclasses only hold and write bytes.

    ``anchor``: where this sink's checkpoints are published; None: the checkpointer's.
    """

    name: str
    anchor: Anchor | None = None

    # -- what a sink provides ------------------------------------------------------
    def _session(
        self, checkpointer: Checkpointer | None
    ) -> AbstractContextManager[ChainState]:  # pragma: no cover - abstract
        """Exclusive access to the log, yielding the state its end continues.

        With a ``checkpointer`` the session appends: a sink may first close its
        current segment (the file sink's rotation) with a checkpoint of its own.
        """
        raise NotImplementedError

    def _write(
        self, data: bytes, *, records: int, durable: bool, force: bool
    ) -> None:  # pragma: no cover - abstract
        """Write ``records`` whole record lines, the last of them now the chain's head.

        ``durable``: the event must be stored before the call returns (subject to the
        sink's sync mode).  ``force``: a checkpoint is among them: stored now,
        whatever the sync mode.  Raises AuditError; the chain then undoes its state.
        """
        raise NotImplementedError

    # -- the chain -----------------------------------------------------------------
    def commit(
        self,
        state: ChainState,
        bodies: Sequence[dict[str, Any]],
        checkpointer: Checkpointer | None,
        *,
        durable: bool = True,
        checkpoint: bool = False,
        force: bool = False,
    ) -> None:
        """Chain ``bodies``, add a checkpoint (when due, or ``checkpoint``), write, publish.

        ``force``: store the bytes now whatever the sync mode (a checkpoint always is).
        Called inside a session.  When anything fails before the bytes are written
        the state is as it was, so the next record continues what the log holds.
        """
        snapshot = state.snapshot()
        signed: dict[str, Any] | None = None
        try:
            data = b"".join(chain_record(body, state) for body in bodies)
            if checkpointer is not None and (
                checkpointer.can_sign(state) if checkpoint else checkpointer.due(state)
            ):
                signed = checkpointer.make(state)
                data += chain_record(signed, state)
            if data:
                self._write(
                    data,
                    records=len(bodies) + (signed is not None),
                    durable=durable,
                    force=force or signed is not None,
                )
        except BaseException:
            state.restore(snapshot)
            raise
        if signed is not None and checkpointer is not None:
            publish(self.anchor or checkpointer.anchor, signed)

    def append(
        self, body: dict[str, Any], checkpointer: Checkpointer, *, durable: bool = True
    ) -> None:
        """Append one event (and a checkpoint when one is due)."""
        with self._session(checkpointer) as state:
            self.commit(state, [body], checkpointer, durable=durable)

    def checkpoint(self, checkpointer: Checkpointer) -> None:
        """Write a checkpoint now, if there is a key and something it would cover."""
        if checkpointer.signer is None:
            return
        with self._session(None) as state:
            self.commit(state, [], checkpointer, checkpoint=True)
