"""`fgcli tune` end to end on tiny runs (test_resnet, 32 px, 4 demo classes): the trials, pruning, the start
trial, resume after Ctrl-C, the best recipe training again, a study's refusals, and no trial ever opening the
test split."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml

import fgcli
from fgcli.config import flatten, resolve_config
from fgcli.engine.checkpoint import load_checkpoint
from fgcli.engine.rundir import read_results_csv
from fgcli.errors import UserError
from fgcli.tuning.run import TuneResult
from fgcli.tuning.trial import RUN_KEYS

TINY = {"backbone": "test_resnet", "img_size": 32, "batch_size": 8, "workers": 0, "device": "cpu"}
TINY_DATA = ["data.demo_size=32", "data.demo_classes=4", "data.demo_per_class=8", "data.val_fraction=0.25"]


class PruneLaterTrials(optuna.pruners.BasePruner):
    """Stops every trial but the first after its second epoch (a deterministic stand-in for the median)."""

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.number > 0 and (trial.last_step or 0) >= 2


@pytest.fixture
def no_test_split(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Fail if anything asks the data set for its test split; record every image a loader opens."""
    from fgcli.data.dataset import ManifestDataset
    from fgcli.data.manifest import PreparedDataset

    opened: list[str] = []
    real_load, real_split = ManifestDataset.load, PreparedDataset.split

    def load(self, index):
        opened.append(str(self.source_root / self.samples[index].path))
        return real_load(self, index)

    def split(self, name):
        assert name != "test", "a trial asked for the test split"
        return real_split(self, name)

    monkeypatch.setattr(ManifestDataset, "load", load)
    monkeypatch.setattr(PreparedDataset, "split", split)
    return opened


def _flat_args(run_dir: Path) -> dict:
    return flatten(yaml.safe_load((run_dir / "args.yaml").read_text()))


def test_a_tiny_study_prunes_starts_from_the_recipe_and_never_reads_test(tmp_path: Path, no_test_split) -> None:
    result = fgcli.tune("baseline", "demo", trials=3, epochs=3, pruner=PruneLaterTrials(), project=str(tmp_path),
                        set=TINY_DATA, **TINY)
    trials = result.tune_dir / "trials"
    assert [(r.number, r.state, r.epochs) for r in result.rows] == [(0, "complete", 3), (1, "pruned", 2),
                                                                     (2, "pruned", 2)]
    # a pruned trial stopped cleanly after its second epoch: two rows, last.pt at epoch 2, no calibration pass
    assert len(read_results_csv(trials / "trial_001" / "results.csv")) == 2
    assert load_checkpoint(trials / "trial_001" / "weights" / "last.pt")["epoch"] == 2
    assert not (trials / "trial_001" / "confusion_matrix.png").exists()
    assert (trials / "trial_000" / "confusion_matrix.png").is_file()
    # trial 0 is the recipe as given: every searched key holds the starting config's value (a null backbone lr
    # scale stands for the method's default, 1.0 for the baseline)
    base = resolve_config(None, None, {"method": "baseline", "model.backbone": "test_resnet", "train.epochs": 3,
                                       "data.img_size": 32, "train.batch_size": 8}, TINY_DATA)
    expected = {k: _get(base, k) for k in result.keys}
    assert expected.pop("optim.backbone_lr_scale") is None
    ran = _flat_args(trials / "trial_000")
    assert ran["optim.backbone_lr_scale"] == 1.0 and all(ran[k] == v for k, v in expected.items()), ran
    assert "train.epochs" not in result.keys  # given by --epochs: fixed
    assert result.best is not None and result.best.number == 0
    # no loader ever opened a test image
    from fgcli.data.prepare import resolve_data

    dataset = resolve_data(base.data)
    test_images = {str(dataset.source_root / s.path) for s in dataset.splits["test"]}
    assert no_test_split and test_images and not test_images & set(no_test_split)
    # the outputs
    rows = (result.tune_dir / "trials.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("trial,state,val_top1,")
    assert result.files["history"].is_file() and result.files["history"].stat().st_size > 1000
    # the best recipe trains with `fgcli train --recipe` and reproduces the best trial's config
    recipe = result.files["best_recipe"]
    assert "chosen on the validation split" in recipe.read_text()
    again = fgcli.train(recipe=str(recipe), project=str(tmp_path / "again"), workers=0, device="cpu")
    mine, theirs = _flat_args(again.run_dir), _flat_args(trials / "trial_000")
    assert {k: v for k, v in mine.items() if k not in RUN_KEYS and not k.startswith("log.")} == \
        {k: v for k, v in theirs.items() if k not in RUN_KEYS and not k.startswith("log.")}


def _get(cfg, key: str):
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


def test_ctrl_c_mid_trial_then_rerun_resumes_it_from_its_last_pt(tmp_path: Path, monkeypatch) -> None:
    from fgcli.engine.trainer import Trainer

    real = Trainer._save_epoch
    fired = []

    def save(self, epoch, improved):
        real(self, epoch, improved)
        if self.run_dir.name == "trial_001" and epoch == 1 and not fired:
            fired.append(epoch)
            raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "_save_epoch", save)
    args = dict(trials=3, epochs=2, pruner="none", project=str(tmp_path), set=TINY_DATA, heartbeat=1, **TINY)
    with pytest.raises(KeyboardInterrupt):
        fgcli.tune("baseline", "demo", **args)
    folder = next(tmp_path.iterdir()) / "trials"
    first_row = read_results_csv(folder / "trial_001" / "results.csv")
    assert len(first_row) == 1
    result = fgcli.tune("baseline", "demo", **args)
    assert [(r.number, r.state) for r in result.rows] == [(0, "complete"), (1, "complete"), (2, "complete")]
    assert "resumed as #3" in result.rows[1].note
    rows = read_results_csv(folder / "trial_001" / "results.csv")
    assert len(rows) == 2 and rows[0] == first_row[0]  # continued (a rerun would have another time column)
    assert sorted(p.name for p in folder.iterdir()) == ["trial_000", "trial_001", "trial_002"]
    # the same command once more finds nothing left to do
    assert fgcli.tune("baseline", "demo", **args).ran_here == 0


def test_a_budget_starts_no_trial_after_it_is_spent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Each trial takes a (fake) minute, so the 30 s budget is spent after the first one however fast the CPU is
    # (a real clock let a fast CPU finish the tiny recipe trial inside the budget and start a second).
    from fgcli.tuning import worker

    real_run_one, real_clock, skipped = worker._run_one, worker.time.monotonic, [0.0]

    def one_minute_trial(*args, **kwargs):  # type: ignore[no-untyped-def]
        ok = real_run_one(*args, **kwargs)
        skipped[0] += 60.0
        return ok

    monkeypatch.setattr(worker, "_run_one", one_minute_trial)
    monkeypatch.setattr(worker.time, "monotonic", lambda: real_clock() + skipped[0])
    result = fgcli.tune("baseline", "demo", budget=30, epochs=1, project=str(tmp_path), set=TINY_DATA, **TINY)
    assert result.ran_here == 1 and [r.state for r in result.rows] == ["complete"]  # the recipe, then time is up


def test_the_default_pruners_are_optunas_on_epochs() -> None:
    from fgcli.tuning.run import make_pruner

    median = make_pruner("median", 20)
    assert isinstance(median, optuna.pruners.MedianPruner)
    assert (median._n_startup_trials, median._n_warmup_steps) == (5, 2)  # epoch 1 is never pruned
    assert isinstance(make_pruner("halving", 20), optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(make_pruner("none", 20), optuna.pruners.NopPruner)
    with pytest.raises(UserError, match="unknown --pruner 'hyperband'"):
        make_pruner("hyperband", 20)


def test_an_existing_study_with_another_method_or_space_is_refused(tmp_path: Path) -> None:
    args = dict(trials=1, epochs=1, project=str(tmp_path), study="s", set=TINY_DATA, **TINY)
    fgcli.tune("baseline", "demo", **args)
    storage = f"sqlite:///{tmp_path / 's' / 'study.db'}"
    with pytest.raises(UserError, match="study 's' in sqlite:///.*was made for method baseline, not herbs"):
        fgcli.tune("herbs", "demo", storage=storage, **{**args, "set": [*TINY_DATA, "herbs.fpn_size=8"]})
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: {low: 0.001, high: 0.1, log: true}\n")
    with pytest.raises(UserError, match="was made with another search space .*rerun with the same recipe, --space and flags"):
        fgcli.tune("baseline", "demo", space=space, storage=storage, **args)
    with pytest.raises(UserError, match=r"was made with another fixed settings \(differs in train.epochs\)"):
        fgcli.tune("baseline", "demo", storage=storage, **{**args, "epochs": 2})
    with pytest.raises(UserError, match="holds study 's'; pass --name"):
        fgcli.tune("baseline", "demo", **{**args, "study": "other", "name": "s"})


@pytest.mark.parametrize("url,shown", [("postgresql://fgcli:secret@127.0.0.1:9/none", "postgresql://fgcli:***@"),
                                       ("sqlite:////no/such/folder/study.db", "sqlite:////no/such")])
def test_an_unreachable_storage_is_one_line(tmp_path: Path, url: str, shown: str) -> None:
    with pytest.raises(UserError) as info:
        fgcli.tune("baseline", "demo", trials=1, epochs=1, storage=url, project=str(tmp_path), set=TINY_DATA, **TINY)
    message = str(info.value)
    assert f"--storage {shown}" in message and "cannot be reached" in message
    assert "secret" not in message and "\n" not in message
    assert not any(tmp_path.iterdir())  # refused before anything was written


def test_the_verdict_is_shown_only_when_the_best_range_lies_above_every_other() -> None:
    from fgcli.tuning.compare import ArmResult, CompareResult, SeedRun, _verdict

    def arm(name: str, tests: list[float], val: float | None = None) -> ArmResult:
        tune = TuneResult(study=name, storage="", tune_dir=Path(), method="baseline", plan=[])
        val = val if val is not None else {"a": 60.0, "b": 55.0}.get(name, 50.0)  # a: the highest val mean
        return ArmResult(name, tune, [SeedRun(i, Path(), val, t) for i, t in enumerate(tests)])

    shown = CompareResult("c", Path(), [], arms=[arm("a", [80, 82, 81]), arm("b", [75, 79.5, 77])])
    _verdict(shown)
    assert shown.best == "a" and shown.shown and shown.verdict.endswith(": shown")
    overlap = CompareResult("c", Path(), [], arms=[arm("a", [80, 85, 81]), arm("b", [75, 80.5, 77]),
                                                  arm("c", [60, 61, 62])])
    _verdict(overlap)
    assert overlap.best == "a" and not overlap.shown and "overlaps that of b: not shown" in overlap.verdict
    assert arm("a", [80, 85, 81]).stats("test") == pytest.approx((82.0, 80.0, 85.0))
    # the best arm is the one with the highest val mean, whatever the test split says: test judges, never picks
    picked = CompareResult("c", Path(), [], arms=[arm("a", [80, 82, 81], val=55.0), arm("b", [75, 79.5, 77], val=60.0)])
    _verdict(picked)
    assert picked.best == "b" and not picked.shown and "b has the highest val mean" in picked.verdict
    # one seed per arm: the ranges are points, so "above" would only restate the ranking
    single = CompareResult("c", Path(), [], arms=[arm("a", [80]), arm("b", [75, 76])])
    _verdict(single)
    assert single.best == "a" and not single.shown and not single.tested and "not tested" in single.verdict


def test_comparison_csv_names_each_arms_recipe_best_trial_and_the_verdict(tmp_path: Path) -> None:
    import csv
    import json

    from fgcli.tuning.compare import ArmResult, CompareResult, SeedRun, _verdict, write_tables
    from fgcli.tuning.report import TrialRow

    def arm(name: str, recipe: str | None, tests: list[float], best: TrialRow | None) -> ArmResult:
        rows = [best] if best else []
        tune = TuneResult(study=name, storage="", tune_dir=Path(), method="baseline", plan=[], rows=rows, best=best)
        return ArmResult(name, tune, [SeedRun(i, Path(), 50.0 + i, t) for i, t in enumerate(tests)], recipe)

    best = TrialRow(3, "complete", 61.25, {"optim.lr": 0.0025, "herbs.num_selects": [0.25, 0.5], "a.b": True})
    result = CompareResult("c", tmp_path, ["plan"], arms=[arm("herbs", "herbs_lite0_128", [80, 82, 81], best),
                                                          arm("mine", None, [70, 71, 72], None)])
    _verdict(result)
    rows = list(csv.DictReader(write_tables(result, tmp_path)["csv"].read_text().splitlines()))
    assert rows[0]["arm"] == "herbs" and rows[0]["recipe"] == "herbs_lite0_128" and rows[0]["best_trial"] == "3"
    assert json.loads(rows[0]["best_params"]) == {"optim.lr": 0.0025, "herbs.num_selects": [0.25, 0.5], "a.b": True}
    assert rows[0]["test_mean"] == "81.0000" and rows[0]["val_max"] == "52.0000" and rows[0]["verdict"] == "shown"
    assert rows[1]["recipe"] == rows[1]["best_trial"] == rows[1]["best_params"] == rows[1]["verdict"] == ""
    one = CompareResult("c", tmp_path, ["plan"], arms=[arm("herbs", "herbs_lite0_128", [80], best),
                                                       arm("mine", None, [70], None)])
    _verdict(one)
    rows = list(csv.DictReader(write_tables(one, tmp_path)["csv"].read_text().splitlines()))
    assert rows[0]["verdict"] == "not tested" and rows[1]["verdict"] == ""
    assert rows[0]["trials_complete"] == "1" and rows[1]["search_best_val"] == ""


@pytest.mark.slow
def test_an_equal_budget_comparison_confirms_each_best_recipe_on_test(tmp_path: Path) -> None:
    recipes = []
    for name, lr in (("tiny_a", 0.05), ("tiny_b", 0.01)):
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"method: baseline\nmodel: {{backbone: test_resnet}}\noptim: {{lr: {lr}}}\n"
                        "train: {epochs: 2, batch_size: 8}\ndata: {img_size: 32, workers: 0}\n")
        recipes.append(str(path))
    result = fgcli.tune(data="demo", recipes=recipes, trials=2, seeds=2, project=str(tmp_path / "runs"),
                        set=TINY_DATA, device="cpu", workers=0)
    assert [a.arm for a in result.arms] == ["tiny_a", "tiny_b"]
    for arm in result.arms:
        assert [r.state for r in arm.tune.rows] == ["complete", "complete"]
        assert [s.seed for s in arm.seeds] == [1, 2]  # seeds the search (seed 0) did not use
        for run in arm.seeds:
            metrics = yaml.safe_load((run.run_dir / "test" / "metrics.json").read_text())
            assert metrics["split"] == "test" and metrics["top1"] == pytest.approx(run.test_top1, abs=1e-3)
            assert int(_flat_args(run.run_dir)["train.epochs"]) <= 4  # the same maximum: 2x the recipes' 2
    assert result.best in ("tiny_a", "tiny_b") and result.verdict.endswith("shown")
    table = result.files["markdown"].read_text()
    assert "| tiny_a | 2 / 0 |" in table and "Verdict:" in table


def _draws(tmp_path: Path, seed: int, interrupt_at: int | None = None, startup: int = 10) -> list[float]:
    """The values a 6-trial study (trial 0 the recipe) draws for one key, run as run_study runs it;
    `interrupt_at`: Ctrl-C in that trial, then the study opened again, as a rerun of the command in a new
    process would (a new storage connection and a new sampler), and its worker loop run to the end."""
    from fgcli.tuning.run import seeded_sampler
    from fgcli.tuning.storage import StudySpec, default_url, open_storage, open_study, origin_of
    from fgcli.tuning.worker import work

    tmp_path.mkdir(parents=True)
    spec = StudySpec("s", "baseline", [{"key": "x"}], {"x": 0.5}, 6)
    stop = [interrupt_at]

    def run(trial, frozen) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        if stop[0] == trial.number:
            stop[0] = None
            raise KeyboardInterrupt
        return -((x - 0.3) ** 2)

    for _ in range(2):
        storage = open_storage(default_url(tmp_path), 10)
        study = open_study(storage, spec, seeded_sampler(seed, 0, startup), optuna.pruners.NopPruner(), tmp_path)
        try:
            work(study, storage, run, slots=True, deadline=None, heartbeat=10,
                 sampler_for=lambda number: seeded_sampler(seed, number, startup))
            break
        except KeyboardInterrupt:
            continue
    trials = sorted((t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE),
                    key=origin_of)  # a retry in the place of the trial it continues
    return [t.params["x"] for t in trials]


def test_the_same_seed_draws_the_same_trials_also_after_a_resume(tmp_path: Path) -> None:
    """Two random start-up trials (trial 0 among them), then TPE: every later draw depends on the history, so the
    interrupted trial must resume before any new one and each trial's sampler must be seeded by its number."""
    first = _draws(tmp_path / "a", seed=3, startup=2)
    assert len(first) == 6 and first[0] == 0.5  # trial 0 is the recipe's value
    assert _draws(tmp_path / "b", seed=3, interrupt_at=2, startup=2) == first  # Ctrl-C in trial 2, then a rerun
    assert _draws(tmp_path / "c", seed=4, startup=2)[1:] != first[1:]


def test_startup_trials_end_the_random_draws_sooner(tmp_path: Path) -> None:
    """--startup-trials 2: TPE models the finished trials from trial 2 on; trial 1 is drawn at random either way."""
    default, short = _draws(tmp_path / "a", seed=3), _draws(tmp_path / "b", seed=3, startup=2)
    assert short[:2] == default[:2] and short[2:] != default[2:]
    result = fgcli.tune("baseline", "demo", trials=3, startup_trials=2, dry_run=True, project=str(tmp_path / "t"))
    assert any("draws at random until 2 trials have finished" in line for line in result.plan)
    import inspect

    from fgcli.tuning.run import STARTUP_TRIALS

    assert inspect.signature(fgcli.tune).parameters["startup_trials"].default == STARTUP_TRIALS
