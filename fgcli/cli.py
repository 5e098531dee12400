"""The `fgcli` command line: parses arguments and delegates to one module per command."""

from __future__ import annotations

import importlib

import typer

from fgcli import __version__
from fgcli.console import settings

app = typer.Typer(
    name="fgcli",
    help="Fine-grained visual classification: prepare data, train HERBS / MGE-CNN / baseline on any timm "
    "backbone, tune them on validation, evaluate honestly, visualise attention, export to ONNX.",
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

# (command name, module in fgcli.commands, function, aliases). Each module imports torch lazily.
COMMANDS: list[tuple[str, str, str, tuple[str, ...]]] = [
    ("prepare-data", "prepare_data", "prepare_data_command", ()),
    ("train", "train", "train_command", ()),
    ("tune", "tune", "tune_command", ()),
    ("distill", "distill", "distill_command", ()),
    ("eval", "eval", "eval_command", ()),
    ("calibrate", "calibrate", "calibrate_command", ()),
    ("export", "export", "export_command", ()),
    ("predict", "predict", "predict_command", ()),
    ("bench", "bench", "bench_command", ()),
    ("attention-viz", "viz", "viz_command", ("viz",)),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fgcli {__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: bool = typer.Option(False, "--version", "-V", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Less output: no progress bars, warnings only."),
) -> None:
    """fgcli: fine-grained visual classification from the command line."""
    settings.debug = settings.debug or debug
    settings.quiet = quiet


for _name, _module, _func, _aliases in COMMANDS:
    _fn = getattr(importlib.import_module(f"fgcli.commands.{_module}"), _func)
    app.command(_name)(_fn)
    for _alias in _aliases:  # listed in `fgcli --help` too, so that users find the short name
        app.command(_alias, help=f"Alias of `fgcli {_name}`.", short_help=f"Alias of {_name}.")(_fn)


def main() -> None:
    """Console-script entry point (also `python -m fgcli`)."""
    settings.fast_exit = True
    try:
        app()
    except KeyboardInterrupt:
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
