"""The baseline's hyper-parameters (`baseline.*`)."""

from __future__ import annotations

from dataclasses import dataclass

from fgcli.searchspace import COMMON_SPACE, Param

SECTION = "baseline"  # the config section: `baseline.*` in recipes, args.yaml and --set
#: the recipe `fgcli tune --method baseline` starts from (on `--data demo`: baseline_demo_cpu)
TUNE_RECIPE = "baseline_lite0_128"


@dataclass
class BaselineConfig:
    """Backbone + global pooling + one linear classifier."""

    dropout: float = 0.0


#: the section's dataclass (fgcli.config.method_sections reads SECTION, CONFIG and checks)
CONFIG = BaselineConfig

def checks(c: BaselineConfig) -> list[tuple[bool, str]]:
    """Range checks that types alone cannot express."""
    return [(0.0 <= c.dropout < 1.0, "baseline.dropout must be in [0, 1)")]


#: `fgcli tune`'s default search space for this method (fgcli.searchspace)
SEARCH_SPACE: tuple[Param, ...] = (*COMMON_SPACE, Param("baseline.dropout", 0.0, 0.5),
                                   # LP-FT: +1.2 to +3.6 val points on flowers102 (baseline_lite0_128's header)
                                   Param("model.head_init", choices=("random", "probe")))
