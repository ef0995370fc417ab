"""Root of the `weightguard` command line.

Sub-commands live in `cmd_*` modules and are imported only when invoked, so that
`weightguard --help` never pays for torch, boto3, hvac or sigstore.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from weightguard import __version__
from weightguard.errors import WeightguardError

# command name -> "module:attribute"; help text shown without importing the module.
LAZY_COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("weightguard_cli.cmd_doctor:doctor", "Preflight checks for a pod or workstation."),
    "encrypt": ("weightguard_cli.cmd_crypt:encrypt", "Encrypt a safetensors file or model dir."),
    "decrypt": ("weightguard_cli.cmd_crypt:decrypt", "Decrypt an artifact to disk (plaintext!)."),
    "rewrap": ("weightguard_cli.cmd_crypt:rewrap", "Rewrap an artifact's data key (rotation)."),
    "keys": ("weightguard_cli.cmd_keys:keys", "Create development key files."),
    "inspect": ("weightguard_cli.cmd_crypt:inspect", "Show an artifact's header summary."),
    "sign": ("weightguard_cli.cmd_sign:sign", "Sign a model as an OpenSSF model-signing bundle."),
    "verify": ("weightguard_cli.cmd_sign:verify", "Verify a model's signature against a policy."),
    "load": (
        "weightguard_cli.cmd_load:load",
        "Verify and decrypt a model, keep nothing (preflight).",
    ),
    "fetch": ("weightguard_cli.cmd_load:fetch", "Decrypt a model onto tmpfs (init container)."),
    "push": ("weightguard_cli.cmd_load:push", "Upload a released model directory to S3."),
    "audit": ("weightguard_cli.cmd_audit:audit", "Show and verify the access audit log."),
    "watermark": ("weightguard_cli.cmd_watermark:watermark", "Embed or check a keyed watermark."),
    "fingerprint": ("weightguard_cli.cmd_watermark:fingerprint", "Keyless derivation evidence."),
    "report": ("weightguard_cli.cmd_report:report", "Evidence report for auditors (HTML)."),
    "bom": ("weightguard_cli.cmd_report:bom", "CycloneDX 1.6 ML-BOM of a release."),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS:
            target, _ = LAZY_COMMANDS[cmd_name]
            module_name, attr = target.split(":")
            command: click.Command = getattr(importlib.import_module(module_name), attr)
            return command
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_text) for name, (_, help_text) in sorted(LAZY_COMMANDS.items())]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="weightguard")
def cli() -> None:
    """weightguard: encrypt, sign, watermark and securely load model weights."""
    from weightguard_cli._output import configure_logging

    configure_logging()


def _json_requested(args: list[str]) -> bool:
    """Whether the command line asks for JSON (``--json`` before any ``--``)."""
    return "--json" in (args[: args.index("--")] if "--" in args else args)


def _fail(args: list[str], line: str, kind: str, message: str = "", hint: str = "") -> None:
    """A failure's line on stderr; with ``--json`` also one JSON object on stdout:
    ``{"error": message, "type": kind}`` (and ``"hint"`` when there is one)."""
    click.echo(f"error: {line}", err=True)
    if _json_requested(args):
        from weightguard_cli._output import echo_json

        doc = {"error": message or line, "type": kind}
        if hint:
            doc["hint"] = hint
        echo_json(doc)


def main(argv: list[str] | None = None) -> Any:
    from weightguard.vocabulary import speaking

    with speaking("cli"):  # hints name this program's options (weightguard.vocabulary)
        return _main(argv)


def _main(argv: list[str] | None) -> Any:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return cli.main(args=argv, prog_name="weightguard", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        if _json_requested(args):
            from weightguard_cli._output import echo_json

            echo_json({"error": exc.format_message(), "type": "UsageError"})
        sys.exit(exc.exit_code)
    except WeightguardError as exc:
        _fail(args, str(exc), type(exc).__name__, exc.message, exc.hint)
        sys.exit(1)
    except ModuleNotFoundError as exc:  # an extra this command needs is not installed
        from weightguard.doctor import missing_extra

        missing = missing_extra(exc)
        if missing is None:
            raise
        _fail(args, str(missing), type(missing).__name__, missing.message, missing.hint)
        sys.exit(1)
    except OSError as exc:  # a file or socket the command touched directly
        where = f": {exc.filename}" if exc.filename else ""
        _fail(args, f"{exc.strerror or exc}{where}", type(exc).__name__)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        sys.exit(130)
