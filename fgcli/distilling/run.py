"""`fgcli distill`: resolve the student's config (fresh, or resumed with its own teacher), load the teacher, train.

The student is an ordinary baseline run (its own run folder under runs/distill/, args.yaml with the `distill`
section, best.pt / last.pt with a `distill` entry naming the teacher), so eval, calibrate, export, predict and viz
take it as they take any checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgcli.console import log
from fgcli.engine import distributed as D
from fgcli.engine.trainer import RunRequest, TrainResult, resolve_run, train
from fgcli.errors import UserError

#: the student when neither --recipe, --config nor --student says otherwise: one small backbone at a small input
DEFAULT_RECIPE = "baseline_lite0_128"
DEFAULT_PROJECT = "runs/distill"


@dataclass
class DistillResult(TrainResult):
    """A finished distillation run: the TrainResult of the student, plus the teacher's record."""

    teacher: dict[str, Any] = field(default_factory=dict)


def run_distill(teacher: str | Path | None = None, *, recipe: str | None = None, config_file: str | None = None,
                flags: dict[str, Any] | None = None, overrides: list[str] | None = None,
                resume: str | None = None) -> DistillResult:
    """Distil `teacher` (a .pt, a run folder, or an .onnx) into the baseline student the config describes, or
    resume a distillation run with the teacher it started with."""
    from fgcli.distilling.task import DistillLoss
    from fgcli.distilling.teacher import load_teacher

    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    if resume is None:
        run = _fresh(teacher, recipe, config_file, flags, overrides)
    else:
        run = resolve_run(flags=flags, overrides=overrides, resume=resume, default_project=DEFAULT_PROJECT)
        _check_resumed(run, teacher)
    cfg = run.cfg
    if cfg.method != "baseline":
        raise UserError(f"fgcli distill trains a baseline student, but the config's method is '{cfg.method}' (from "
                        "--recipe, --config or --set method=...). Use a baseline recipe, or --student BACKBONE.")
    assert cfg.distill.teacher
    loaded = load_teacher(cfg.distill.teacher)
    stored = (run.resume or {}).get("distill") or {}
    if stored.get("sha256") and stored["sha256"] != loaded.sha256:
        raise UserError(f"--resume: teacher {loaded.path} changed since the run started (its SHA-256 differs), so the "
                        "run would not continue as it began. Restore that file, or start a new run.")
    loss = DistillLoss(loaded, cfg.distill.alpha, cfg.distill.temperature)
    if D.launched_rank() == 0:
        log.info(f"distilling teacher {loaded.line()} into baseline on {cfg.model.backbone}: alpha "
                 f"{loss.alpha:g}, T {loss.temperature:g}")
    result = train(cfg, resume=run.resume, run_dir=run.run_dir, explicit=run.explicit, step_loss=loss)
    return DistillResult(**vars(result), teacher=loss.record())


def _fresh(teacher: str | Path | None, recipe: str | None, config_file: str | None, flags: dict[str, Any],
           overrides: list[str] | None) -> RunRequest:
    """A new run: TEACHER as distill.teacher (else the --config's), under runs/distill unless --project or
    --config says otherwise."""
    from fgcli.config import flatten, parse_overrides, resolve_config

    if config_file is None:  # a --config keeps its own run folder (it reproduces that run)
        flags.setdefault("train.project", DEFAULT_PROJECT)
    if teacher is not None:
        flags["distill.teacher"] = str(_teacher_path(teacher))
    chosen = set(flags) | set(flatten(parse_overrides(overrides)))
    if recipe is None and config_file is None and "model.backbone" not in chosen:
        if resolve_config(None, None, flags, overrides).data.path != "demo":  # the demo has its own CPU recipe
            recipe = DEFAULT_RECIPE
    run = resolve_run(recipe=recipe, config_file=config_file, flags=flags, overrides=overrides)
    if not run.cfg.distill.teacher:
        raise UserError("fgcli distill needs the teacher: give TEACHER (its checkpoint, run folder or .onnx), e.g. "
                        "fgcli distill runs/train/exp/weights/best.pt --data DATA.")
    return run


def _teacher_path(teacher: str | Path) -> Path:
    """The teacher file as stored in the config: absolute, a run folder's weights/best.pt."""
    path = Path(teacher)
    if path.is_dir() and (path / "weights" / "best.pt").is_file():
        path = path / "weights" / "best.pt"
    return path.resolve() if path.exists() else path


def _check_resumed(run: RunRequest, teacher: str | Path | None) -> None:
    saved = run.cfg.distill.teacher
    if not saved:
        raise UserError(f"--resume {run.resumed_from}: this run was not distilled (its config has no "
                        "distill.teacher); continue it with `fgcli train --resume`.")
    if teacher is not None and str(_teacher_path(teacher)) != saved:
        raise UserError(f"--resume continues with the run's own teacher {saved}; drop TEACHER (or start a new run "
                        "without --resume to distil another one).")
