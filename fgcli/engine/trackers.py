"""Experiment trackers fed by the trainer: TensorBoard event files and MLflow runs (`--logger`).

Each epoch's row of results.csv (every loss term, lr per parameter group, val top-1/top-5 fused and per
head, img/s) goes to every tracker with the epoch as the step; the resolved config goes in at the start, the
plots and files at the end. Only rank 0 builds trackers. A resumed run continues the same TensorBoard folder
(events of the epochs being redone are purged) and the same MLflow run (its id is kept in the run folder).
A tracker that fails (library missing at run time, server down, disk full) is a warning and is switched
off for the rest of the run: tracking never costs a training.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fgcli.config import flatten
from fgcli.console import log
from fgcli.errors import UserError

LOGGERS = {"tensorboard": "tensorboard", "mlflow": "mlflow-skinny"}  # logger name -> package to install
MLFLOW_RUN_ID_FILE = "mlflow_run_id.txt"


class Tracker:
    """One tracking backend: `start`, `log_epoch` per epoch, `finish` with the run's files, `close`."""

    name = "tracker"

    def start(self, run_dir: Path, config: dict[str, Any], resumed_epoch: int) -> None:
        raise NotImplementedError

    def log_epoch(self, epoch: int, scalars: dict[str, float]) -> None:
        raise NotImplementedError

    def finish(self, images: list[Path], files: list[Path]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release files / connections (also after a failure)."""


class TensorBoardTracker(Tracker):
    """Event files in `<run>/tb/`: scalars per epoch, the config as text, results / confusion as images."""

    name = "tensorboard"

    def __init__(self) -> None:
        self.writer: Any = None

    def start(self, run_dir: Path, config: dict[str, Any], resumed_epoch: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: events at steps >= the first epoch to redo (written before a kill) are dropped
        self.writer = SummaryWriter(log_dir=str(run_dir / "tb"), purge_step=resumed_epoch + 1 if resumed_epoch else None)
        if not resumed_epoch:
            import yaml

            self.writer.add_text("config", "```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```", 0)
        self.writer.flush()

    def log_epoch(self, epoch: int, scalars: dict[str, float]) -> None:
        for key, value in scalars.items():
            self.writer.add_scalar(key, value, epoch)
        self.writer.flush()

    def finish(self, images: list[Path], files: list[Path]) -> None:
        import numpy as np
        from PIL import Image

        step = None
        for path in images:
            with Image.open(path) as im:
                self.writer.add_image(path.stem, np.asarray(im.convert("RGB")), step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class MlflowTracker(Tracker):
    """An MLflow run: the config as params, the scalars as metrics (step = epoch), files as artifacts.

    Tracking URI: `log.mlflow_uri`, else `MLFLOW_TRACKING_URI`, else a local `./mlruns` folder store.
    """

    name = "mlflow"

    def __init__(self, uri: str | None, experiment: str) -> None:
        self.uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or (Path.cwd() / "mlruns").as_uri()
        self.experiment = experiment
        self.client: Any = None
        self.run_id: str | None = None

    def start(self, run_dir: Path, config: dict[str, Any], resumed_epoch: int) -> None:
        if self.uri.startswith("file:") or "://" not in self.uri:
            # MLflow 3 keeps the folder store in maintenance mode behind this switch; it is what `mlruns/` is
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.client = MlflowClient(tracking_uri=self.uri)
        id_file = run_dir / MLFLOW_RUN_ID_FILE
        if resumed_epoch and id_file.is_file():
            self.run_id = id_file.read_text().strip()
            self.client.update_run(self.run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
        run = self.client.create_run(experiment_id, run_name=run_dir.name, tags={"fgcli.run_dir": str(run_dir)})
        self.run_id = run.info.run_id
        from fgcli.io import atomic_write_text

        atomic_write_text(id_file, self.run_id + "\n")
        params = [Param(k, str(v)[:6000]) for k, v in flatten(config).items()]
        for i in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[i:i + 100])

    def log_epoch(self, epoch: int, scalars: dict[str, float]) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(_mlflow_key(k), float(v), now, epoch) for k, v in scalars.items()]
        self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, images: list[Path], files: list[Path]) -> None:
        for path in [*files, *images]:
            self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, status="FINISHED")


def _mlflow_key(key: str) -> str:
    """MLflow keys allow letters, digits, `_-./ ` and spaces only."""
    return "".join(c if c.isalnum() or c in "_-./ " else "_" for c in key)


def check_loggers(names: list[str]) -> list[str]:
    """The requested logger names, checked: known, and their package installed (else a one-line error)."""
    import importlib.util

    from fgcli.errors import unknown_choice

    out = []
    for name in names:
        key = name.strip().lower()
        if key not in LOGGERS:
            raise unknown_choice("logger (--logger)", name, LOGGERS)
        module = "torch.utils.tensorboard" if key == "tensorboard" else "mlflow"
        probe = "tensorboard" if key == "tensorboard" else module
        if importlib.util.find_spec(probe) is None:
            raise UserError(f"--logger {key} needs the '{LOGGERS[key]}' package: pip install \"fgcli[{key}]\"")
        if key not in out:
            out.append(key)
    return out


class Trackers:
    """The run's trackers; every call is guarded so that a failing tracker only warns, once, and stops."""

    def __init__(self, names: list[str], mlflow_uri: str | None = None, mlflow_experiment: str = "fgcli") -> None:
        self.active: list[Tracker] = []
        for name in names:
            self.active.append(TensorBoardTracker() if name == "tensorboard"
                               else MlflowTracker(mlflow_uri, mlflow_experiment))

    def _each(self, call: Callable[[Tracker], Any], what: str) -> None:
        for tracker in list(self.active):
            try:
                call(tracker)
            except Exception as e:  # tracking must never cost a training
                log.warning(f"{tracker.name} {what} failed ({type(e).__name__}: {e}); {tracker.name} tracking is "
                            "off for the rest of this run")
                self.active.remove(tracker)
                try:
                    tracker.close()
                except Exception:
                    pass

    def start(self, run_dir: Path, config: dict[str, Any], resumed_epoch: int) -> None:
        self._each(lambda t: t.start(run_dir, config, resumed_epoch), "start")

    def log_epoch(self, epoch: int, row: dict[str, Any], lrs: dict[str, float]) -> None:
        # "lr" (the base rate) becomes "lr/base" beside "lr/<group>": a file store cannot hold both "lr" and "lr/x"
        scalars = {("lr/base" if k == "lr" else k): float(v) for k, v in row.items()
                   if k not in ("epoch", "time") and _is_number(v)}
        scalars.update({f"lr/{name}": lr for name, lr in lrs.items()})
        self._each(lambda t: t.log_epoch(epoch, scalars), f"logging epoch {epoch}")

    def finish(self, run_dir: Path) -> None:
        images = [p for p in (run_dir / "results.png", run_dir / "confusion_matrix.png") if p.is_file()]
        files = [p for p in (run_dir / "args.yaml", run_dir / "results.csv", run_dir / "weights" / "best.pt")
                 if p.is_file()]
        self._each(lambda t: t.finish(images, files), "upload at the end")

    def close(self) -> None:
        self._each(lambda t: t.close(), "close")
        self.active = []


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def group_lrs(optimizer: Any) -> dict[str, float]:
    """The current lr of each named parameter group (decay / no-decay halves share a name)."""
    out: dict[str, float] = {}
    for i, group in enumerate(optimizer.param_groups):
        out.setdefault(str(group.get("name", f"group{i}")), float(group["lr"]))
    return out
