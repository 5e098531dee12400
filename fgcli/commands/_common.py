"""Shared command behaviour: one red line and exit 1 for user errors, exit 130 on Ctrl-C."""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.markup import escape

from fgcli.console import err_console, settings, setup_logging
from fgcli.errors import UserError

F = TypeVar("F", bound=Callable[..., Any])


def providers_option() -> Any:
    """`--providers` of the commands that run an .onnx file (eval, predict)."""
    return typer.Option(None, "--providers", help=".onnx only: onnxruntime providers, comma-separated (overrides "
                        "--device): cpu, cuda, tensorrt, openvino (pip install \"fgcli\\[openvino]\").")


def ema_option(help: str = "Use the EMA weights when the checkpoint has them.") -> Any:
    """`--ema/--no-ema` of the commands that load a checkpoint."""
    return typer.Option(True, "--ema/--no-ema", help=help)


def calibration_option(help: str) -> Any:
    """`--calibration/--no-calibration`: the model's fitted temperature (what it changes is the command's)."""
    return typer.Option(True, "--calibration/--no-calibration", help=help)


def tta_option(help: str) -> Any:
    """`--tta none|flip` (fgcli.engine.fused: the one flip-TTA implementation)."""
    return typer.Option("none", "--tta", help=f"Test-time augmentation: none, or flip ({help}).")


def precision_option() -> Any:
    """`--precision` of OpenVINO sessions (eval, predict)."""
    return typer.Option("f32", "--precision", help="--providers openvino: f32 or bf16 (on CPUs with AVX-512 BF16 / "
                        "AMX; elsewhere a warning and f32).")


def _exit_now(code: int) -> None:
    """Leave at once: stop child processes (data-loader workers), flush, os._exit."""
    import logging
    import multiprocessing
    import os
    import sys
    import time

    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    deadline = time.monotonic() + 2.0
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


def handle_errors(fn: F | None = None, *, fast_exit: bool = False) -> Any:
    """Wrap a command: UserError -> red line + exit 1; Ctrl-C -> exit 130; tracebacks only with --debug.

    `fast_exit=True` (training): after Ctrl-C, once everything is saved, stop the loader workers and leave
    without the interpreter's teardown, which took 2-4 s more on a loaded CPU. Not for commands that run a
    concurrent.futures process pool (prepare-data): terminating its workers under it prints a traceback.
    """
    if fn is None:
        return functools.partial(handle_errors, fast_exit=fast_exit)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        setup_logging()
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            if settings.debug:
                err_console.print(traceback.format_exc(), markup=False)
            err_console.print(f"[bold red]Error:[/] {escape(str(e))}", soft_wrap=True)
            raise typer.Exit(code=1) from None
        except KeyboardInterrupt:
            err_console.print("[yellow]Interrupted (Ctrl-C).[/]")
            if fast_exit and settings.fast_exit:
                _exit_now(130)
            raise typer.Exit(code=130) from None
        except typer.Exit:
            raise
        except Exception as e:  # an fgcli bug or an unexpected library error: still one line by default
            if settings.debug:
                raise
            err_console.print(f"[bold red]Error:[/] {type(e).__name__}: {escape(str(e))} (rerun with --debug for the "
                              "traceback)",
                              soft_wrap=True)
            raise typer.Exit(code=1) from None

    return wrapper  # type: ignore[return-value]


def share_options(source: Callable[..., Any], drop: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Give the decorated command every option of command `source` too (but `drop`), declared once, in
    `source`. The decorated function takes them as `**kwargs`; its own parameters win on a name clash."""
    import inspect

    def decorate(fn: F) -> F:
        own = [p for p in inspect.signature(fn, eval_str=True).parameters.values()
               if p.kind is not inspect.Parameter.VAR_KEYWORD]
        names = {p.name for p in own}
        shared = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
                  for p in inspect.signature(source, eval_str=True).parameters.values()
                  if p.name not in names and p.name not in drop]
        params = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own] + shared

        @functools.wraps(fn)
        def wrapper(**kwargs: Any) -> Any:
            return fn(**kwargs)

        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in params}
        del wrapper.__wrapped__  # typer must read the merged signature, not fn's
        return wrapper  # type: ignore[return-value]

    return decorate
