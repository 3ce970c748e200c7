"""Every command and subcommand answers ``--help`` (walks the argparse tree, so a new
command is covered without editing this test)."""

import argparse

import pytest

from fanlora.cli.main import main, make_parser


def command_paths(parser: argparse.ArgumentParser, prefix=()) -> list[tuple[str, ...]]:
    """Every path of subcommand names in ``parser``'s tree, the root's () included."""
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                paths += command_paths(child, (*prefix, name))
    return paths


PATHS = command_paths(make_parser())


def test_the_tree_holds_every_command_and_nested_subcommands():
    names = {path[0] for path in PATHS if path}
    assert {"train", "score", "eval", "run", "data", "bench", "export"} <= names
    assert any(len(path) == 2 for path in PATHS)  # bench decode, data prepare, ...


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "fanlora")
def test_help_of_every_command(path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*path, "--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fanlora") and " ".join(path) in out
