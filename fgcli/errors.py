"""User-facing errors: one clear line, exit code 1, no traceback unless --debug."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem the user can fix (bad path, flag, file). The message names the thing and the fix."""


def closest(name: str, choices: Iterable[str]) -> str:
    """A ' Did you mean X?' suffix for the closest valid choice, or '' when none is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" Did you mean '{match[0]}'?" if match else ""


def unknown_choice(kind: str, name: str, choices: Iterable[str]) -> UserError:
    """An error for an unknown name among valid choices, listing them and the closest one."""
    choices = sorted(choices)
    shown = ", ".join(choices[:30]) + (", ..." if len(choices) > 30 else "")
    return UserError(f"unknown {kind} '{name}'.{closest(name, choices)} Valid: {shown}")
