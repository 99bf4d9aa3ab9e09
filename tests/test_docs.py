"""The docs and the code name the same things (README.md and docs/*.md).

Every command and option of the CLI is documented; every liteshift command line the docs show
exists, with options its command has; the layout in docs/ARCHITECTURE.md names every module and
no module that is gone; links and paths resolve; the migration format, the run's configuration
and the health thresholds are described.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path

import pytest

from liteshift.cli import _parser
from liteshift.core.config import FlowParams, RunConfig
from liteshift.health.thresholds import Thresholds

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "liteshift"
DOCS = {
    p.relative_to(ROOT).as_posix(): p.read_text("utf-8")
    for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
}
ALL_DOCS = "\n".join(DOCS.values())
ARCHITECTURE = DOCS["docs/ARCHITECTURE.md"]
FENCE_RE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
SPAN_RE = re.compile(r"`([^`]+)`")
# A module path with at least one folder: liteshift/core/lock.py, flows/fleet.py, bench/run.py.
MODULE_PATH_RE = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)+[\w-]+\.py)(?![\w/])")
TOKEN_RE = re.compile(r"'[^']*'|\"[^\"]*\"|\S+")
SEPARATORS = {"&&", "||", ";"}


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options(parser: argparse.ArgumentParser) -> set[str]:
    return {opt for action in parser._actions for opt in action.option_strings if opt.startswith("--")}


def _choices(parser: argparse.ArgumentParser) -> list[str] | None:
    """The choices of a subcommand's positional argument (fleet: plan, run, status), if any."""
    positional = [a for a in parser._actions if not a.option_strings and a.choices]
    return [str(c) for c in positional[0].choices or []] if positional else None


def _commands() -> list[str]:
    found = []
    for name, sub in _subcommands().items():
        found.append(name)
        found += [f"{name} {choice}" for choice in _choices(sub) or []]
    return sorted(found)


def _section(text: str, heading: str) -> str:
    """The text under a `## heading` up to the next `## `."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no '## {heading}' section"
    return match.group(1)


# (a) every command and option of the CLI is documented


@pytest.mark.parametrize("command", _commands())
def test_every_command_is_documented(command: str) -> None:
    # A whole command: `liteshift run` must not pass because `liteshift running` is written.
    pattern = rf"(?<![\w./-])liteshift {re.escape(command)}(?![\w-])"
    assert re.search(pattern, ALL_DOCS), f"'liteshift {command}' is in no doc"


@pytest.mark.parametrize("option", sorted(set().union(*map(_options, _subcommands().values())) - {"--help"}))
def test_every_option_is_documented(option: str) -> None:
    # A whole token: --backup must not pass because --backup-dir is documented.
    assert re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", ALL_DOCS), f"{option} is in no doc"


def test_a_longer_option_does_not_document_a_shorter_one() -> None:
    assert re.search(r"(?<![\w-])--backup(?![\w-])", "use --backup-dir DIR") is None
    assert re.search(r"(?<![\w./-])liteshift run(?![\w-])", "liteshift running, liteshift run-x") is None


# (b) every liteshift command line in the docs exists, with options its command has


def command_lines(text: str) -> list[tuple[str, bool]]:
    """(line, is a shell line) for the lines of code blocks (continuations joined), and for the
    inline code spans of a doc: a span is one command, or a message, never a script."""
    lines = []
    for block in FENCE_RE.findall(text):
        lines += [(line, True) for line in block.replace("\\\n", " ").splitlines()]
    prose = FENCE_RE.sub("", text)
    lines += [(" ".join(span.split()), False) for span in SPAN_RE.findall(prose)]
    return lines


def liteshift_calls(line: str, shell: bool = True) -> list[list[str]]:
    """The arguments of each `liteshift` call on a line: `liteshift` (or PATH/liteshift) first in
    its command, after a `$` prompt or VAR=value assignments; a comment ends the line. Only a
    shell line is split at `&&`, `||`, `;` and a pipe."""
    tokens = TOKEN_RE.findall(line)
    if "#" in tokens:
        tokens = tokens[: tokens.index("#")]
    segments: list[list[str]] = [[]]
    for i, tok in enumerate(tokens):
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if shell and (tok in SEPARATORS or (tok == "|" and not nxt.startswith("-"))):  # `a | --b`: a synopsis
            segments.append([])
        else:
            segments[-1].append(tok)
    calls = []
    for seg in segments:
        while seg and (seg[0] == "$" or re.match(r"^[A-Za-z_]\w*=", seg[0])):
            seg = seg[1:]
        if seg and (seg[0] == "liteshift" or seg[0].endswith("/liteshift")):
            calls.append(seg[1:])
    return calls


def check_call(args: list[str]) -> list[str]:
    """Why a documented liteshift call does not exist in the parser (empty: it does)."""
    if not args:
        return []
    subs = _subcommands()
    parser: argparse.ArgumentParser = _parser()
    shown = " ".join(["liteshift", *args])
    if not args[0].startswith("-"):
        if args[0] not in subs:
            return [f"{shown}: no command {args[0]!r}"]
        parser, args = subs[args[0]], args[1:]
    problems = []
    choices = _choices(parser)
    if choices and args and not args[0].startswith(("-", "[")):
        problems += [f"{shown}: no action {c!r}" for c in args[0].split("|") if c not in choices]
    known = _options(parser)
    for tok in args:
        opt = tok.strip("[(").rstrip("]),.;:").split("=", 1)[0]
        if opt.startswith("--") and opt != "--" and opt not in known:
            problems.append(f"{shown}: no option {opt} (it has {', '.join(sorted(known))})")
    return problems


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_every_documented_call_exists(doc: str) -> None:
    calls = [args for line, shell in command_lines(DOCS[doc]) for args in liteshift_calls(line, shell)]
    problems = [p for args in calls for p in check_call(args)]
    assert problems == [], "\n".join(problems)


def test_the_call_check_sees_a_wrong_command_or_option_and_only_liteshift_lines() -> None:
    text = (
        "Run `liteshift run --database X --bogus`, or:\n\n```sh\n"
        "$ .venv/bin/liteshift fleet deploy --manifest m \\\n  --fleet-id f\n"
        "LITESHIFT_LOCAL_API= liteshift rollback --finish   # --not-checked\n"
        "prefect worker start --pool liteshift --limit 4\n"
        "make up && liteshift statuz\n```\n"
        "`liteshift archive --table T (--before VALUE | --older-than TEXT)`\n"
        "`Try: run 'sqlite3 DB .recover'; liteshift will not migrate it` (a message)\n"
    )
    calls = [args for line, shell in command_lines(text) for args in liteshift_calls(line, shell)]
    assert [p.split(": ", 1)[1] for args in calls for p in check_call(args)] == [
        "no action 'deploy'",
        "no command 'statuz'",
        "no option --bogus (it has " + ", ".join(sorted(_options(_subcommands()["run"]))) + ")",
    ]
    assert calls[0][-2:] == ["--fleet-id", "f"]  # a continued line is one command


# (c) the layout in docs/ARCHITECTURE.md names every module, and names no module that is gone


def package_modules() -> list[str]:
    """Every module file under liteshift/, through the tasks/ and flows/ symlinks, relative to it."""
    found = []
    for folder, _, files in os.walk(PACKAGE, followlinks=True):
        for name in files:
            if name.endswith(".py") and name != "__init__.py":
                found.append((Path(folder) / name).relative_to(PACKAGE).as_posix())
    return sorted(found)


@pytest.mark.parametrize("module", package_modules())
def test_the_layout_names_every_module(module: str) -> None:
    layout = _section(ARCHITECTURE, "Layout")
    dotted = "liteshift." + module.removesuffix(".py").replace("/", ".")
    by_path = rf"(?<![\w/.])(?:liteshift/)?{re.escape(module)}(?!\w)"
    by_name = rf"(?<![\w.]){re.escape(dotted)}(?!\w)"
    assert re.search(by_path, layout) or re.search(by_name, layout), f"{module} is not in the layout"


def test_the_layout_names_no_module_that_is_gone() -> None:
    named = set(MODULE_PATH_RE.findall(_section(ARCHITECTURE, "Layout")))
    assert named, "the layout names no module"
    gone = sorted(p for p in named if not (ROOT / p).exists() and not (PACKAGE / p).exists())
    assert gone == [], f"the layout names modules that are not there: {', '.join(gone)}"


def test_package_modules_follow_the_symlinks() -> None:
    assert {"tasks/migrate.py", "flows/migrate.py", "core/config.py", "cli.py"} <= set(package_modules())


# Links and paths: a doc that names a file or a section names one that is there


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(text: str) -> set[str]:
    return {_slug(h) for h in re.findall(r"^#{1,6} (.+)$", FENCE_RE.sub("", text), re.M)}


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_every_relative_link_resolves(doc: str) -> None:
    base = (ROOT / doc).parent
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", FENCE_RE.sub("", DOCS[doc])):
        if re.match(r"^[a-z]+:", target):
            continue  # http:, https:, mailto:
        path, _, anchor = target.partition("#")
        file = (base / path).resolve() if path else ROOT / doc
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file.read_text("utf-8")):
            broken.append(f"{target} (no such section)")
    assert broken == [], "\n".join(broken)


@pytest.mark.parametrize("doc", sorted(DOCS))
def test_every_path_a_doc_names_exists(doc: str) -> None:
    """A module path (`liteshift/core/lock.py`, `flows/fleet.py`) or a doc (`bench/RESULTS.md`)."""
    text = DOCS[doc]
    modules = MODULE_PATH_RE.findall(text)
    docs = re.findall(r"(?<![\w/.-])((?:docs|bench)/[\w.-]+\.md)(?!\w)", text)
    gone = sorted({p for p in modules + docs if not (ROOT / p).exists() and not (PACKAGE / p).exists()})
    assert gone == [], f"{doc} names files that are not there: {', '.join(gone)}"


def test_every_doc_the_code_names_exists() -> None:
    """`docs/X.md` (and `docs/X.md, "Section"`) in the code, the deployments and the build files."""
    sources = [*PACKAGE.rglob("*.py"), *(ROOT / "deployments").rglob("*.yaml"), ROOT / "Makefile"]
    sources += [ROOT / "pyproject.toml", *(ROOT / "tests").glob("*.py")]
    broken = []
    for source in sources:
        text = source.read_text("utf-8")
        for name, section in re.findall(r"(docs/[\w.-]+\.md)(?:, \"([^\"]+)\")?", text):
            where = f"{source.relative_to(ROOT)}: {name}"
            if name == "docs/X.md" and source.name == "test_docs.py":
                continue
            if not (ROOT / name).exists():
                broken.append(where)
            elif section and not re.search(
                rf"^#+ .*{re.escape(section)}", (ROOT / name).read_text("utf-8"), re.M
            ):
                broken.append(f'{where}, "{section}" (no such section)')
    assert broken == [], "\n".join(broken)


# (d) the migration format, the configuration and the health thresholds are described


def test_migration_format_is_documented() -> None:
    doc = DOCS["docs/migrations.md"]
    for marker in ("-- migrate:up", "-- migrate:down", "[[query]]", "expect_index", "liteshift_migrations"):
        assert marker in doc, marker
    assert "-- migrate:rebuild" in DOCS["docs/rebuild.md"] and "-- migrate:columns" in DOCS["docs/rebuild.md"]


# Every flow's parameter model (the CLI imports them all): RunConfig, HealthConfig, FleetConfig, ...
MODELS: list[type[FlowParams]] = sorted(
    set(FlowParams.__subclasses__()) | {RunConfig}, key=lambda m: m.__name__
)


@pytest.mark.parametrize("model", MODELS, ids=[m.__name__ for m in MODELS])
def test_every_config_field_has_a_description(model: type[FlowParams]) -> None:
    assert [name for name, f in model.model_fields.items() if not f.description] == []


@pytest.mark.parametrize("name", sorted(Thresholds.model_fields))
def test_every_health_threshold_is_in_the_health_doc(name: str) -> None:
    table = _section(DOCS["docs/health.md"], "Thresholds")
    assert re.search(rf"^\| `{name}` \| [^|]+ \|", table, re.M), name
