"""The `loopscale` command line. Only parsing and printing here; each command lives in
`loopscale/commands/<name>.py` and calls importable library code."""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from loopscale.commands import cancel, compare, data, fit, plan, report, sweep, train
from loopscale.errors import UserError

app = typer.Typer(
    name="loopscale",
    help="Iso-depth scaling laws for looped language models: sweep, fit, compare.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module defines `register(app)`; the order here is the order of `loopscale --help`.
COMMAND_MODULES = (data, train, sweep, cancel, fit, plan, compare, report)

for _module in COMMAND_MODULES:
    _module.register(app)


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    try:
        app(args=argv, prog_name="loopscale")
    except UserError as e:
        Console(stderr=True).print(f"[bold red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)  # as written: [x] too
        sys.exit(2)
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
