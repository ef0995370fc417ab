"""Synthetic access audit logs for the report tests and benchmarks/report_scale.py.

The log is written by the real :class:`weightguard.audit.AuditLog` (chain, signed
checkpoints every 1000 records); only the clock is replaced, so that a million events
spread over days instead of the seconds it takes to write them.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from unittest import mock

from weightguard import audit

URI = "s3://models/acme/llama-3.2-1b"
START = _dt.datetime(2026, 11, 2, 8, 0, tzinfo=_dt.UTC)


@dataclass
class Expected:
    """What a report over the generated log must count."""

    events: int = 0
    loads: dict[str, int] = field(default_factory=dict)  # identity -> load.ok
    denied: int = 0
    tamper: int = 0
    rewraps: int = 0
    identities: set[str] = field(default_factory=set)


class _Clock:
    """Replaces the writer's clock: ``step_s`` apart (busier by day with ``diurnal``),
    and a jump of ``gap`` once ``jump()`` is called."""

    def __init__(self, step_s: float, diurnal: bool) -> None:
        self.t = START
        self.step = step_s
        self.diurnal = diurnal

    def now(self) -> str:
        step = self.step
        if self.diurnal:
            step *= 0.45 if 8 <= self.t.hour < 20 else 2.2
        self.t += _dt.timedelta(seconds=step)
        return self.t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")

    def jump(self, seconds: float) -> None:
        self.t += _dt.timedelta(seconds=seconds)


@contextmanager
def _clock(clock: _Clock) -> Iterator[None]:
    with mock.patch.object(audit, "utc_now", clock.now):
        yield


def write_log(
    path: str | os.PathLike[str],
    key: str | os.PathLike[str],
    events: int,
    *,
    span_days: float = 14.0,
    pods: int = 6,
    gap_after: int | None = None,
    diurnal: bool = False,
) -> Expected:
    """Write ``events`` access events (load.start/key.unwrap/load.ok per load, a denial
    every 997th load, a tamper event every 4999th, a rewrap every 1000 rounds) to ``path``,
    checkpoints signed with the Ed25519 ``key``.  ``gap_after``: after that many events
    the clock jumps two days (a gap the report must show); ``diurnal``: busier by day."""
    exp = Expected()
    step = span_days * 86400.0 / max(events, 1)
    log = audit.AuditLog(
        os.fspath(path), signing_key=os.fspath(key), sync="none", checkpoint_interval_s=1e9
    )
    sas = ["inference", "batch-eval", "canary"]
    clock = _Clock(step, diurnal)
    with _clock(clock), log:
        n = 0
        i = 0
        version = 1
        while n < events:
            p = i % pods
            sa = sas[p % len(sas)]
            subject = {
                "k8s_namespace": "serving",
                "k8s_pod": f"llama-{p}",
                "k8s_service_account": sa,
                "k8s_node": f"node-{p % 3}",
                "vault_role": sa,
            }
            ident = f"serving/{sa}"
            exp.identities.add(ident)
            obj = {"uri": URI, "key_id": "vault://transit/models", "key_version": version}
            if gap_after is not None and n <= gap_after < n + 3:
                clock.jump(2 * 86400)
            if i % 1000 == 500:  # the release job rotates the key: a rewrap of the headers
                log.emit(
                    "rewrap",
                    object={**obj, "key_provider": "vault-transit", "key_version": version + 1},
                    subject={"user": "release-bot", "host": "ci-1"},
                    previous={"key_id": "vault://transit/models", "key_version": version},
                )
                version += 1
                exp.rewraps += 1
                n += 1
            elif i % 997 == 996:
                log.emit(
                    "load.denied",
                    outcome="denied",
                    reason="key access denied",
                    object=obj,
                    subject=subject,
                )
                exp.denied += 1
                n += 1
            elif i % 4999 == 4998:
                log.emit(
                    "tamper.detected",
                    outcome="tamper",
                    reason="chunk 3 differs",
                    object=obj,
                    subject=subject,
                )
                exp.tamper += 1
                n += 1
            else:
                log.emit("load.start", object=obj, subject=subject)
                log.emit("key.unwrap", object=obj, subject=subject)
                log.emit(
                    "load.ok", object=obj, subject=subject, bytes=2_471_000_000, duration_s=3.2
                )
                exp.loads[ident] = exp.loads.get(ident, 0) + 1
                n += 3
            i += 1
        exp.events = n
    return exp
