"""The baseline's hyper-parameters (`baseline.*`)."""

from __future__ import annotations

from dataclasses import dataclass

SECTION = "baseline"  # the config section: `baseline.*` in recipes, args.yaml and --set


@dataclass
class BaselineConfig:
    """Backbone + global pooling + one linear classifier."""

    dropout: float = 0.0


def checks(c: BaselineConfig) -> list[tuple[bool, str]]:
    """Range checks that types alone cannot express (none for this method)."""
    return []
