"""The `loopscale` command line. Only parsing and printing here; each command lives in
`loopscale/commands/<name>.py` and calls importable library code."""

from __future__ import annotations

import importlib
import sys

import typer
from rich.console import Console
from rich.markup import escape

from loopscale.errors import UserError

app = typer.Typer(
    name="loopscale",
    help="Iso-depth scaling laws for looped language models: sweep, fit, compare.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module defines `register(app)`. Add a line here when a command module lands.
COMMAND_MODULES = [
    "loopscale.commands.data",
    "loopscale.commands.train",
    "loopscale.commands.sweep",
    "loopscale.commands.cancel",
    "loopscale.commands.fit",
    "loopscale.commands.plan",
    "loopscale.commands.compare",
    "loopscale.commands.report",
]

for _name in COMMAND_MODULES:
    importlib.import_module(_name).register(app)


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
