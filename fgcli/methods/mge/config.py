"""MGE-CNN hyper-parameters (`mge.*`) and their checks."""

from __future__ import annotations

from dataclasses import dataclass

from fgcli.searchspace import COMMON_SPACE, TRUNK_TRAINS, Param

SECTION = "mge"  # the config section: `mge.*` in recipes, args.yaml and --set
#: the recipe `fgcli tune --method mge` starts from (on `--data demo`: mge_demo_cpu)
TUNE_RECIPE = "mge_frozen_lite0_128"


@dataclass
class MgeConfig:
    """MGE-CNN hyper-parameters (spec/mge.md); defaults follow the spec's recommendations."""

    experts: int = 3
    share_backbone: bool = False  # paper: a separate backbone copy per expert and for the gate
    box_threshold: float = 0.2
    cam_source: str = "own"  # "own" expert's GAP head, or "first" (official quirk)
    box_end: str = "inclusive"  # or "exclusive" (official slicing)
    part_padding: int = 0  # official: 1
    part_mult: int = 10  # part conv width = part_mult * num_classes
    gate_hidden: int = 512
    gate_act: bool = False  # official: no nonlinearity between the gate's Linears
    diversity: str = "official"  # "official", "paper", or "off"
    lambda_global: float = 1.0
    lambda_part: float = 1.0
    lambda_concat: float = 1.0
    lambda_gate: float = 1.0
    lambda_div: float = 1.0
    schedule: str = "joint"  # "joint" (official: everything from epoch 0) or "staged" (experts added in turn)
    stage_epochs: int = 10  # staged: expert e (1-based) and its losses start at epoch (e-1) * stage_epochs


#: the section's dataclass (fgcli.config.method_sections reads SECTION, CONFIG and checks)
CONFIG = MgeConfig

def checks(c: MgeConfig) -> list[tuple[bool, str]]:
    """Range checks that types alone cannot express: (ok, message naming the key and the valid form)."""
    return [
        (0.0 < c.box_threshold <= 1.0, "mge.box_threshold must be in (0, 1]"),
        (c.experts >= 1, "mge.experts must be >= 1"),
        (c.cam_source in ("own", "first"), "mge.cam_source must be 'own' or 'first'"),
        (c.box_end in ("inclusive", "exclusive"), "mge.box_end must be 'inclusive' or 'exclusive'"),
        (c.diversity in ("official", "paper", "off"), "mge.diversity must be official, paper or off"),
        (c.schedule in ("joint", "staged"), "mge.schedule must be 'joint' or 'staged'"),
        (c.stage_epochs >= 1, "mge.stage_epochs must be >= 1"),
        (c.part_padding >= 0 and c.part_mult >= 1 and c.gate_hidden >= 1,
         "mge.part_padding must be >= 0, mge.part_mult and mge.gate_hidden >= 1"),
    ]


#: `fgcli tune`'s default search space for this method (fgcli.searchspace): the CAM threshold that draws each
#: expert's box, and one trunk shared by the experts and the gate or a copy each (only while the trunk trains:
#: frozen copies compute the same features as one shared trunk, so the choice would change the cost alone)
SEARCH_SPACE: tuple[Param, ...] = (
    *COMMON_SPACE,
    Param("mge.box_threshold", 0.1, 0.5),
    Param("mge.share_backbone", choices=(False, True), requires=TRUNK_TRAINS),
)
