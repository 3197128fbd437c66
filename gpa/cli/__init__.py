"""The ``gpa`` command line: one module per command, shared options in :mod:`gpa.cli.options`.

Commands are thin: they parse options, call the library and format. Exit codes:

* 0: success (for ``gpa check``: every rule holds);
* 1: ``gpa check``: a rule failed; any other command: an exception that is a bug in gpa
  (a short notice and the traceback on stderr);
* 2: a usage error, or any :class:`gpa.errors.GpaError` (a problem with the user's target,
  model, inputs or options): ``error: <message>`` on stderr, no traceback.

Heavy imports (torch) happen inside the commands, so ``gpa --help`` is quick.
"""

from __future__ import annotations

import sys
import traceback
from typing import IO, Any

import click

from gpa import __version__
from gpa.cli import analyze, check, compare, explain, measure, plot, scale, zoo
from gpa.errors import GpaError

__all__ = ["main"]


class UserError(click.ClickException):
    """A :class:`GpaError` surfaced on the command line (exit code 2)."""

    exit_code = 2

    def show(self, file: IO[Any] | None = None) -> None:
        """Print ``error: <message>`` to stderr."""
        click.echo(f"error: {self.format_message()}", file=file or sys.stderr)


class InternalError(click.ClickException):
    """An unexpected exception: a bug in gpa (exit code 1)."""

    exit_code = 1

    def __init__(self, exc: BaseException) -> None:
        super().__init__(f"{type(exc).__name__}: {exc}")
        self.details = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))

    def show(self, file: IO[Any] | None = None) -> None:
        """Print a short notice and the full traceback to stderr."""
        out = file or sys.stderr
        click.echo(
            f"internal error: gpa {__version__} failed unexpectedly. This is a bug in gpa; "
            "please report it with the traceback below.",
            file=out,
        )
        click.echo(self.details.rstrip("\n"), file=out)


class _Group(click.Group):
    """A group that maps exceptions to gpa's exit codes (see the module docstring)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except GpaError as exc:
            raise UserError(str(exc)) from exc
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            raise InternalError(exc) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(
    __version__, "-V", "--version", prog_name="gpa", message="%(prog)s %(version)s"
)
def main() -> None:
    """gpa: gradient-path analysis for PyTorch models.

    For every layer: the shortest and longest gradient path to the loss, the
    rounds at which gradient reaches it, how many paths there are and where
    its gradient comes from.
    """


for _module in (analyze, explain, check, compare, zoo, scale, plot, measure):
    main.add_command(_module.command)


if __name__ == "__main__":  # pragma: no cover
    main()
