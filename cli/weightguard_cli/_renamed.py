"""Old option spellings kept for one release as hidden aliases that warn.

    @click.command()
    @click.option("--data-key", "data_key", metavar="URI")
    @renamed("--key", "--data-key", "data_key")
    def encrypt(..., data_key: str | None): ...

The alias is a hidden option with its own parameter; the wrapper folds its value into
the new one before the command runs, so the command only ever sees the new name.
A canonical option that must be given is declared `required=False` and listed in
`required`: click would otherwise reject a command line that uses only the old name.
Importing this module is cheap.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def _given(value: Any) -> bool:
    return value is not None and value != () and value is not False


def renamed(
    old: str,
    new: str,
    param: str,
    *,
    required: bool = False,
    check: Callable[[str], None] | None = None,
    **option: Any,
) -> Callable[[F], F]:
    """Accept OLD as a deprecated spelling of option NEW (parameter PARAM).

    `option` holds the click.option settings the old spelling needs to parse as
    before (type, multiple, is_flag); help is never shown.  ``check(value)`` may raise
    click.UsageError for a value that shows the old option was misunderstood.
    """
    dest = "deprecated_" + old.lstrip("-").replace("-", "_")

    def deco(f: F) -> F:
        @functools.wraps(f)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            value = kwargs.pop(dest)
            if _given(value):
                if check is not None:
                    for v in value if isinstance(value, tuple) else (value,):
                        check(v)
                click.echo(f"warning: {old} is deprecated here; use {new}", err=True)
                current = kwargs.get(param)
                if isinstance(value, tuple):
                    kwargs[param] = tuple(current or ()) + value
                elif _given(current):
                    raise click.UsageError(f"{old} and {new} are the same option; give {new} once")
                else:
                    kwargs[param] = value
            if required and not _given(kwargs.get(param)):
                ctx = click.get_current_context()
                target = next(p for p in ctx.command.params if p.name == param)
                raise click.MissingParameter(ctx=ctx, param=target)
            return f(*args, **kwargs)

        decorated = click.option(old, dest, hidden=True, **option)(wrapper)
        # docgen lists the old spellings from this mark (hidden options are not in --help).
        decorated.__click_params__[-1].renamed_to = new  # type: ignore[attr-defined]
        return decorated  # type: ignore[return-value]

    return deco
