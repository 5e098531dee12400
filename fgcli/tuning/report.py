"""What a study leaves: one row per trial (trials.csv), the best trial as a recipe YAML for `fgcli train
--recipe`, and Optuna's parameter-importance and history plots as PNGs."""

from __future__ import annotations

import csv
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fgcli.console import log
from fgcli.io import atomic_write_text
from fgcli.tuning.space import decode, encode
from fgcli.tuning.storage import origin_of


@dataclass
class TrialRow:
    """One trial of a study, as the table shows it."""

    number: int  # the trial's number (a trial continued after a kill keeps the number it started under)
    state: str  # complete, pruned, failed, running, waiting
    value: float | None  # best val top-1 % (pruned: its last reported val top-1)
    params: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = None  # epochs trained
    time_s: float | None = None  # training time (all its runs, resumed ones included)
    run_dir: str = ""
    note: str = ""  # the start trial, a resumed one, a failure's reason

    @property
    def pruned(self) -> bool:
        return self.state == "pruned"


def trial_rows(study: Any) -> list[TrialRow]:
    """The study's trials, each once: a trial killed (or interrupted) and queued again shows as its last run,
    under the number it started with."""
    from optuna.trial import TrialState

    states = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed",
              TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
    groups: dict[int, list[Any]] = {}
    for t in study.get_trials(deepcopy=False):
        groups.setdefault(origin_of(t), []).append(t)
    rows = []
    for number, runs in sorted(groups.items()):
        t = max(runs, key=lambda u: u.number)
        notes = []
        if t.user_attrs.get("fgcli_origin") == "recipe":
            notes.append("the recipe")
        if len(runs) > 1:
            notes.append(f"resumed as #{t.number}")
        if "fgcli_error" in t.user_attrs:
            notes.append(str(t.user_attrs["fgcli_error"]))
        elif t.state == TrialState.FAIL:
            notes.append("killed or interrupted; not queued again")
        rows.append(TrialRow(
            number=number, state=states.get(t.state, str(t.state)), value=t.value if t.values else None,
            params={k: decode(v) for k, v in t.params.items()}, epochs=t.user_attrs.get("fgcli_epochs"),
            time_s=t.user_attrs.get("fgcli_time_s"), run_dir=str(t.user_attrs.get("fgcli_run_dir", "")),
            note="; ".join(notes)))
    return rows


def best_trial(study: Any) -> Any | None:
    """The complete trial with the highest val top-1 (ties: the earlier one), or None."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def write_trials_csv(rows: list[TrialRow], keys: list[str], path: Path) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["trial", "state", "val_top1", *keys, "epochs", "time_s", "note", "run_dir"])
    for r in rows:
        writer.writerow([r.number, r.state, "" if r.value is None else f"{r.value:.4f}",
                         *[encode(r.params[k]) if k in r.params else "" for k in keys],
                         "" if r.epochs is None else r.epochs, "" if r.time_s is None else r.time_s, r.note,
                         r.run_dir])
    atomic_write_text(path, buf.getvalue())


def write_best_recipe(study: Any, path: Path, header: list[str]) -> bool:
    """The best complete trial's config as a recipe YAML (what it ran, the keys that differ from the defaults);
    False when no trial completed."""
    best = best_trial(study)
    if best is None or "fgcli_recipe" not in best.user_attrs:
        return False
    lines = [f"# {line}" for line in header]
    lines.append(f"# trial #{best.number}: val top-1 {best.value:.2f} % (chosen on the validation split; the test "
                 "split was not read)")
    if best.params:
        shown = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.params.items()]
        lines.append("# searched values as sampled (below: what the trial ran): " + ", ".join(shown))
    lines.append(f"#   fgcli train --recipe {path} --data DATA")
    text = "\n".join(lines) + "\n" + yaml.safe_dump(best.user_attrs["fgcli_recipe"], sort_keys=False)
    atomic_write_text(path, text)
    return True


def write_plots(study: Any, out_dir: Path) -> dict[str, Path]:
    """Optuna's optimization history and (with 2+ complete trials and searched keys) parameter importances,
    as PNGs; a plot that cannot be drawn is a warning, never an error."""
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as vis

    from fgcli.engine.plots import _pyplot, _save

    plt = _pyplot()  # the engine's headless backend

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    plots: dict[str, Any] = {"history": ("optimization_history.png", vis.plot_optimization_history)}
    if len(complete) >= 2 and any(t.params for t in complete):
        plots["importance"] = ("param_importances.png", vis.plot_param_importances)
    written: dict[str, Path] = {}
    for name, (filename, plot) in plots.items():
        try:
            with warnings.catch_warnings():  # experimental API; equal importances on a tiny study
                warnings.simplefilter("ignore")
                ax = plot(study, target_name="val top-1 %")
            figure = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            figure.tight_layout()
            _save(figure, out_dir / filename)
            plt.close(figure)
            written[name] = out_dir / filename
        except Exception as e:  # e.g. every trial has the same value: no importance to compute
            log.warning(f"could not draw {filename}: {type(e).__name__}: {e}")
    return written

