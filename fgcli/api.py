"""The Python API: the same jobs and options as the CLI, returning result objects instead of printing.

    import fgcli

    run = fgcli.train(method="herbs", data="demo", epochs=1)          # -> TrainResult (run_dir, best, history)
    small = fgcli.distill(run.best, data="demo", epochs=1)            # -> DistillResult (a baseline student)
    report = fgcli.evaluate(run.best, data="demo")                    # -> EvalRun (result.top1, files)
    onnx = fgcli.export(run.best, int8=True)                          # -> ExportResult (files, parity, int8)
    preds = fgcli.predict(onnx.files["onnx"], ["bird.jpg"], topk=3)   # -> PredictResult
    model = fgcli.load(onnx.files["onnx"])                            # -> Model
    model.predict("photos/")                                          # -> PredictResult

Each `fgcli <command>` is a thin wrapper over the function of the same name here: it turns flags into the task's
options dataclass (`fgcli.options`), which these functions take as `options=` or build from keywords, and prints
the result. Errors a user can fix raise `fgcli.errors.UserError` with the one-line
message the CLI would print.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fgcli.errors import UserError

if TYPE_CHECKING:
    import numpy as np

    from fgcli.data.manifest import PreparedDataset
    from fgcli.distilling.run import DistillResult
    from fgcli.engine.trainer import TrainResult
    from fgcli.inference import Predictor
    from fgcli.options import (
        BenchOptions,
        CalibrateOptions,
        EvalOptions,
        ExportOptions,
        LoadOptions,
        PredictOptions,
        VizOptions,
    )
    from fgcli.tasks.attention_viz import VizResult
    from fgcli.tasks.bench_formats import BenchReport
    from fgcli.tasks.calibrate_checkpoint import CalibrateResult
    from fgcli.tasks.eval_report import EvalRun
    from fgcli.tasks.export_model import ExportResult
    from fgcli.tasks.predict_images import PredictResult
    from fgcli.tuning.compare import CompareResult
    from fgcli.tuning.run import TuneResult

__all__ = ["Model", "attention_viz", "bench", "calibrate", "distill", "evaluate", "export", "load", "predict",
           "prepare_data", "train", "tune"]


def prepare_data(format: str, src: str | Path | None = None, out: str | Path | None = None, *,
                 val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0, level: str | None = None,
                 strict: bool = False, workers: int | None = None, min_size: int = 16,
                 max_pixels: int | None = None, demo_size: int = 64, demo_classes: int = 10,
                 demo_per_class: int = 150, download: bool = False, url: Sequence[str] | None = None,
                 md5: str | None = None, sha256: str | None = None, classes: str | Path | None = None,
                 exclude_classes: str | Path | None = None) -> PreparedDataset:
    """`fgcli prepare-data FORMAT SRC [--download]`: (download,) check a data set and write its manifest;
    returns the prepared data set (`fgcli.data.pipeline.summary_table(ds)` renders the command's table).
    `classes` / `exclude_classes`: text files with one class name per line to keep / to drop."""
    from fgcli.data.classes import read_class_list
    from fgcli.data.demo import DemoParams
    from fgcli.data.images import DEFAULT_MAX_PIXELS
    from fgcli.data.prepare import PrepareOptions, prepare_dataset

    if (url or md5 or sha256) and not download:
        raise UserError("--url, --md5 and --sha256 only apply with --download.")
    options = PrepareOptions(val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, strict=strict,
                             workers=workers, level=level, min_size=min_size,
                             max_pixels=DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels,
                             classes=read_class_list(classes, "--classes") if classes is not None else None,
                             exclude_classes=(read_class_list(exclude_classes, "--exclude-classes")
                                              if exclude_classes is not None else None),
                             classes_file=str(classes or ""), exclude_classes_file=str(exclude_classes or ""))
    demo = DemoParams(seed=seed, size=demo_size, classes=demo_classes, per_class=demo_per_class)
    if download:
        from fgcli.data.download import download_dataset

        if src is None:
            raise UserError(f"--download needs SRC, the folder to download the {format} data set into.")
        download_dataset(format.lower(), src, urls=url or (), md5=md5, sha256=sha256)
    return prepare_dataset(format.lower(), src, out, options=options, demo=demo)


#: train() keyword -> config key (the first-class flags of `fgcli train`)
TRAIN_FLAGS = {
    "method": "method", "data": "data.path", "backbone": "model.backbone", "epochs": "train.epochs",
    "batch_size": "train.batch_size", "accum_steps": "train.accum_steps", "lr": "optim.lr",
    "img_size": "data.img_size", "workers": "data.workers", "device": "train.device", "amp": "train.amp",
    "ema": "train.ema", "pretrained": "model.pretrained", "pretrained_file": "model.pretrained_file",
    "compile": "model.compile", "seed": "train.seed", "deterministic": "train.deterministic",
    "project": "train.project", "name": "train.name", "exist_ok": "train.exist_ok", "logger": "log.loggers",
}


def train(method: str | None = None, data: str | None = None, *, recipe: str | None = None,
          config: str | None = None, resume: str | None = None,
          set: Sequence[str] | dict[str, Any] | None = None, **flags: Any) -> TrainResult:
    """`fgcli train`: defaults < recipe < config file < flags < `set`; returns where the run went.

    `flags` are the CLI's first-class flags with Python names (backbone, epochs, batch_size, accum_steps, lr,
    img_size, workers, device, amp, ema, pretrained, pretrained_file, compile, seed, deterministic, project,
    name, exist_ok, logger: a list such as ["tensorboard"]); `set` is `--set` as a list of "key=value" strings or a dict {"optim.lr": 0.01}.
    """
    from fgcli.engine.trainer import run_train

    unknown = sorted(set_ for set_ in flags if set_ not in TRAIN_FLAGS)
    if unknown:
        from fgcli.errors import closest

        raise UserError(f"train() got unknown option {unknown[0]!r}.{closest(unknown[0], list(TRAIN_FLAGS))} "
                        "Pass any other config key with set={'section.key': value}.")
    values = {"method": method, "data": data, **flags}
    return run_train(recipe=recipe, config_file=config, flags={TRAIN_FLAGS[k]: v for k, v in values.items()},
                     overrides=_overrides(set), resume=resume)


def distill(teacher: str | Path | None = None, data: str | None = None, *, student: str | None = None,
            recipe: str | None = None, config: str | None = None, resume: str | None = None,
            set: Sequence[str] | dict[str, Any] | None = None, **flags: Any) -> DistillResult:
    """`fgcli distill TEACHER`: train a baseline student (backbone `student`) on the frozen teacher's fused,
    calibrated probabilities plus the labels: (1 - alpha) CE + alpha T^2 KL, `distill.alpha` / `distill.temperature`
    through `set`. `teacher`: a checkpoint, a run folder (its best.pt) or an exported .onnx. Without `recipe`,
    `config` or `student` the student is the `baseline_lite0_128` recipe (on `data="demo"` the demo's). `flags`:
    train()'s keywords (epochs, lr, img_size, seed, project, name, ...; runs go to runs/distill). `resume`: a
    distillation run folder / last.pt, continued with its own teacher. Returns a DistillResult: the TrainResult of
    the student (`.best`, `.history`) and `.teacher`, the record its checkpoints keep under `distill`."""
    from fgcli.distilling.run import run_distill

    if "backbone" in flags:
        raise UserError("distill() takes the student's backbone as student=, not backbone=.")
    unknown = sorted(k for k in flags if k not in TRAIN_FLAGS)
    if unknown:
        from fgcli.errors import closest

        raise UserError(f"distill() got unknown option {unknown[0]!r}.{closest(unknown[0], list(TRAIN_FLAGS))} "
                        "Pass any other config key with set={'section.key': value}.")
    values = {"data": data, "backbone": student, **flags}
    return run_distill(None if teacher is None else str(teacher), recipe=recipe, config_file=config,
                       flags={TRAIN_FLAGS[k]: v for k, v in values.items()}, overrides=_overrides(set),
                       resume=resume)


def tune(method: str | None = None, data: str | None = None, *, recipe: str | None = None,
         config: str | None = None, trials: int | None = None, budget: str | float | None = None,
         space: str | Path | None = None, storage: str | None = None, study: str | None = None,
         pruner: Any = "median", max_epochs: int | None = None, heartbeat: int = 10, dry_run: bool = False,
         startup_trials: int = 10,  # fgcli.tuning.run.STARTUP_TRIALS (not imported here: `import fgcli` stays light)
         recipes: Sequence[str] | None = None, methods: Sequence[str] | None = None, seeds: int = 3,
         set: Sequence[str] | dict[str, Any] | None = None, **flags: Any) -> TuneResult | CompareResult:
    """`fgcli tune`: an Optuna search on the validation split, from a recipe (trial 0 is the recipe as given).

    One study (`method` and/or `recipe`): `trials` and/or `budget` ('2h', '90m' or seconds); `space` a YAML
    file that replaces the method's default search space; `storage` any Optuna database URL (default: a SQLite
    file in the tune folder; several workers may share one study); `pruner` median, halving, none, or an
    Optuna pruner object (it sees each epoch's val top-1 at step = epoch); `startup_trials`: TPE draws at random
    until that many trials have finished (trial 0 among them; a small budget is better spent with fewer). Returns a
    TuneResult (`.rows`, `.best`, `.files["best_recipe"]`, plots). `dry_run`: the plan only, nothing runs.

    A comparison (`recipes` or `methods`, several arms): one study per arm with the same `trials`, pruner and
    maximum epochs, then each arm's best recipe trained with `seeds` seeds and evaluated once on the test
    split. Returns a CompareResult (`.arms`, `.best`, `.shown`, `.tested`: False with fewer than 2 seeds an arm).

    `flags` are train()'s keywords (backbone, epochs, lr, img_size, ...): fixed for every trial, and a key
    given by a flag or `set` is not searched. `project` / `name` place the tune folder (default
    runs/tune/<study>).
    """
    from fgcli.config import flatten, parse_overrides
    from fgcli.engine.runconfig import explicit_keys
    from fgcli.tuning.run import parse_duration

    unknown = sorted(k for k in flags if k not in TRAIN_FLAGS)
    if unknown:
        from fgcli.errors import closest

        raise UserError(f"tune() got unknown option {unknown[0]!r}.{closest(unknown[0], list(TRAIN_FLAGS))} "
                        "Pass any other config key with set={'section.key': value}.")
    project, name = flags.pop("project", None), flags.pop("name", None)
    flags.pop("exist_ok", None)
    values = {"method": method, "data": data, **flags}
    config_flags = {TRAIN_FLAGS[k]: v for k, v in values.items() if v is not None}
    overrides = _overrides(set)
    fixed_by = {TRAIN_FLAGS[k]: f"--{k.replace('_', '-')}" for k, v in flags.items() if v is not None}
    fixed_by.update({key: "--set" for key in flatten(parse_overrides(overrides))})
    common = dict(config_file=config, flags=config_flags, overrides=overrides, fixed_by=fixed_by,
                  explicit=explicit_keys(config_flags, overrides), trials=trials, budget_s=parse_duration(budget),
                  space_file=str(space) if space is not None else None, storage=storage, pruner=pruner,
                  max_epochs=max_epochs, heartbeat=heartbeat, project=project, name=name,
                  startup_trials=startup_trials)
    if recipes or methods:
        from fgcli.tuning.compare import compare

        if recipe is not None or method is not None or study is not None:
            raise UserError("--recipes / --methods compare several arms; drop --recipe, --method and --study.")
        if recipes and methods:
            raise UserError("give --recipes or --methods, not both.")
        return compare(recipes=list(recipes or []), methods=list(methods or []), seeds=seeds, dry_run=dry_run,
                       **common)
    from fgcli.tuning.run import TuneResult, plan_study, run_study

    plan = plan_study(method=method, recipe=recipe, study=study, **common)
    if dry_run:
        return TuneResult(study=plan.study, storage=plan.storage_url, tune_dir=plan.tune_dir, method=plan.method,
                          plan=plan.lines(), keys=plan.space.keys(), dry_run=True)
    return run_study(plan)


def _overrides(items: Sequence[str] | dict[str, Any] | None) -> list[str] | None:
    if items is None or isinstance(items, (list, tuple)):
        return list(items) if items is not None else None
    if isinstance(items, dict):
        import yaml

        return [f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"
                for key, value in items.items()]
    raise UserError(f"set= takes a list of 'key=value' strings or a dict, not {type(items).__name__}.")


def evaluate(model: str | Path, data: str | None = None, options: EvalOptions | None = None,
             **kwargs: Any) -> EvalRun:
    """`fgcli eval MODEL`: any registered model file (fgcli.formats) on a data split: a checkpoint gives the fused
    output and every head, an exported file the fused output; writes the report and returns it (`.result.top1`,
    `.result.heads`, `.files`, `.calibration`, `.confusions`, `.ood`). `options` / keywords: fgcli.options.EvalOptions
    (split, batch_size, device, out, workers, ema, calibration, tta, providers, precision, threads, ood,
    confusions)."""
    from fgcli.options import EvalOptions, build
    from fgcli.tasks.eval_report import eval_model

    if data is not None:
        kwargs["data"] = data
    return eval_model(model, build(EvalOptions, options, kwargs, "evaluate"))


def export(checkpoint: str | Path, options: ExportOptions | None = None, **kwargs: Any) -> ExportResult:
    """`fgcli export CHECKPOINT --format ...`: the fused model in each format asked (`format`: onnx, openvino, ...,
    default onnx; `fp16` / `int8` add variants), every file checked against torch; `.files` by format name.
    `options` / keywords: fgcli.options.ExportOptions (format, out, opset, img_size, dynamic_batch, fp16, int8,
    calib_images, calib_method, int8_max_drop, verify, ema, exporter, providers, threads, calibration, tta)."""
    from fgcli.options import ExportOptions, build
    from fgcli.tasks.export_model import export_checkpoint

    return export_checkpoint(checkpoint, build(ExportOptions, options, kwargs, "export"))


class Model:
    """A loaded model file of any registered format: `predict()` images, or call it on a preprocessed batch."""

    def __init__(self, predictor: Predictor, path: str | Path) -> None:
        self.predictor = predictor
        self.path = str(path)

    @property
    def info(self) -> Any:
        """Classes, preprocessing, method, backbone, precision (a `fgcli.modelinfo.ModelInfo`)."""
        return self.predictor.info

    @property
    def classes(self) -> list[str]:
        return self.predictor.info.classes

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(logits, probs), N x C, for a float32 batch N x 3 x H x W preprocessed as `info.preprocess` says."""
        return self.predictor(images)

    def predict(self, images: str | Path | Sequence[str | Path], options: PredictOptions | None = None,
                progress: Any = None, **kwargs: Any) -> PredictResult:
        """Classify image files, folders (recursively) or globs; unreadable files are listed in `.skipped`.
        Keywords: fgcli.options.PredictOptions (topk, batch_size, workers, out, reject: a prediction below the
        model's rejection threshold is marked `.rejected`, its `.decision` 'unknown')."""
        from fgcli.options import PredictOptions, build
        from fgcli.tasks.predict_images import predict_sources

        return predict_sources(self.predictor, images, build(PredictOptions, options, kwargs, "predict"),
                               model=self.path, progress=progress)

    def __repr__(self) -> str:
        info = self.info
        return (f"fgcli.Model({self.path!r}: {info.method} / {info.backbone}, {len(info.classes)} classes, "
                f"{self.predictor.device})")


def load(path: str | Path, options: LoadOptions | None = None, **kwargs: Any) -> Model:
    """Any registered model file (a checkpoint on torch, an `.onnx` on onnxruntime, ...) ready to predict.
    `options` / keywords: fgcli.options.LoadOptions (device, providers, threads, ema, calibration, tta,
    precision)."""
    from fgcli.formats import load_predictor
    from fgcli.options import LoadOptions, build

    opts = build(LoadOptions, options.load_options() if options is not None else None, kwargs, "load")
    return Model(load_predictor(path, opts), path)


def predict(model: str | Path | Model, images: str | Path | Sequence[str | Path],
            options: PredictOptions | None = None, progress: Any = None, **kwargs: Any) -> PredictResult:
    """`fgcli predict MODEL SOURCE...`: top-k classes per image (and a .csv / .json file with `out`); `reject`:
    'unknown' (`.rejected`) below the model's rejection threshold. `options` / keywords:
    fgcli.options.PredictOptions (topk, batch_size, out, workers, reject, and how MODEL loads: device,
    providers, threads, ema, calibration, tta, precision)."""
    from fgcli.options import PredictOptions, build

    opts = build(PredictOptions, options, kwargs, "predict")
    loaded = model if isinstance(model, Model) else load(model, opts.load_options())
    return loaded.predict(images, opts, progress=progress)


def bench(model: str | Path, options: BenchOptions | None = None, progress: Any = None,
          **kwargs: Any) -> BenchReport:
    """`fgcli bench MODEL`: latency and throughput per format (torch, onnx on each of `providers` with the int8
    file beside MODEL, the other registered formats MODEL can be written to) and batch size, side by side, each
    compared with the first backend on `images` (default: random inputs). Returns a BenchReport: iterate it for
    the rows; `.skipped`, `.notes`, and with `verify` `.failures`. `options` / keywords:
    fgcli.options.BenchOptions."""
    from fgcli.options import BenchOptions, build
    from fgcli.tasks.bench_formats import bench_model

    return bench_model(model, build(BenchOptions, options, kwargs, "bench"), progress=progress)


def attention_viz(checkpoint: str | Path, images: Sequence[str] = (), options: VizOptions | None = None,
                  **kwargs: Any) -> VizResult:
    """`fgcli attention-viz CHECKPOINT [IMAGES]`: attention figures (and map scores) plus an index.html.
    `options` / keywords: fgcli.options.VizOptions."""
    from fgcli.options import VizOptions, build
    from fgcli.tasks.attention_viz import attention_viz as run

    return run(checkpoint, list(images), build(VizOptions, options, kwargs, "attention_viz"))


def calibrate(checkpoint: str | Path, data: str | None = None, options: CalibrateOptions | None = None,
              **kwargs: Any) -> CalibrateResult:
    """`fgcli calibrate RUN_OR_CHECKPOINT`: fit the fused prediction's temperature and the rejection threshold
    keeping `reject_recall` of the val images on the val split and write them into the checkpoint (or `out`)
    atomically; returns the fit (`.record`, the threshold in `.record["reject"]`) and the one it replaced.
    `options` / keywords: fgcli.options.CalibrateOptions."""
    from fgcli.options import CalibrateOptions, build
    from fgcli.tasks.calibrate_checkpoint import calibrate_checkpoint

    if data is not None:
        kwargs["data"] = data
    return calibrate_checkpoint(checkpoint, build(CalibrateOptions, options, kwargs, "calibrate"))
