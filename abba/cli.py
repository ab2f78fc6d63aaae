"""How every entry point fails: one line on stderr that names what failed and what to do, a non-zero exit.

    error: <what failed>: <what to do>

Exit 2 for a usage error (a bad value, an unknown key or option), 1 for a refusal or a failure outside the
command line (a missing or unreachable model, tokenizer, data file or folder; a folder that may not be reused),
130 for Ctrl-C. `one_line_errors` turns the known exceptions of an entry point into that line; anything else is
a bug and keeps its traceback.
"""

from __future__ import annotations

import re
import sys
from contextlib import contextmanager
from typing import Iterator, NoReturn

USAGE, REFUSED, INTERRUPTED = 2, 1, 130


class UsageError(ValueError):
    """A command line the entry point cannot run (bad value, unknown key); exit 2. The message is one line."""


class Refusal(RuntimeError):
    """Something outside the command line is missing, unreachable or may not be reused; exit 1. One line."""


def first_line(message: object, default: str = "") -> str:
    """The first non-empty line of `message` (str() of it, e.g. an exception), stripped; `default` when none."""
    return next((line.strip() for line in str(message).splitlines() if line.strip()), default)


def fail(message: str, code: int = REFUSED) -> NoReturn:
    """Print `error: <first line of message>` on stderr and exit with `code`."""
    first = first_line(message, "failed")
    tqdm = sys.modules.get("tqdm")
    if tqdm is not None:  # a bar still open would redraw itself after the message when it is collected at exit
        for bar in list(getattr(tqdm.tqdm, "_instances", ())):
            bar.close()
    print(f"error: {first}", file=sys.stderr)
    sys.exit(code)


@contextmanager
def one_line_errors(usage: tuple[type[BaseException], ...] = (UsageError,),
                    refusals: tuple[type[BaseException], ...] = (Refusal,),
                    on_interrupt: str = "interrupted") -> Iterator[None]:
    """Run an entry point's body: `usage` exceptions exit 2, `refusals` exit 1, Ctrl-C exits 130 with
    `on_interrupt` (say how to continue, e.g. "pass resume=true to continue from the last checkpoint")."""
    try:
        yield
    except KeyboardInterrupt:
        fail(on_interrupt, INTERRUPTED)
    except usage as exc:  # noqa: B030 - tuples of exception classes
        fail(str(exc), USAGE)
    except refusals as exc:
        fail(str(exc), REFUSED)


def did_you_mean(value: object, choices) -> str:
    """" (did you mean: a, b)" for the choices close to `value` (difflib), else "" (for a usage error's message)."""
    import difflib

    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=3, cutoff=0.6)
    return f" (did you mean: {', '.join(close)})" if close else ""


def unknown_options(given, known, usage: str) -> None:
    """Raise UsageError naming the options in `given` that are not in `known`, with close matches and `usage`."""
    unknown = sorted(set(given) - set(known))
    if unknown:
        hints = "".join(did_you_mean(u, known) for u in unknown)
        raise UsageError(f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}{hints}; {usage}")


_HYDRA_PLAIN = re.compile(r"^[\w./~+-]*$")


def hydra_arg(key: str, value) -> str:
    """`key=value` for a Hydra command line, the value single-quoted when Hydra's override grammar would split
    or misread it: run folders are named `peft.lr=0.001,trainer.max_steps=3`, and a path holding '=' or ','
    is otherwise a syntax error (or a sweep)."""
    text = str(value)
    if _HYDRA_PLAIN.match(text):
        return f"{key}={text}"
    return f"{key}='" + text.replace("'", "\\'") + "'"  # a backslash is literal unless it precedes a quote


def parse_key_values(argv: list[str], defaults: dict, usage: str = "") -> dict:
    """`key=value` arguments over `defaults` (the known keys), values as the strings typed.

    Raises UsageError for an argument without '=' or a key not in `defaults` (with close matches)."""
    values = dict(defaults)
    usage = usage or "options: " + ", ".join(f"{k}=..." for k in defaults)
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq or not key:
            raise UsageError(f"argument {arg!r} is not key=value; {usage}")
        unknown_options([key], defaults, usage)
        values[key] = value
    return values


def parse_bool(key: str, value: str) -> bool:
    """A `key=value` boolean: true/false (or 1/0), any case. Raises UsageError naming the key otherwise."""
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0"):
        raise UsageError(f"{key}={value}: expected true or false")
    return text in ("true", "1")
