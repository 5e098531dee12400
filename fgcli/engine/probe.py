"""`fgcli train` for a method fitted on frozen features (`fitted_by = "probe"`: the linear probe).

The frozen backbone's pooled features of the train and val images (eval transform: resize, centre crop;
optionally also the flipped training images) are computed once and cached on disk, keyed by the backbone's
weights, the preprocessing and the data (paths, labels, file sizes and times). A multinomial logistic
regression is fitted to convergence for every L2 weight of `probe.l2_grid` on train, and the val-best one is
kept (fgcli.engine.logreg). The run folder is an ordinary one: args.yaml, results.csv (one row), results.png
(top-1 against the L2 weight), probe.csv (the grid), confusion_matrix.png, log.txt, and weights/best.pt =
last.pt, a baseline-layout checkpoint (backbone + Linear head) that eval, export, predict and calibrate read
like any other, calibrated on val.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from fgcli.config import Config, save_yaml
from fgcli.console import add_file_log, log
from fgcli.engine import distributed as D
from fgcli.engine.setup import (
    backbone_defaults,
    dataset_meta,
    load_dataset,
    seed_everything,
    validation_samples,
)
from fgcli.errors import UserError
from fgcli.io import atomic_save, atomic_write_text

FEATURES_VERSION = 1  # bump when what a cached feature file holds changes


def train_probe(cfg: Config, resume: dict[str, Any] | None = None, run_dir: Path | None = None,
                on_epoch_end: Any = None) -> Any:
    """Fit the probe of `cfg` and write its run folder; returns a TrainResult (one "epoch")."""
    from fgcli.engine.result import TrainResult

    if resume is not None:
        raise UserError(f"--resume: method '{cfg.method}' is fitted in one go, there is nothing to resume. Run "
                        "`fgcli train` again (its features come from the cache).")
    info, device = D.init_distributed(cfg.train.device)
    try:
        if info.enabled:
            raise UserError(f"method '{cfg.method}' fits on one process; run it without torchrun.")
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        seed_everything(cfg.train.seed)
        started = time.perf_counter()
        fitter = _ProbeRun(cfg, device, run_dir)
        try:
            result = fitter.run(started)
        finally:
            fitter.close()
        if on_epoch_end is not None:
            on_epoch_end(1, result.history[-1])
        return TrainResult(result.run_dir, 1, result.best_metric, 1, result.history, config=cfg,
                           classes=result.classes, val_split=cfg.data.val_split, calibration=result.calibration)
    finally:
        D.cleanup_distributed(info)


class _ProbeRun:
    """One probe fit: data, features (cached), the fit, and the run folder."""

    def __init__(self, cfg: Config, device: torch.device, run_dir: Path | None) -> None:
        self.cfg, self.device, self.requested_run_dir = cfg, device, run_dir
        self._file_log: Any = None
        self.calibration: dict[str, Any] | None = None

    def close(self) -> None:
        if self._file_log is not None:
            log.removeHandler(self._file_log)
            self._file_log.close()
            self._file_log = None

    def run(self, started: float) -> Any:
        from fgcli.data.transforms import resolve_preprocess
        from fgcli.methods import build_method

        cfg = self.cfg
        dataset = load_dataset(cfg, D.DistInfo())
        self.classes = list(dataset.classes)
        method = build_method(cfg, len(self.classes))
        pre = resolve_preprocess(cfg.data, backbone_defaults(method))
        fixed = method.input_size
        if fixed is not None and pre.img_size != fixed:
            raise UserError(f"backbone '{cfg.model.backbone}' needs {fixed}x{fixed} inputs, but the preprocessing "
                            f"gives {pre.img_size}. Use --img-size {fixed}.")
        train, val = probe_splits(cfg, dataset)
        self._setup_run_dir()
        log.info(f"probe on {cfg.model.backbone} (frozen) | data {dataset.name} ({len(self.classes)} classes, "
                 f"{len(train)} train / {len(val)} val) | img {pre.img_size} | device {self.device} | run "
                 f"{self.run_dir}. Only data.*, model.* and probe.* apply: no epochs, optimizer or augmentation.")
        method.to(self.device).eval()
        fit, feats, fit_time = fit_head(method, dataset, train, val, pre, cfg, self.device)
        val_y = feats["val_labels"] if val else None
        row = self._results(method, fit, feats, val_y, started, fit_time)
        self._save(method, pre, dataset, len(train), len(val), row, fit)
        if val:
            self._finish(method, feats["val"], val_y)
        else:
            log.warning("no validation split: the model's probabilities stay uncalibrated. Set data.val_fraction > 0.")
        self.best_metric = row.get("val/top1")
        return self

    # ---- the run folder ----
    def _setup_run_dir(self) -> None:
        from fgcli.engine.rundir import increment_path

        cfg = self.cfg
        self.run_dir = Path(self.requested_run_dir or increment_path(cfg.train.project, cfg.train.name,
                                                                     cfg.train.exist_ok))
        self.weights = self.run_dir / "weights"
        self.weights.mkdir(parents=True, exist_ok=True)
        save_yaml(cfg, self.run_dir / "args.yaml")
        self._file_log = add_file_log(self.run_dir / "log.txt")

    def _results(self, method: Any, fit: Any, feats: dict[str, torch.Tensor], val_y: torch.Tensor | None,
                 started: float, fit_time: float) -> dict[str, Any]:
        from fgcli.engine.evaluate import MetricAccumulator

        chosen = fit.chosen
        row: dict[str, Any] = {"epoch": 1, "time": 0.0, "train/loss": chosen.objective,
                               "train/top1": chosen.train_top1, "probe/l2": chosen.l2}
        if val_y is not None:
            acc = MetricAccumulator(len(self.classes))
            acc.update(self._logits(method, feats["val"]), val_y)
            res = acc.result()
            row["val/top1"], row["val/top5"] = res.top1, res.top5
            self.confusion = res.confusion
        row["fit_time"] = fit_time
        row["time"] = row["epoch_time"] = time.perf_counter() - started
        # training images (flipped copies included) over the whole fit, features (or the cache read) included
        row["train_img_s"] = len(feats["train"]) * (2 if self.cfg.probe.flip else 1) / max(row["time"], 1e-9)
        self.history = [row]
        return row

    def _logits(self, method: Any, features: torch.Tensor) -> torch.Tensor:
        """The model's own fused logits for pooled features (its Linear head, as at inference)."""
        with torch.no_grad():
            return method.fuse({"cls": method.classifier(features.to(self.device))}).cpu()

    def _save(self, method: Any, pre: Any, dataset: Any, num_train: int, num_val: int, row: dict[str, Any],
              fit: Any) -> None:
        from fgcli.engine.checkpoint import make_checkpoint, save_checkpoint
        from fgcli.engine.plots import plot_probe
        from fgcli.engine.rundir import write_results_csv
        from fgcli.engine.signals import defer_sigint

        write_results_csv(self.history, self.run_dir / "results.csv")
        atomic_write_text(self.run_dir / "probe.csv", _grid_csv(fit, num_train * (2 if self.cfg.probe.flip else 1)))
        try:
            plot_probe(fit.path, fit.chosen.l2, self.run_dir / "results.png")
        except Exception as e:  # a plotting problem must never lose a checkpoint
            log.warning(f"could not draw results.png: {e}")
        ckpt = make_checkpoint(model=method, cfg=self.cfg, classes=self.classes, preprocess=pre,
                               dataset=dataset_meta(self.cfg, dataset, num_train, num_val), epoch=1,
                               best_metric=row.get("val/top1"), best_epoch=1 if "val/top1" in row else None,
                               history=self.history)
        with defer_sigint():
            if "val/top1" in row:
                save_checkpoint(self.weights / "best.pt", ckpt)
            save_checkpoint(self.weights / "last.pt", ckpt)

    def _finish(self, method: Any, val_x: torch.Tensor, val_y: torch.Tensor) -> None:
        """confusion_matrix.png, and the temperature / rejection threshold fitted on val into both checkpoints."""
        from fgcli.engine.calibration import ScoreBook
        from fgcli.engine.plots import plot_confusion_matrix
        from fgcli.engine.result import store_calibration

        plot_confusion_matrix(self.confusion, self.classes, self.run_dir / "confusion_matrix.png",
                              title=f"{self.cfg.method} best.pt, {self.cfg.data.val_split} split")
        scores = ScoreBook()
        scores.add([self._logits(method, val_x)], val_y)
        for path in (self.weights / "best.pt", self.weights / "last.pt"):
            record = store_calibration(path, scores, split=self.cfg.data.val_split,
                                       reject_recall=self.cfg.train.reject_recall)
            self.calibration = self.calibration or record


def probe_splits(cfg: Config, dataset: Any) -> tuple[list, list]:
    """The train and val samples a probe fit uses; one-line errors when it cannot choose its L2 weight."""
    train, val = dataset.split("train"), validation_samples(cfg, dataset)
    if not train:
        raise UserError(f"data set {cfg.data.path} has no training images (split 'train' is empty).")
    if not val and len(set(cfg.probe.l2_grid)) > 1:
        raise UserError("the probe chooses its L2 weight (probe.l2_grid) on the val split, which is empty. Set "
                        "data.val_fraction > 0 (e.g. --set data.val_fraction=0.2), or give one value: --set "
                        "probe.l2_grid=[1e-4].")
    return train, val


def fit_head(method: Any, dataset: Any, train: list, val: list, pre: Any, cfg: Config,
             device: torch.device) -> tuple[Any, dict[str, torch.Tensor], float]:
    """Fit `method.probe_head()` to convergence on the frozen pooled features of `train` (cached), for every L2
    weight of probe.l2_grid, keep the val-best and copy it into the head. Returns (the fit, the features, seconds
    of the fit)."""
    from fgcli.engine.logreg import select_l2

    head = method.probe_head()
    was_training = method.training
    method.eval()
    feats = cached_features(method, dataset, {"train": train, "val": val}, pre, cfg, device)
    method.train(was_training)
    train_x, train_y = feats["train"], feats["train_labels"]
    if cfg.probe.flip:
        train_x, train_y = torch.cat([train_x, feats["train_flip"]]), torch.cat([train_y, train_y])
    val_x, val_y = (feats["val"], feats["val_labels"]) if val else (None, None)
    grid = list(cfg.probe.l2_grid)
    log.info(f"probe: multinomial logistic regression on {tuple(train_x.shape)} features"
             f"{' (with flipped copies)' if cfg.probe.flip else ''}, L2 grid of {len(set(grid))} on val")
    t0 = time.perf_counter()
    fit = select_l2(train_x, train_y, val_x, val_y, head.out_features, grid, max_iter=cfg.probe.max_iter,
                    tol=cfg.probe.tol, report=lambda f: log.info(_grid_line(f, len(train_x))))
    fit_time = time.perf_counter() - t0
    unconverged = [f for f in fit.path if not f.converged]
    if unconverged:
        log.warning(f"probe: {len(unconverged)} of {len(fit.path)} fits stopped before the gradient reached "
                    f"probe.tol={cfg.probe.tol:g} (largest {max(f.grad_max for f in unconverged):.2g}); raise "
                    "probe.max_iter to converge")
    chosen = fit.chosen
    log.info(f"probe: chose l2 {chosen.l2:.3g}"
             + (f" (val top-1 {chosen.val_top1:.2f}%, NLL {chosen.val_nll:.4f})" if val else "")
             + f" in {fit_time:.1f}s")
    with torch.no_grad():
        head.weight.copy_(fit.weight.to(head.weight))
        head.bias.copy_(fit.bias.to(head.bias))
    return fit, feats, fit_time


def require_probe_head(method: Any, cfg: Config) -> Any:
    """The method's probe-able linear head; a one-line error for `model.head_init=probe` when it has none."""
    head = method.probe_head()
    if head is None:
        raise UserError(f"model.head_init=probe: method '{cfg.method}' has no single linear head on pooled features "
                        "to fit (the baseline has); use model.head_init=random, or model.freeze_epochs=N for a "
                        "head-first phase.")
    return head


def init_head_from_probe(method: Any, dataset: Any, pre: Any, cfg: Config, device: torch.device) -> str:
    """`model.head_init: probe` (LP-FT): the method's linear head starts from the converged linear probe on the
    frozen pretrained features of the run's own data and preprocessing. Returns what was fitted, in words."""
    require_probe_head(method, cfg)
    train, val = probe_splits(cfg, dataset)
    log.info(f"head_init: fitting the head on the frozen {cfg.model.backbone} features of {len(train)} train images "
             f"(val: {len(val)}) before fine-tuning")
    chosen = fit_head(method, dataset, train, val, pre, cfg, device)[0].chosen
    val_part = f", val top-1 {chosen.val_top1:.2f}%" if chosen.val_top1 is not None else ""
    return f"the head starts from the linear probe (L2 {chosen.l2:.3g}{val_part}, train top-1 {chosen.train_top1:.2f}%)"


def _grid_line(fit: Any, n: int) -> str:
    val = f" | val top-1 {fit.val_top1:6.2f}% NLL {fit.val_nll:.4f}" if fit.val_top1 is not None else ""
    state = "converged" if fit.converged else "NOT converged"
    return (f"probe: l2 {fit.l2:.3g} (C {l2_to_sklearn_c(fit.l2, n):.3g}) | train top-1 {fit.train_top1:6.2f}%{val} | "
            f"{fit.iterations} L-BFGS iterations, max |grad| {fit.grad_max:.1e} ({state})")


def _grid_csv(fit: Any, n: int) -> str:
    lines = ["l2,sklearn_C,train_top1,val_top1,val_nll,objective,iterations,grad_max,converged,chosen"]
    for f in fit.path:
        cells = [f"{f.l2:.6g}", f"{l2_to_sklearn_c(f.l2, n):.6g}", f"{f.train_top1:.4f}",
                 "" if f.val_top1 is None else f"{f.val_top1:.4f}", "" if f.val_nll is None else f"{f.val_nll:.6f}",
                 f"{f.objective:.8g}", str(f.iterations), f"{f.grad_max:.3g}", str(f.converged).lower(),
                 str(f is fit.chosen).lower()]
        lines.append(",".join(cells))
    return "\n".join(lines) + "\n"


# ---- features and their cache ------------------------------------------------------------------------------

def cached_features(method: Any, dataset: Any, splits: dict[str, list], pre: Any, cfg: Config,
                    device: torch.device) -> dict[str, torch.Tensor]:
    """Pooled features (N x D, float32) and labels of each split, `train_flip` too with `probe.flip`: read from
    the cache when the key matches, else computed and (with `probe.cache`) stored."""
    flip = bool(cfg.probe.flip)
    key = features_key(method, dataset, splits, pre, cfg)
    path = features_dir() / f"{key}.pt"
    if cfg.probe.cache and path.is_file():
        try:
            cached = torch.load(path, map_location="cpu", weights_only=True)
            if cached.get("key") == key and (not flip or "train_flip" in cached):
                log.info(f"probe: features from the cache {path}")
                return cached
        except Exception as e:  # a damaged cache file is recomputed, never trusted
            log.warning(f"probe: ignoring the unreadable feature cache {path} ({type(e).__name__}); recomputing")
    out: dict[str, Any] = {"key": key}
    for name, samples in splits.items():
        if not samples:
            continue
        t0 = time.perf_counter()
        feats, flipped, labels = extract(method, dataset, samples, pre, cfg, device, flip=flip and name == "train")
        out[name], out[f"{name}_labels"] = feats, labels
        if flipped is not None:
            out[f"{name}_flip"] = flipped
        seconds = time.perf_counter() - t0
        log.info(f"probe: {name} features {tuple(feats.shape)}{' + flipped' if flipped is not None else ''} in "
                 f"{seconds:.1f}s ({len(samples) * (2 if flipped is not None else 1) / max(seconds, 1e-9):.1f} img/s)")
    if cfg.probe.cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save(path, lambda buf: torch.save(out, buf))
        log.info(f"probe: features cached in {path}")
    return out


@torch.no_grad()
def extract(method: Any, dataset: Any, samples: list, pre: Any, cfg: Config, device: torch.device,
            flip: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """GAP of the last stage (`method.features`) over the eval transform of `samples`, fp32; with `flip` also
    of the horizontally flipped inputs (as flip TTA flips them)."""
    from fgcli.data.loaders import build_loader
    from fgcli.data.transforms import eval_transform

    loader = build_loader(samples, dataset.source_root, eval_transform(pre), cfg.train.batch_size, train=False,
                          workers=cfg.data.workers, crop_bottom=int(getattr(dataset, "crop_bottom", 0) or 0),
                          decoder=cfg.data.decoder)
    method.eval()
    feats, flipped, labels = [], [], []
    for images, targets in loader:
        images = images.to(device)
        feats.append(method.features(images).float().mean(dim=(2, 3)).cpu())
        if flip:
            flipped.append(method.features(images.flip(-1)).float().mean(dim=(2, 3)).cpu())
        labels.append(targets)
    return torch.cat(feats), torch.cat(flipped) if flip else None, torch.cat(labels).long()


def features_dir() -> Path:
    """`<fgcli cache>/features` ($FGCLI_CACHE, else $XDG_CACHE_HOME/fgcli, else ~/.cache/fgcli)."""
    from fgcli.data.pipeline import cache_dir

    return cache_dir() / "features"


def features_key(method: Any, dataset: Any, splits: dict[str, list], pre: Any, cfg: Config) -> str:
    """sha256 of what the features depend on: the trunk's weights, the preprocessing and decoder, and each
    split's images (path, label, file size and modification time)."""
    h = hashlib.sha256()
    h.update(json.dumps({"version": FEATURES_VERSION, "backbone": cfg.model.backbone, "preprocess": pre.to_dict(),
                         "decoder": cfg.data.decoder, "crop_bottom": int(getattr(dataset, "crop_bottom", 0) or 0),
                         "output_stride": cfg.model.output_stride, "flip": bool(cfg.probe.flip),
                         "root": str(dataset.source_root)}, sort_keys=True).encode())
    for trunk in method.backbones():
        for name, tensor in sorted(trunk.state_dict().items()):
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    root = Path(dataset.source_root)
    for split, samples in sorted(splits.items()):
        h.update(f"[{split}]".encode())
        for s in samples:
            try:
                st = (root / s.path).stat()
                stamp = f"{st.st_size}:{st.st_mtime_ns}"
            except OSError:
                stamp = "missing"
            h.update(f"{s.path}\t{s.label}\t{stamp}\n".encode())
    return h.hexdigest()[:40]


def l2_to_sklearn_c(l2: float, n: int) -> float:
    """scikit-learn's C for the same objective: C = 1 / (λ n)."""
    return math.inf if l2 == 0 else 1.0 / (l2 * n)
