"""MkDocs hook: the command-line reference, rendered from creditlab's own argparse parser.

docs/reference/cli.md holds the marker `<!-- cli-reference -->`; at build time this hook puts
in its place one section per subcommand (what it does, its usage line and a table of every
option with its default and help), all read from `creditlab.cli.build_parser()`. The options
are thus written once, in the parser, and the site can never disagree with `--help`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

MARKER = "<!-- cli-reference -->"
ROOT = Path(__file__).resolve().parents[2]


def _parser() -> argparse.ArgumentParser:
    if str(ROOT) not in sys.path:  # the repository's creditlab, installed or not
        sys.path.insert(0, str(ROOT))
    from creditlab.cli import build_parser

    return build_parser()


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _help(action: argparse.Action) -> str:
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    params = dict(vars(action), prog="creditlab")
    if isinstance(params.get("choices"), (list, tuple)):
        params["choices"] = ", ".join(map(str, params["choices"]))
    try:
        return action.help % params
    except (KeyError, TypeError, ValueError):
        return action.help


def _default(action: argparse.Action) -> str:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):
        return "off"
    if action.required:
        return "required"
    if action.default in (None, [], argparse.SUPPRESS):
        return "–"
    return f"`{action.default}`"


def _option(action: argparse.Action) -> str:
    names = ", ".join(f"`{s}`" for s in action.option_strings) or f"`{action.dest}`"
    if action.nargs != 0:
        metavar = action.metavar or action.dest.upper()
        if action.choices:
            metavar = "{" + ",".join(map(str, action.choices)) + "}"
        names += f" {_cell(metavar)}"
    return names


def subcommands(parser: argparse.ArgumentParser):
    """(name, one-line help, subparser) for every subcommand, in the parser's order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def render(parser: argparse.ArgumentParser | None = None) -> str:
    parser = parser or _parser()
    out = []
    for name, summary, sub in subcommands(parser):
        out.append(f"## creditlab {name}\n")
        if summary:
            out.append(f"{summary[0].upper()}{summary[1:]}.\n")
        usage = sub.format_usage().removeprefix("usage: ").rstrip()  # argparse's wrapping
        out.append(f"```text\n{usage}\n```\n")
        out.append("| option | default | what it does |\n|---|---|---|")
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            out.append(f"| {_option(action)} | {_default(action)} | {_cell(_help(action))} |")
        out.append("")
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, render())
    return markdown
