"""The command line's one option style: `--snake_case` flags (the names of transformers / TRL),
each with a hidden `--kebab-case` spelling so that older scripts still run, defaults and choices
in `--help`, and argparse's own errors (unknown flag, bad value) as one line on stderr, exit 2."""

from __future__ import annotations

import argparse
import difflib
import re
import sys


OVERRIDE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*=")  # a dotted `key=value` override


class OneLineParser(argparse.ArgumentParser):
    """argparse with its usage errors as one line: `error: <prog>: <what>; see '<prog> --help'`."""

    def error(self, message: str, prog: str | None = None):
        message = " ".join(message.split())
        prog = prog or self.prog
        print(f"error: {prog}: {message}; see '{prog} --help'", file=sys.stderr)
        sys.exit(2)

    def parse_args(self, args=None, namespace=None):
        """Unknown options are named with the closest known ones of the subcommand given. A bool
        flag followed by a `key=value` override (`--use_peft train.lora.r=8`) is the flag alone:
        argparse would take the override for the flag's optional value."""
        args = list(sys.argv[1:] if args is None else args)
        flags = self._bool_flags()
        args = [f"{arg}=true" if arg in flags and i + 1 < len(args) and "=" in args[i + 1]
                and not args[i + 1].startswith("-") else arg for i, arg in enumerate(args)]
        parsed, extras = self.parse_known_args(args, namespace)
        if isinstance(getattr(parsed, "overrides", None), list):  # `key=value` between flags: argparse
            overrides = [e for e in extras if OVERRIDE.match(e)]  # takes one run of positionals only
            parsed.overrides += overrides
            extras = [e for e in extras if e not in overrides]
        if extras:
            command = self._subcommand(getattr(parsed, "command", None))
            known = [o for a in command._actions for o in a.option_strings if a.help != argparse.SUPPRESS]
            hints = [f"{extra} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(
                extra.split("=", 1)[0], known, n=1, cutoff=0.75)) else extra for extra in extras]
            self.error(f"unrecognized arguments: {' '.join(hints)}", prog=command.prog)
        return parsed

    def _bool_flags(self) -> set[str]:
        """Option strings of every `add_bool_flag` flag, in this parser and its subcommands."""
        found = set()
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                found.update(*(sub._bool_flags() for sub in action.choices.values()))
            elif action.type is parse_bool and action.nargs == "?":
                found.update(action.option_strings)
        return found

    def _subcommand(self, name):
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction) and name in action.choices:
                return action.choices[name]
        return self


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Epilogs kept as written; `(default: X)` added to every option that has a default worth
    showing and does not already say it."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("default" in text or default in (None, False, [], "") or default is argparse.SUPPRESS
                or not action.option_strings):
            return text
        return f"{text} (default: {shown(default).replace('%', '%%')})"  # argparse %-formats help


def shown(value) -> str:
    """A value as one types it on the command line or in YAML: true/false, none, 1e-05, a,b."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(shown, value))
    return str(value)


def parse_bool(text: str) -> bool:
    value = str(text).strip().lower()
    if value in ("true", "yes", "1", "on"):
        return True
    if value in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def add_flag(parser, name: str, *extra_names: str, **kwargs) -> None:
    """`--name` (snake case) plus a hidden `--name-with-dashes` spelling of each, same dest."""
    names = [name, *extra_names]
    kwargs.setdefault("dest", name.lstrip("-"))
    parser.add_argument(*names, **kwargs)
    hidden = [n.replace("_", "-") for n in names if "_" in n and n.replace("_", "-") not in names]
    if hidden:
        alias = {k: v for k, v in kwargs.items() if k not in ("help", "metavar", "required")}
        alias["default"] = argparse.SUPPRESS  # the visible flag sets the default once
        parser.add_argument(*hidden, help=argparse.SUPPRESS, **alias)


def add_bool_flag(parser, name: str, *, dest: str, default, help: str) -> None:
    """HF style: `--name` (true), `--name false`, `--no_name`; plus the hidden `--kebab` spellings."""
    add_flag(parser, f"--{name}", dest=dest, nargs="?", const=True, type=parse_bool, default=default,
             metavar="true|false", help=help)
    add_flag(parser, f"--no_{name}", dest=dest, action="store_false", default=argparse.SUPPRESS,
             help=argparse.SUPPRESS)
