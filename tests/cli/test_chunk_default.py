"""One default record size: the CLI's --chunk-size defaults are the library's."""

from __future__ import annotations

import click
import pytest
from weightguard_cli._sizes import parse_size
from weightguard_cli.cmd_crypt import encrypt
from weightguard_cli.cmd_sign import sign

from weightguard import crypt, signing


def test_sign_and_encrypt_share_one_default() -> None:
    assert signing.DEFAULT_CHUNK_SIZE is crypt.DEFAULT_CHUNK_SIZE  # one constant


@pytest.mark.parametrize("command", [encrypt, sign])
def test_cli_default_is_the_library_default(command: click.Command) -> None:
    (opt,) = [p for p in command.params if p.name == "chunk_size"]
    assert isinstance(opt.default, str)
    assert parse_size(opt.default) == crypt.DEFAULT_CHUNK_SIZE
