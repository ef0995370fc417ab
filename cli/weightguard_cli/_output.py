"""What the CLI writes besides results: library log records and progress.

    @quiet_option
    def cmd(..., quiet: bool):
        with progress("encrypting m", total, quiet) as advance:   # advance(n_bytes)
            ...

Progress (rich) goes to stderr and only when stderr is a terminal and --quiet is not
given, so pipes, logs and `--json` consumers see exactly what they saw before.
Importing this module is cheap: rich is imported only when a bar is shown.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def echo_json(doc: Any) -> None:
    """A JSON document on stdout: the one rule for every ``--json`` output (and the
    error object a failed ``--json`` command prints): one line, keys sorted, so a
    consumer can read one document per line."""
    click.echo(json.dumps(doc, sort_keys=True, default=str))


class _EchoHandler(logging.Handler):
    """Library records as `weightguard: warning: ...` lines on the current stderr.

    click.echo looks stderr up at each call, so output captured by a test runner
    (which swaps sys.stderr) still lands in the capture.
    """

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(f"weightguard: {record.levelname.lower()}: {record.getMessage()}", err=True)
        except Exception:  # a log line must never turn into a failed command
            self.handleError(record)


def configure_logging() -> None:
    """Route the `weightguard.*` loggers to stderr (warnings and up); idempotent."""
    logger = logging.getLogger("weightguard")
    if not any(isinstance(h, _EchoHandler) for h in logger.handlers):
        logger.addHandler(_EchoHandler(logging.WARNING))
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.WARNING)


def quiet_option(f: F) -> F:
    """Add ``-q/--quiet`` (parameter ``quiet: bool``): no progress display."""
    return click.option(
        "-q", "--quiet", is_flag=True, help="No progress display (also off when not a terminal)."
    )(f)


def _shown(quiet: bool) -> bool:
    return not quiet and sys.stderr.isatty()


@contextmanager
def progress(
    label: str, total: int | None, quiet: bool, *, unit: str = "bytes"
) -> Iterator[Callable[[int], None]]:
    """A progress bar of ``total`` bytes (``unit="records"``: a count of records; a
    spinner with elapsed time when unknown); yields ``advance(n)``, safe to call from
    worker threads."""
    if not _shown(quiet):
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    columns: list[Any] = [SpinnerColumn(), TextColumn("{task.description}")]
    if total and unit == "records":
        columns += [BarColumn(), MofNCompleteColumn(), TextColumn("records")]
    elif total:
        columns += [BarColumn(), DownloadColumn(), TransferSpeedColumn()]
    columns.append(TimeElapsedColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total or None)
        yield lambda n: bar.advance(task, n)


@contextmanager
def progress_of(label: str, quiet: bool) -> Iterator[Callable[[int, int], None]]:
    """A byte progress bar whose size the work finds out (``load``: once the model is
    verified and planned); yields ``report(done, total)``, safe to call from worker
    threads.  Until the first report it is a spinner with elapsed time."""
    if not _shown(quiet):
        yield lambda done, total: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )

    columns = [SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), DownloadColumn()]
    columns += [TransferSpeedColumn(), TimeElapsedColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


@contextmanager
def activity(label: str, quiet: bool) -> Iterator[None]:
    """A spinner for work whose size is not known up front (verify, load, fetch)."""
    with progress(label, None, quiet):
        yield
