"""How a method declares its default search space for `fgcli tune` (light: no torch, no optuna).

Each method's `config.py` lists `SEARCH_SPACE`: the shared keys of `COMMON_SPACE` plus its own. A `Param`
is a config key and a range, either absolute or relative to the value the study starts from (the recipe's);
`fgcli.tuning.space` turns the declarations into concrete ranges against the starting config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Param:
    """One searched config key.

    `low` / `high` bound a number (`log`: sampled on a log scale; `step`: a grid), or `choices` lists the
    values. `relative`: `low` / `high` multiply the starting value (1e-3 with (0.1, 10) -> 1e-4 ... 1e-2).
    `requires`: (key, value) pairs the starting config must have for the key to matter (e.g. the backbone's
    learning rate only while the backbone trains); otherwise the key is not searched and the plan says why.
    """

    key: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] | None = None
    relative: bool = False
    requires: tuple[tuple[str, Any], ...] = ()


#: trains the backbone: the keys about its weights and statistics matter only then
TRUNK_TRAINS = (("model.freeze", "none"),)

#: the settings that mattered most on flowers102 (README): learning rates, batch-norm statistics, length,
#: weight decay and warm-up. Image size is searched only when a --space file asks for it (it changes the cost).
COMMON_SPACE: tuple[Param, ...] = (
    Param("optim.lr", 0.1, 10.0, log=True, relative=True),
    Param("optim.backbone_lr_scale", 0.01, 1.0, log=True, requires=TRUNK_TRAINS),
    Param("model.freeze_bn_stats", choices=(False, True), requires=TRUNK_TRAINS),
    Param("train.epochs", 0.5, 2.0, relative=True),
    Param("optim.weight_decay", 1e-5, 0.1, log=True),
    Param("sched.warmup", 0.0, 3.0, requires=(("sched.warmup_unit", "epochs"),)),
)
