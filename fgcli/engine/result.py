"""What `fgcli train` returns (TrainResult), the end-of-epoch callback type, and the calibration it stores into a
checkpoint at the end of a run (shared by the training loop and the probe fit)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgcli.config import Config
from fgcli.console import log
from fgcli.engine.checkpoint import save_checkpoint
from fgcli.engine.signals import defer_sigint

#: called on rank 0 after each epoch is saved, with the epoch (1-based) and its results.csv row; a string
#: return stops the run there (cleanly: the epoch's files are written) and is logged as the reason (after the
#: last epoch it is ignored: the run is complete)
EpochEnd = Callable[[int, dict[str, Any]], str | None]


@dataclass
class TrainResult:
    """What a finished (or stopped) run produced."""

    run_dir: Path
    epochs_done: int
    best_metric: float | None
    best_epoch: int | None
    history: list[dict[str, Any]] = field(default_factory=list)
    config: Config | None = None  # the resolved config (as saved in args.yaml)
    classes: list[str] = field(default_factory=list)
    val_split: str = ""
    is_main: bool = True  # False in the other processes of a torchrun job (only rank 0 reports)
    calibration: dict[str, Any] | None = None  # best.pt's temperature fit (fgcli.engine.calibration.fit_record)
    stopped: str | None = None  # why an on_epoch_end callback stopped the run before its last epoch
    early_stop: dict[str, int] | None = None  # train.patience ended the run (fgcli.engine.rundir.early_stop_reason)

    @property
    def last(self) -> Path:
        return self.run_dir / "weights" / "last.pt"

    @property
    def best(self) -> Path:
        return self.run_dir / "weights" / "best.pt"


def store_calibration(path: Path, scores: Any, split: str, source: str = "train",
                      reject_recall: float | None = 0.95, warned: set[str] | None = None) -> dict[str, Any] | None:
    """Choose the temperature of the fused logits in `scores` (and fit the rejection threshold keeping
    `reject_recall` of those images, on the probabilities calibrated with it) and write both into the checkpoint
    at `path` (atomically); returns the record, or None (with a warning) when there is nothing to fit on. A
    temperature that could not be fitted (too few val errors) is warned about once per reason in `warned`."""
    from fgcli.engine.calibration import CHECKPOINT_KEY, fit_record, record_line
    from fgcli.engine.checkpoint import load_checkpoint

    logits, _, targets = scores.arrays()
    if not len(targets):
        log.warning(f"no validation images were scored: {path.name} stays uncalibrated")
        return None
    ckpt = load_checkpoint(path)
    record = fit_record(logits[0], targets, split=split, weights="ema" if ckpt.get("ema") else "model", source=source,
                        reject_recall=reject_recall)
    ckpt[CHECKPOINT_KEY] = record
    with defer_sigint():
        save_checkpoint(path, ckpt)
    log.info(f"calibrated {path.name}: {record_line(record)}")
    warned = set() if warned is None else warned
    if record["reason"] and record["reason"] not in warned:
        warned.add(record["reason"])
        log.warning(f"{path.name}: {record['reason']}")
    return record
