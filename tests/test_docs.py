"""The commands the README, docs/ and the policies' READMEs show, read from those files (never
retyped here), so an example cannot rot: each composes into a valid config, and names a make
target or module that exists."""

import importlib.util
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "policies").glob("*/README.md"))]
# What a doc writes where a user fills in their own value: a `...` argument, or `<what goes here>`.
PLACEHOLDER = re.compile(r"^(?:\.\.\.|<[^>]*>)$")


def doc_commands(path: Path) -> list[tuple[int, list[str]]]:
    """(line, argv) of every command in the file's ```bash blocks: continuation lines joined,
    comments dropped, quotes resolved as a shell would."""
    commands, fence, pending, start = [], None, "", 0
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.startswith("```"):
            fence = None if fence is not None else line[3:].strip()
            continue
        if fence != "bash":
            continue
        if not pending:
            start = number
        pending += line.rstrip()
        if pending.endswith("\\"):
            pending = pending[:-1] + " "
            continue
        # a `<what goes here>` placeholder is one argument, even with spaces in it
        argv, pending = shlex.split(re.sub(r"<[^<>]*>", "<placeholder>", pending), comments=True), ""
        if argv:
            commands.append((start, argv))
    return commands


def all_commands() -> list:
    return [pytest.param(argv, id=f"{path.relative_to(ROOT)}:{line}")
            for path in DOC_FILES for line, argv in doc_commands(path)]


def overrides_of(argv: list[str]) -> list[str]:
    """The Hydra overrides of a `vla` command (after its subcommand); a placeholder value is
    replaced by a string, which composing accepts wherever the doc puts one (a path, an id)."""
    out = []
    for arg in argv:
        if arg.startswith("-") or PLACEHOLDER.match(arg):
            continue
        key, eq, value = arg.partition("=")
        out.append(f"{key}=placeholder" if eq and PLACEHOLDER.match(value) else arg)
    return out


def make_targets() -> set[str]:
    return set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), re.M))


def test_the_docs_show_commands_and_the_parser_reads_them_as_a_shell_does(tmp_path):
    assert len(all_commands()) >= 30
    doc = tmp_path / "doc.md"
    doc.write_text('text\n```\nvla not-bash\n```\n```bash\nvla eval a=1 \\\n    "b=[\'x y\']" c=<your dir>  # note\n# only a comment\n```\n')
    assert doc_commands(doc) == [(6, ["vla", "eval", "a=1", "b=['x y']", "c=<placeholder>"])]


@pytest.mark.parametrize("argv", all_commands())
def test_every_documented_command_is_valid(argv):
    from vla.cli import COMMANDS, compose

    program = argv[0]
    if program == "make":
        assert set(argv[1:]) <= make_targets(), f"no such make target: {argv[1:]}"
        return
    if program == "python":
        assert argv[1] == "-m" and importlib.util.find_spec(argv[2]) is not None, f"no such module: {argv[2]}"
        return
    if program == "torchrun":  # torchrun <its flags> -m vla.cli <command> <overrides>
        argv = ["vla", *argv[argv.index("vla.cli") + 1:]]
    assert argv[0] == "vla", f"a documented command must be vla, make, python -m or torchrun: {argv}"
    assert argv[1] in COMMANDS, f"no such vla command: {argv[1]}"
    compose(overrides_of(argv[2:]))  # unknown keys, config groups or values raise ConfigError
