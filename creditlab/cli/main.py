"""The parser of every subcommand, and `main`, the console script's entry point."""

from __future__ import annotations

import argparse
import os
import sys

from creditlab.errors import CreditlabError

# One module per subcommand, each with its `register(sub)`; the parser lists them in this order.
SUBCOMMANDS = ("train", "compare", "tune", "gradcheck", "capsules", "explain", "rules", "gan")


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if not action.option_strings or "default" in text or action.default is argparse.SUPPRESS:
            return text
        value = action.default
        if isinstance(value, bool):
            shown = "on" if value else "off"
        elif value is None or value == []:
            shown = "none"
        else:
            shown = "%(default)s"
        return f"{text} (default: {shown})".strip()


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # argparse's own errors: usage line, message, exit 2
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = Parser(
        prog="creditlab", description="Train networks by backpropagation and its challengers."
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name in SUBCOMMANDS:
        importlib.import_module(f"creditlab.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from creditlab.training import locks

    parser = build_parser()
    args = parser.parse_args(argv)
    locks.invoked = list(sys.argv[1:] if argv is None else argv)  # recorded in run folders
    try:
        return args.func(args)
    except CreditlabError as err:
        print(f"creditlab: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("creditlab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `creditlab rules | head`: the reader left, which is no error
        # Point stdout at /dev/null so that Python's own flush at exit does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as err:  # the machine's fault (a full disk, an I/O error): one line, exit 1
        where = err.filename or "a file"
        print(f"creditlab: error: cannot use {where}: {err.strerror or err}", file=sys.stderr)
        return 1
    except MemoryError:
        print(
            "creditlab: error: out of memory; use a smaller model, batch or data set",
            file=sys.stderr,
        )
        return 1
