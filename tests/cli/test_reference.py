"""The documentation of the commands cannot drift from them: docs/commands.md is what the
commands say, every option of every `--help` is documented, every option the README's table
names exists, and no help text states a duration."""

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.cli.reference import commands_markdown

ROOT = Path(__file__).resolve().parents[2]


def test_the_command_reference_is_current():
    assert (ROOT / "docs" / "commands.md").read_text() == commands_markdown(), (
        "docs/commands.md is stale: run `python -m pipeline.cli.reference`"
    )


def _help_options(name: str) -> set[str]:
    result = CliRunner().invoke(cli, [name, "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", result.output)) - {"--help"}


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_every_option_of_the_help_is_documented(name):
    documented = (ROOT / "README.md").read_text() + "".join(
        p.read_text() for p in sorted((ROOT / "docs").glob("*.md"))
    )
    section = documented.split(f"## pipeline {name}\n", 1)[1].split("\n## ", 1)[0]
    missing = {o for o in _help_options(name) if f"`{o}`" not in section}
    assert not missing, f"pipeline {name}: {sorted(missing)} in --help, not in docs/commands.md"


def test_every_option_in_the_readme_table_exists():
    rows = re.findall(r"^\| `pipeline ([a-z-]+)([^`]*)` \|", (ROOT / "README.md").read_text(), re.M)
    assert len(rows) >= 10
    for name, usage in rows:
        assert name in cli.commands, name
        known = {o for p in cli.commands[name].params for o in [*p.opts, *p.secondary_opts]}
        named = set(re.findall(r"(--[a-z][a-z0-9-]*)", usage))
        assert named <= known, f"README names {sorted(named - known)} for pipeline {name}"


DURATION = re.compile(
    r"\b(?:\d+|a few|several|three|four|five)\s+(?:minutes?|hours?|seconds)\b|\bunder \w+ minutes?\b"
)


@pytest.mark.parametrize("name", sorted(cli.commands))
def test_no_help_text_states_a_duration(name):
    command: click.Command = cli.commands[name]
    texts = [command.help or ""] + [getattr(p, "help", None) or "" for p in command.params]
    assert not [t for t in texts if DURATION.search(t)], name
