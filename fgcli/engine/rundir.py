"""The run folder: runs/train/exp, exp2, ... and its results.csv."""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from typing import Any

from fgcli.errors import UserError
from fgcli.io import atomic_write_text


def increment_path(project: str | Path, name: str, exist_ok: bool = False) -> Path:
    """`project/name` if it does not exist (or exist_ok), else the first free `project/name2`, `name3`, ..."""
    base = Path(project) / name
    if exist_ok or not base.exists():
        return base
    match = re.fullmatch(r"(.*?)(\d+)", name)
    stem, start = (match.group(1), int(match.group(2)) + 1) if match and match.group(1) else (name, 2)
    for i in range(start, start + 10000):
        candidate = Path(project) / f"{stem}{i}"
        if not candidate.exists():
            return candidate
    raise UserError(f"too many runs named {name} in {project}; pass --name or clean up old runs.")


def find_latest_last(project: str | Path) -> Path:
    """The most recently written `*/weights/last.pt` under `project` (for a bare --resume)."""
    candidates = sorted(Path(project).glob("*/weights/last.pt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise UserError(f"--resume: no run with weights/last.pt under {project}. Give a run folder or a .pt file.")
    return candidates[-1]


def resolve_resume_path(value: str, project: str | Path) -> Path:
    """A run folder, a .pt file, or "auto" (the latest run under `project`) -> the checkpoint to resume."""
    if value in ("", "auto", "last"):
        return find_latest_last(project)
    path = Path(value)
    if path.is_dir():
        for candidate in (path / "weights" / "last.pt", path / "last.pt"):
            if candidate.is_file():
                return candidate
        raise UserError(f"--resume {path}: no weights/last.pt in this folder. Give a run folder from "
                        "`fgcli train` or a .pt file.")
    if not path.exists():
        raise UserError(f"--resume {path} does not exist. Give a run folder (runs/train/exp) or a .pt file.")
    return path


def results_columns(rows: list[dict[str, Any]]) -> list[str]:
    """Stable column order: epoch, time, lr, train/*, val/top1, val/top5, val/<head>/*, epoch_time."""
    seen: list[str] = []
    for row in rows:
        for key in row:
            if key not in seen:
                seen.append(key)
    head = [k for k in ("epoch", "time", "lr") if k in seen]
    train = [k for k in seen if k.startswith("train/")]
    train = [k for k in train if k not in ("train/skipped",)] + (["train/skipped"] if "train/skipped" in train else [])
    val = [k for k in ("val/top1", "val/top5") if k in seen]
    val_heads = [k for k in seen if k.startswith("val/") and k not in val]
    tail = [k for k in seen if k not in head + train + val + val_heads]
    tail = [k for k in tail if k != "epoch_time"] + (["epoch_time"] if "epoch_time" in seen else [])
    return head + train + val + val_heads + tail


def write_results_csv(rows: list[dict[str, Any]], path: str | Path) -> None:
    """Rewrite results.csv atomically from all rows (so a resumed run never duplicates an epoch)."""
    columns = results_columns(rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(v) for k, v in row.items()})
    atomic_write_text(path, buf.getvalue())


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def read_results_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a results.csv as dicts of strings."""
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def default_out_dir(checkpoint: Path, project: str | Path = "runs/eval") -> Path:
    """runs/eval/<run name> (or the checkpoint's stem), incremented so that earlier reports stay."""
    name = checkpoint.parent.parent.name if checkpoint.parent.name == "weights" else checkpoint.stem
    return increment_path(project, name or "exp")


def patience_spent(epoch: int, best_epoch: int | None, patience: int) -> bool:
    """`train.patience` (0 = off) epochs have passed since the best val top-1's epoch."""
    return bool(patience) and best_epoch is not None and epoch - best_epoch >= patience


def early_stop_reason(stop: dict[str, Any]) -> str:
    """A checkpoint's `early_stop` record in words."""
    return (f"val top-1 had not improved for {stop['patience']} epoch(s) since epoch {stop['best_epoch']} "
            f"(train.patience {stop['patience']})")


def end_of_run_done(ckpt: dict[str, Any], best: Path) -> bool:
    """Whether a run whose epochs are all done (`epochs_left` is False) also did its end-of-run work: when it
    validated, best.pt is written and holds its calibration. A kill during that work (confusion matrix and
    calibration) leaves it undone, and `fgcli train --resume` then does only that work."""
    import torch

    validated = any(row.get("val/top1") not in (None, "") for row in ckpt.get("history") or [])
    if not validated:
        return True
    return best.is_file() and "calibration" in torch.load(best, map_location="cpu", weights_only=True)


def epochs_left(ckpt: dict[str, Any]) -> bool:
    """Whether the run of a last.pt has epochs left to train: not when every epoch is done, nor when
    `train.patience` stopped it early (its `early_stop` record)."""
    return not ckpt.get("early_stop") and int(ckpt["epoch"]) < int(ckpt["config"]["train"]["epochs"])
