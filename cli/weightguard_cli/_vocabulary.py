"""One vocabulary, as docs/cli.md shows it: the library's table of concepts
(:data:`weightguard.vocabulary.TERMS`: option, environment variable, Python keyword)
with the commands that take each option (:data:`COMMANDS`, what only the CLI knows).

tests/cli/test_vocabulary.py checks that every option exists on the commands listed,
every variable is read, and every keyword is a parameter of the function named.
Importing this module is cheap.
"""

from __future__ import annotations

from weightguard.vocabulary import RENAMED_KEYWORDS, TERMS, Term

__all__ = ["COMMANDS", "TERMS", "Term", "commands", "renamed_keywords_table", "table"]

_TRUSTING = ("verify", "load", "fetch", "bom", "report")

# Commands that read or write model bytes: each has -q/--quiet and --json.
_BYTE_COMMANDS = (
    "encrypt",
    "decrypt",
    "rewrap",
    "inspect",
    "sign",
    "verify",
    "load",
    "fetch",
    "push",
    "watermark embed",
    "watermark check",
)

# option -> the commands taking it ("audit verify" for a subcommand)
COMMANDS: dict[str, tuple[str, ...]] = {
    "--trust-key": (*_TRUSTING, "watermark embed", "watermark check"),
    "--trust-chain": _TRUSTING,
    "--trust-intermediate": _TRUSTING,
    "--trust-vault-key": _TRUSTING,
    "--identity": _TRUSTING,
    "--issuer": _TRUSTING,
    "--trust-root": _TRUSTING,
    "--require-all": _TRUSTING,
    "--unsafe-no-verification": (*_TRUSTING, "watermark embed", "watermark check"),
    "--signature": ("sign", *_TRUSTING, "watermark embed", "watermark check"),
    "--allow-unsigned": ("verify", "bom", "report"),
    "--signing-key": ("sign", "keys create"),
    "--signing-cert": ("sign",),
    "--signing-chain": ("sign",),
    "--signing-vault-key": ("sign",),
    "--password-env": ("sign",),
    "--identity-token": ("sign",),
    "--co-sign": ("sign",),
    "--chunk-digest": ("sign",),
    "--chunk-size": ("encrypt", "sign"),
    "--data-key": ("encrypt", "decrypt", "rewrap", "inspect", "load", "fetch"),
    "--new-data-key": ("rewrap",),
    "--allow-key": ("decrypt", "rewrap", "inspect", "load", "fetch"),
    "--context": ("encrypt", "rewrap"),
    "--encrypt-header": ("encrypt",),
    "--checkpoint-key": ("audit verify", "report"),
    "--checkpoint-vault-key": ("audit verify", "report"),
    "--log-id": ("audit verify", "report"),
    "--max-unsigned-tail": ("audit verify", "report"),
    "--allow-unsigned-log": ("audit verify",),
    "--audit-log": ("encrypt", "decrypt", "rewrap", "sign", "verify", "load", "fetch", "push"),
    "--replace": ("sign", "fetch", "push", "watermark embed"),
    "--allow-disk": ("fetch",),
    "--endpoint-url": ("push",),
    "--original": ("watermark check",),
    "--quiet": _BYTE_COMMANDS,
    "--json": (*_BYTE_COMMANDS, "audit verify"),
}


def commands(term: Term) -> tuple[str, ...]:
    return COMMANDS[term.option]


def table() -> list[str]:
    """The vocabulary as Markdown table lines (docs/cli.md)."""
    out = [
        "| concept | CLI option | commands | environment variable | Python keyword |",
        "| --- | --- | --- | --- | --- |",
    ]
    for t in TERMS:
        env = f"`{t.env}`" if t.env else "-"
        py = ", ".join(f"`{p.split(':', 1)[1]}`" for p in t.python) or "-"
        if t.differs:
            py += f" ({t.differs})"
        cmds = ", ".join(commands(t))
        out.append(f"| {t.concept} | `{t.option}` | {cmds} | {env} | {py} |")
    return out


def renamed_keywords_table() -> list[str]:
    """The Python keywords renamed to the concept's spelling (docs/cli.md)."""
    return [
        "| function | old | new |",
        "| --- | --- | --- |",
        *(f"| `{_shown(func)}` | `{old}=` | `{new}=` |" for func, old, new in RENAMED_KEYWORDS),
    ]


def _shown(func: str) -> str:
    """``weightguard.lazy:SafeOpen.__init__`` -> ``weightguard.lazy.SafeOpen``."""
    return func.replace(":", ".").removesuffix(".__init__")
