"""Every option of every subcommand says what it does in ``--help`` (not only its default)."""

from __future__ import annotations

import argparse

import pytest

from fewstep.cli import _parser, main


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _undocumented(parser: argparse.ArgumentParser) -> list[str]:
    """The options and positionals of ``parser`` whose help is missing or only states a default."""
    missing = []
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        text = (action.help or "").strip()
        if not text or text == argparse.SUPPRESS or text.startswith("(default"):
            missing.append("/".join(action.option_strings) or action.dest)
    return missing


def test_every_option_of_every_subcommand_has_help():
    parser = _parser()
    commands = _subparsers(parser)
    assert {"generate", "eval", "bench", "train", "distill", "list", "serve", "lm-eval"} <= set(commands)
    missing = {name: _undocumented(sub) for name, sub in commands.items()}
    missing["fewstep"] = _undocumented(parser)
    assert {name: options for name, options in missing.items() if options} == {}


def test_every_subcommand_has_a_summary():
    parser = _parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            summaries = {choice.dest: choice.help for choice in action._choices_actions}
            assert all(summaries.values()), summaries


@pytest.mark.parametrize("command", ["generate", "eval", "bench", "train", "distill", "list", "serve"])
def test_help_prints_and_exits_0(command, capsys):
    assert main([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: fewstep " + command)
