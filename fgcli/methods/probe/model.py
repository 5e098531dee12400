"""The linear probe as a method: exactly the baseline's modules (its checkpoints load as baseline weights), the
backbone always frozen, and no training loop: `fgcli train` fits it in one go (fgcli.engine.probe)."""

from __future__ import annotations

from fgcli.config import Config
from fgcli.methods import register_method
from fgcli.methods.baseline.model import Baseline
from fgcli.methods.probe import config as probe_config


@register_method("probe")
class Probe(Baseline, config=probe_config):
    """Backbone (frozen, eval-mode batch norm) + GAP + Linear; one head `cls`, fitted by L-BFGS."""

    fitted_by = "probe"
    viz_module = "fgcli.methods.baseline.viz"
    search_space = ()  # the L2 weight is searched by the fit itself (probe.l2_grid)
    tune_recipe = None

    def __init__(self, cfg: Config, num_classes: int) -> None:
        super().__init__(cfg, num_classes)
        self.freeze_backbones()
