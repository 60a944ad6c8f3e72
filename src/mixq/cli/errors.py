"""The CLI's one error boundary: a user's mistake is one line on stderr and exit status 2.

`run` calls the Typer app and turns mixq's errors, the ``ValueError`` / ``KeyError`` /
``FileNotFoundError`` that bad input raises, and click's usage errors into ``error: ...``;
anything else is a bug: one line and exit status 1, with the traceback when ``MIXQ_DEBUG=1``.

Example:
    >>> did_you_mean("cosin", ["cosine", "sqnr"])
    "; did you mean 'cosine'?"
    >>> one_line("bad\\n   value")
    'bad value'
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager

import typer

from mixq.core.errors import MixqError

__all__ = ["CliError", "did_you_mean", "one_line", "reported_as", "run"]

USER_ERRORS = (MixqError, ValueError, KeyError, FileNotFoundError, NotADirectoryError)


class CliError(typer.BadParameter):
    """A bad command-line value; the message names the flag and says what to do (a usage
    error, so the bare Typer app also exits with status 2)."""

    def format_message(self) -> str:
        return self.message


def did_you_mean(value: str, names: Iterable[str]) -> str:
    """``"; did you mean 'x'?"`` for the closest of ``names``, or ``""``."""
    close = difflib.get_close_matches(str(value), [str(n) for n in names], n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def one_line(text: str) -> str:
    """``text`` with its whitespace (newlines included) collapsed to single spaces."""
    return " ".join(str(text).split())


@contextmanager
def reported_as(flag: str, value: object) -> Iterator[None]:
    """Re-raise a user error raised inside as a `CliError` naming ``flag`` and ``value``."""
    try:
        yield
    except CliError:
        raise
    except USER_ERRORS as e:
        raise CliError(f"{flag} {str(value)!r}: {_message(e)}") from e


def run(app: typer.Typer, argv: Sequence[str] | None = None) -> int:
    """Run ``app`` (a Typer app) on ``argv``; return the exit status, printing one error line."""
    debug = os.environ.get("MIXQ_DEBUG", "") not in ("", "0")
    try:
        args = list(argv) if argv is not None else None
        code = app(args=args, prog_name="mixq", standalone_mode=False)
    except typer.Exit as e:
        return int(e.exit_code)
    except typer.Abort:
        _print("error: interrupted")
        return 130
    except CliError as e:
        _print(f"error: {one_line(e.message)}")
        return 2
    except typer.TyperException as e:
        _print(f"error: {_click_message(e)}")
        return 2
    except USER_ERRORS as e:
        if debug:
            raise
        _print(f"error: {_message(e)}")
        return 2
    except Exception as e:
        if debug:
            raise
        _print(
            f"error: unexpected {type(e).__name__}: {_message(e)} (a bug in mixq? rerun with "
            "MIXQ_DEBUG=1 for the traceback and report it)"
        )
        return 1
    return int(code or 0)


def _message(e: BaseException) -> str:
    text = e.args[0] if isinstance(e, KeyError) and e.args else e
    return one_line(str(text)) or type(e).__name__


def _click_message(e: typer.TyperException) -> str:
    """One line for click's (Typer's) usage errors: the flag, the problem, where help is."""
    param = getattr(e, "param", None)
    if isinstance(e, typer.BadParameter) and param is None:
        message = e.message
    elif isinstance(e, typer.BadParameter) and e.message:
        flag = e.param_hint or "/".join(getattr(param, "opts", [])) or str(param)
        message = f"{flag}: {e.message}"
    else:
        message = e.format_message()
    ctx = getattr(e, "ctx", None)
    command = ctx.command_path if ctx is not None else "mixq"
    if hasattr(e, "ctx") and "--help" not in message:
        message = f"{message.rstrip('.')} (see `{command} --help`)"
    return one_line(message)


def _print(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
