"""HERBS hyper-parameters (`herbs.*`) and their checks."""

from __future__ import annotations

from dataclasses import dataclass, field

from fgcli.searchspace import COMMON_SPACE, Param

SECTION = "herbs"  # the config section: `herbs.*` in recipes, args.yaml and --set
#: the recipe `fgcli tune --method herbs` starts from (on `--data demo`: herbs_demo_cpu)
TUNE_RECIPE = "herbs_lite0_128"


@dataclass
class HerbsConfig:
    """HERBS hyper-parameters (spec/herbs.md); defaults follow the official config and code."""

    fpn_size: int = 1536
    num_selects: list[float] = field(default_factory=lambda: [256, 128, 64, 32])  # ints, or fractions of S_i
    mixing: str = "auto"  # "auto" (token conv for transformers, interp for CNNs), "conv", "interp"
    swin_taps: str = "official"  # "official" post-merge taps, or "stages"
    lambda_r: float = 1.375  # high-temperature refinement KL (paper: 1.0)
    lambda_l: float = 0.3  # layer CE on bottom-up heads
    lambda_d: float = 5.0  # dropped tokens -> tanh -1 (MSE)
    lambda_s: float = 0.0  # selected tokens CE (official: off)
    lambda_m: float = 1.0  # combiner CE
    temperature: float = 64.0
    temp_step: int = 10  # halve T every temp_step epochs
    kl_reduction: str = "official"  # "official" (elementwise mean = per-token KL / C) or "token"
    layer_agg: str = "sum"  # "sum" (code) or "mean" over stages
    drop_reduction: str = "mean"  # "mean" over tokens and classes (code) or "sum" over classes
    fusion: str = "prob_mean"  # "prob_mean" (authors' eval) or "logit_sum"
    rank_key: str = "margin"  # "margin" or "prob" (official sigma)
    select_class: str = "pred"  # "pred" (code) or "label" in training
    combiner_dropout: float = 0.1


#: the section's dataclass (fgcli.config.method_sections reads SECTION, CONFIG and checks)
CONFIG = HerbsConfig

def checks(c: HerbsConfig) -> list[tuple[bool, str]]:
    """Range checks that types alone cannot express: (ok, message naming the key and the valid form)."""
    return [
        (c.fusion in ("prob_mean", "logit_sum"), "herbs.fusion must be 'prob_mean' or 'logit_sum'"),
        (c.kl_reduction in ("official", "token"), "herbs.kl_reduction must be 'official' or 'token'"),
        (c.layer_agg in ("sum", "mean"), "herbs.layer_agg must be 'sum' or 'mean'"),
        (c.drop_reduction in ("mean", "sum"), "herbs.drop_reduction must be 'mean' or 'sum'"),
        (c.mixing in ("auto", "conv", "interp"), "herbs.mixing must be auto, conv or interp"),
        (c.swin_taps in ("official", "stages"), "herbs.swin_taps must be 'official' or 'stages'"),
        (c.rank_key in ("margin", "prob"), "herbs.rank_key must be 'margin' or 'prob'"),
        (c.select_class in ("pred", "label"), "herbs.select_class must be 'pred' or 'label'"),
        (len(c.num_selects) == 4 and all(k > 0 for k in c.num_selects),
         "herbs.num_selects must be 4 positive numbers (counts, or fractions of each stage's tokens)"),
        (c.temp_step >= 1, "herbs.temp_step must be >= 1"),
        (c.fpn_size >= 1, "herbs.fpn_size must be >= 1"),
        (0.0 <= c.combiner_dropout < 1.0, "herbs.combiner_dropout must be in [0, 1)"),
        (c.temperature > 0, "herbs.temperature must be > 0"),
    ]


#: `fgcli tune`'s default search space for this method (fgcli.searchspace): the shares of tokens each stage
#: keeps (the paper's shares, and 1/16 ... 1/2 of every stage), the neck width around the recipe's and how
#: often the refinement temperature halves
SEARCH_SPACE: tuple[Param, ...] = (
    *COMMON_SPACE,
    Param("herbs.num_selects", choices=((0.11, 0.22, 0.44, 0.22), (0.0625,) * 4, (0.125,) * 4, (0.25,) * 4,
                                        (0.5,) * 4)),
    Param("herbs.fpn_size", 0.5, 2.0, log=True, relative=True),
    Param("herbs.temp_step", 1, 10),
)
