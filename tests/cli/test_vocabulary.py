"""One vocabulary (issue 20, item 4): the table in docs/cli.md is true, and every option
a message names exists.

- each concept's CLI option exists on every command the table lists, its environment
  variable is read by the code, its Python keyword is a parameter of the function named;
- every ``--option`` a message or hint of the package or the CLI names is an option of
  some command, in its current spelling (an old spelling only warns for one release);
  options of other tools (model_signing, vLLM, ...) are listed below;
- each command module's messages name only that command's options;
- every hint of the library, told as a Python caller reads it (weightguard.vocabulary),
  names no option but in a ``weightguard ...`` command to run, and only keywords of the
  public functions; every option it named is a row of the table;
- hints retold by the KServe initializer and the vLLM loaders name only variables they
  read.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import click
import pytest
from weightguard_cli._vocabulary import TERMS, commands
from weightguard_cli.main import LAZY_COMMANDS, cli

ROOT = Path(__file__).resolve().parents[2]
OPTION = re.compile(r"(?<![\w-])--[a-z][a-z0-9]*(?:-[a-z0-9]+)*")
# Options of other programs that messages name on purpose.
FOREIGN = {
    "--ignore_unsigned_files",  # model_signing's (underscore: not matched; kept for clarity)
    "--no-ignore-git-paths",  # model_signing
    "--ignore-paths",  # model_signing (verify a primary beside co-signatures)
    "--load-format",  # vllm serve
    "--model-loader-extra-config",  # vllm serve
    "--generation-config",  # vllm serve
    "--hf-config-path",  # vllm serve
    "--tokenizer",  # vllm serve
    "--trust-remote-code",  # vllm serve
    "--recursive",  # aws s3 cp
    "--help",
    "--version",
    "--user",  # pip install --user
    "--extra-index-url",  # pip
    "--index-url",  # pip
}
# Messages not yet moved to the new spellings (file, option); the old spellings still
# work, with a warning, for one release.
PENDING: set[tuple[str, str]] = set()


def _commands() -> dict[str, click.Command]:
    out: dict[str, click.Command] = {}
    ctx = click.Context(cli, info_name="weightguard")

    def walk(cmd: click.Command, path: str) -> None:
        out[path] = cmd
        if isinstance(cmd, click.Group):
            sub_ctx = click.Context(cmd, info_name=path)
            for name in cmd.list_commands(sub_ctx):
                sub = cmd.get_command(sub_ctx, name)
                if sub is not None:
                    walk(sub, f"{path} {name}")

    for name in LAZY_COMMANDS:
        command = cli.get_command(ctx, name)
        assert command is not None
        walk(command, name)
    return out


def _options(cmd: click.Command, *, hidden: bool) -> set[str]:
    return {
        o
        for p in cmd.params
        if isinstance(p, click.Option) and (hidden or not p.hidden)
        for o in (*p.opts, *p.secondary_opts)
    }


COMMANDS = _commands()
CURRENT = set().union(*(_options(c, hidden=False) for c in COMMANDS.values()))
# old spelling -> its new ones (an old name can have a different new one per command)
RENAMED: dict[str, set[str]] = {}
for _cmd in COMMANDS.values():
    for _p in _cmd.params:
        if getattr(_p, "renamed_to", None):
            RENAMED.setdefault(_p.opts[0], set()).add(str(_p.renamed_to))  # type: ignore[attr-defined]


@pytest.mark.parametrize("term", TERMS, ids=lambda t: t.option)
def test_each_option_exists_where_the_table_says(term: object) -> None:
    missing = [c for c in commands(term) if term.option not in _options(COMMANDS[c], hidden=False)]  # type: ignore[arg-type]
    assert missing == []


def _sources() -> list[Path]:
    return sorted((ROOT / "weightguard").rglob("*.py")) + sorted(
        (ROOT / "cli" / "weightguard_cli").rglob("*.py")
    )


def test_each_variable_is_read() -> None:
    from weightguard.integrations import _settings

    text = "\n".join(p.read_text() for p in _sources())
    settings = {_settings.env_name(k) for k in (*_settings.TRUST, *_settings.LISTS)}
    unread = [t.env for t in TERMS if t.env and t.env not in text and t.env not in settings]
    assert unread == []


def test_each_python_keyword_exists() -> None:
    wrong = []
    for t in TERMS:
        for spec in t.python:
            module, call = spec.split(":")
            func, keyword = call.rstrip(")").split("(")
            obj: object = importlib.import_module(module)
            for part in func.split("."):
                obj = getattr(obj, part)
            if keyword not in inspect.signature(obj).parameters:  # type: ignore[arg-type]
                wrong.append(spec)
    assert wrong == []


def _message_strings(path: Path) -> list[str]:
    """String constants and f-string parts of ``path``, docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and id(node) not in docstrings
    ]


def test_every_option_a_message_names_exists() -> None:
    """A string that is only an option's name declares or maps it (``renamed("--key",
    ...)``); a message naming an old spelling must name its new one too."""
    unknown, old = [], []
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        for s in _message_strings(path):
            if OPTION.fullmatch(s.strip()):
                continue
            for opt in OPTION.findall(s):
                if opt in CURRENT or opt in FOREIGN or (rel, opt) in PENDING:
                    continue
                if opt not in RENAMED:
                    unknown.append(f"{rel}: {opt}")
                elif not any(new in s for new in RENAMED[opt]):
                    old.append(f"{rel}: {opt}")
    assert sorted(set(unknown)) == []
    assert sorted(set(old)) == [], "name the new spelling (docs/cli.md, Renamed options)"


# (module, option): a message that names another command's option on purpose
OTHER_COMMANDS = {("cmd_keys.py", "--trust-key")}  # "verify, load and fetch with: --trust-key"


def test_each_command_module_names_only_its_commands_options() -> None:
    """A message written by a command's module names that command's options (or says
    which other command takes it: ``weightguard sign ...``)."""
    by_module: dict[str, set[str]] = {}
    for cmd in COMMANDS.values():
        if cmd.callback is not None:
            by_module.setdefault(cmd.callback.__module__, set()).update(_options(cmd, hidden=True))
    wrong = []
    for path in sorted((ROOT / "cli" / "weightguard_cli").glob("cmd_*.py")):
        own = by_module.get(f"weightguard_cli.{path.stem}", set())
        for s in _message_strings(path):
            if OPTION.fullmatch(s.strip()) or "weightguard " in s:
                continue
            for opt in OPTION.findall(s):
                if opt not in own and opt not in FOREIGN and (path.name, opt) not in OTHER_COMMANDS:
                    wrong.append(f"{path.name}: {opt} in {s[:60]!r}")
    assert wrong == []


# --------------------------------------------------------------------------- Python's words
# A hint is written once, naming options; a Python caller reads it told in the public
# functions' keywords (weightguard.vocabulary.TOLD), the command line as written.

# Library strings that are not hints: command lines and pages written for the reader of a
# report, and audit reasons (file, option).
NOT_HINTS = {
    ("weightguard/report.py", "*"),  # the report's reproducing `weightguard ...` commands
    ("weightguard/_internal/report/render.py", "*"),  # the report page (made by the CLI)
    ("weightguard/_internal/crypt/inspect.py", "--verify"),  # audit reason "inspect --verify"
}
PY_KEYWORD = re.compile(r"\b([a-z_][a-z0-9_]*)=")
PY_CALL = re.compile(r"\b([A-Za-z_][A-Za-z0-9_]*(?:\.[a-z_]+)?)\(")
PUBLIC_MODULES = (
    "weightguard.audit",
    "weightguard.bom",
    "weightguard.crypt",
    "weightguard.lazy",
    "weightguard.loader",
    "weightguard.policy",
    "weightguard.report",
    "weightguard.signing",
    "weightguard.transfer",
    "weightguard.verifying",
    "weightguard.watermark",
)


def _public_callables() -> dict[str, object]:
    out: dict[str, object] = {}
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        for attr in getattr(module, "__all__", ()):
            obj = getattr(module, attr)
            out[attr] = obj
            if isinstance(obj, type):
                out.update(
                    {f"{attr}.{m}": getattr(obj, m) for m in vars(obj) if not m.startswith("_")}
                )
    return out


def _public_parameters() -> set[str]:
    names: set[str] = set()
    for obj in _public_callables().values():
        if callable(obj):
            try:
                names.update(inspect.signature(obj).parameters)
            except (TypeError, ValueError):
                continue
    return names


def _library_hints() -> list[tuple[str, str]]:
    out = []
    for path in sorted((ROOT / "weightguard").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if (rel, "*") in NOT_HINTS:
            continue
        out += [
            (rel, s)
            for s in _message_strings(path)
            if OPTION.search(s) and not OPTION.fullmatch(s.strip())  # not a declaration
        ]
    return out


def test_what_python_callers_are_told_exists() -> None:
    """Every keyword TOLD names is a parameter of a public function, every call it names
    (``PublicKey.from_file(...)``) a public function or class."""
    from weightguard.vocabulary import TOLD, TOLD_FALLBACK

    params, callables = _public_parameters(), _public_callables()
    wrong = []
    for option, spelled in TOLD.items():
        wrong += [f"{option}: {k}=" for k in PY_KEYWORD.findall(spelled) if k not in params]
        wrong += [f"{option}: {c}(" for c in PY_CALL.findall(spelled) if c not in callables]
    assert wrong == []
    assert "--" not in TOLD_FALLBACK


def test_every_hint_names_only_python_keywords_to_a_python_caller() -> None:
    """Each library string naming an option, told as a Python caller reads it, names no
    option (but in a ``weightguard ...`` command it tells them to run) and only keywords
    of the public functions; every option it named has a Python spelling (TOLD) or is
    UNTOLD with a reason."""
    from weightguard.vocabulary import TOLD, TOLD_FALLBACK, UNTOLD, retell

    params = _public_parameters()
    untold, left, unknown = [], [], []
    for rel, s in _library_hints():
        for opt in OPTION.findall(s):
            if opt in UNTOLD and not UNTOLD[opt] and "weightguard " not in s:
                untold.append(f"{rel}: {opt} has no Python spelling: say why (Term.differs)")
            if (rel, opt) in NOT_HINTS or opt in FOREIGN or opt in UNTOLD:
                continue
            whole = re.search(re.escape(opt) + r"(?: [a-z0-9]+)?", s)
            told_whole = whole is not None and whole.group(0) in TOLD
            if opt not in TOLD and not told_whole and "weightguard " not in s:
                untold.append(f"{rel}: {opt} in {s[:70]!r}")
        told = retell(s, TOLD, TOLD_FALLBACK, drop=UNTOLD)
        clauses = [c for c in re.split(r",\s*or\s+|;\s*", told) if "weightguard " not in c]
        for clause in clauses:
            left += [
                f"{rel}: {o} in {told[:70]!r}"
                for o in OPTION.findall(clause)
                if o not in FOREIGN and (rel, o) not in NOT_HINTS
            ]
            unknown += [
                f"{rel}: {k}= in {told[:70]!r}"
                for k in PY_KEYWORD.findall(clause)
                if k not in params and k.isidentifier() and not k.isupper()
            ]
    assert untold == [], "give the option a Python spelling in weightguard.vocabulary.TOLD"
    assert left == []
    assert unknown == []


def test_integration_hints_name_only_their_variables() -> None:
    """A hint retold by the KServe initializer or the vLLM loaders names only variables
    they read (and the strings of those modules name no other WEIGHTGUARD_ variable)."""
    from weightguard.integrations import _settings, kserve, vllm, vllm_lora

    reads = {
        "kserve": set(kserve.VARIABLES),
        "vllm": set(vllm._ENV.values()),
        "vllm_lora": {_settings.env_name(k) for k in (*_settings.TRUST, *_settings.LISTS)}
        | {"WEIGHTGUARD_AUDIT_LOG", vllm_lora.ALLOW_UNSIGNED_ENV},
    }
    names = {"kserve": kserve._NAMES, "vllm": vllm._NAMES, "vllm_lora": vllm_lora._NAMES}
    fallbacks = {"kserve": kserve._FALLBACK, "vllm": vllm._hint(), "vllm_lora": vllm_lora._hint()}
    variable = re.compile(r"\bWEIGHTGUARD_[A-Z_]+\b")
    wrong = []
    for who, module in (("kserve", kserve), ("vllm", vllm), ("vllm_lora", vllm_lora)):
        for rel, s in _library_hints():
            exc = _settings.ConfigError("x", hint=s)
            told = _settings.retold(exc, names[who], fallbacks[who]).hint
            clauses = [c for c in re.split(r",\s*or\s+|;\s*", told) if "weightguard " not in c]
            for clause in clauses:
                wrong += [f"{who} <- {rel}: {v}" for v in variable.findall(clause)
                          if v not in reads[who] and v != "WEIGHTGUARD_CONFIG"]  # fmt: skip
        path = Path(str(module.__file__))
        for s in _message_strings(path):
            wrong += [f"{who}: {v} in {s[:60]!r}" for v in variable.findall(s)
                      if v not in reads[who] and v not in ("WEIGHTGUARD_CONFIG",)]  # fmt: skip
    assert sorted(set(wrong)) == []
