"""The training loop: any registered Method, single process or DDP under torchrun.

One epoch = train (AMP, gradient accumulation, clipping, non-finite skipping, EMA, per-update lr schedule),
validate on the held-out validation split, then write results.csv / results.png / best.pt / last.pt (rank 0,
atomically). The data order of epoch e depends only on (seed, e), and `last.pt` always holds the state after
a completed epoch, so a run killed at any point resumes to bit-identical final weights on CPU.
"""

from __future__ import annotations

import contextlib
import gc
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fgcli.config import Config, save_yaml
from fgcli.console import add_file_log, log, progress_bar, settings
from fgcli.engine import distributed as D
from fgcli.engine.checkpoint import (
    make_checkpoint,
    restore_rng,
    save_checkpoint,
)
from fgcli.engine.evaluate import MetricAccumulator, evaluate_model
from fgcli.engine.optim import build_optimizer, build_scheduler, current_lr, fit_warmup
from fgcli.engine.result import EpochEnd, TrainResult, store_calibration
from fgcli.engine.rundir import increment_path, write_results_csv
from fgcli.engine.setup import (
    backbone_defaults,
    build_data,
    configure_determinism,
    epoch_seed,
    load_dataset,
    seed_everything,
    set_loader_epoch,
)
from fgcli.engine.signals import defer_sigint
from fgcli.engine.steploss import StepLoss
from fgcli.errors import UserError


class NonFiniteStop(UserError):
    """Too many consecutive non-finite steps: the run stops, last.pt keeps the last good epoch."""


# -- the run ---------------------------------------------------------------------------------------------
class Trainer:
    """Owns the model, optimizer, schedule, EMA, loaders and the run folder for one `fgcli train`."""

    def __init__(self, cfg: Config, resume: dict[str, Any] | None = None, run_dir: Path | None = None,
                 explicit: frozenset[str] = frozenset(), on_epoch_end: EpochEnd | None = None,
                 step_loss: StepLoss | None = None) -> None:
        if cfg.distill.teacher and step_loss is None:
            raise UserError(f"this config distils teacher {cfg.distill.teacher} (distill.teacher): run it with `fgcli "
                            "distill` (--config / --resume take it from there), or set distill.teacher=null to train "
                            "without the teacher.")
        self.cfg = cfg
        self.on_epoch_end = on_epoch_end
        self.step_loss = step_loss if step_loss is not None else StepLoss()
        self.stopped: str | None = None
        self.explicit = explicit  # keys the user set by flag / --set (they are never adjusted to fit the run)
        self.resume_ckpt = resume
        self.requested_run_dir = run_dir
        self.info, self.device = D.init_distributed(cfg.train.device)
        self.main = self.info.is_main
        self.quiet = cfg.train.quiet or settings.quiet or not self.main
        self.history: list[dict[str, Any]] = []
        self.best_metric: float | None = None
        self.best_epoch: int | None = None
        self.early_stop: dict[str, int] | None = None  # set when train.patience ends the run (kept in last.pt)
        self.head_note: str | None = None  # model.head_init=probe: what was fitted (logged with the run's start)
        self.start_epoch = 0
        self.global_step = 0
        self.nonfinite_run = 0
        self.head_names: list[str] | None = None
        self._file_log: Any = None
        self.trackers: Any = None

    # ---- setup ----
    def setup(self) -> None:
        cfg = self.cfg
        if self.info.enabled and cfg.train.sync_bn:
            D.check_sync_bn(self.device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        configure_determinism(cfg, self.device)
        seed_everything(cfg.train.seed)  # identical initial weights on every rank and every resume
        from fgcli.data.transforms import resolve_preprocess
        from fgcli.methods import build_method

        dataset = load_dataset(cfg, self.info)
        if self.resume_ckpt is not None:
            from fgcli.data.select import check_classes

            check_classes(list(self.resume_ckpt["classes"]), list(dataset.classes), f"{cfg.data.path} (--resume)",
                          fix="Resume with the same data.")
        self.method = build_method(cfg, len(dataset.classes))
        self.mixup = build_mixup(cfg, self.method, len(dataset.classes))
        preprocess = resolve_preprocess(cfg.data, backbone_defaults(self.method))
        fixed = self.method.input_size
        if fixed is not None and preprocess.img_size != fixed:
            raise UserError(f"method '{cfg.method}' on backbone '{cfg.model.backbone}' needs {fixed}x{fixed} inputs, "
                            f"but the preprocessing gives {preprocess.img_size}. Use --img-size {fixed}.")
        self.data = build_data(cfg, dataset, preprocess, self.info)
        self.method.to(self.device)
        if cfg.model.head_init == "probe" and self.resume_ckpt is None:
            self._init_head_from_probe(dataset, preprocess)
        self.step_loss.bind(device=self.device, classes=list(dataset.classes), preprocess=preprocess)
        self.speed = self._plan_speed(preprocess.img_size, len(dataset.classes))
        self.amp_dtype, use_scaler = self.speed.amp_dtype, self.speed.use_scaler
        self.channels_last = self.speed.channels_last
        self.step_loss.set_memory_format(self.channels_last)
        if self.speed.amp_dtype is not None and self.speed.depthwise_fp32:
            from fgcli.methods.precision import keep_depthwise_fp32

            keep_depthwise_fp32(self.method)
        if self.channels_last:
            self.method.to(memory_format=torch.channels_last)
        self.ema = None
        if cfg.train.ema:
            from timm.utils import ModelEmaV3

            # warm-up: the decay ramps towards ema_decay, so short runs get a useful average too
            self.ema = ModelEmaV3(self.method, decay=cfg.train.ema_decay, use_warmup=True)
        self.optimizer = build_optimizer(self.method, cfg)
        self.micro_per_epoch = len(self.data.train_loader)
        if self.micro_per_epoch == 0:
            raise UserError("the training loader is empty (fewer images than --batch-size with drop_last); "
                            "lower --batch-size.")
        self.updates_per_epoch = math.ceil(self.micro_per_epoch / cfg.train.accum_steps)
        fitted = fit_warmup(cfg, self.updates_per_epoch, explicit=bool({"sched.warmup", "sched.warmup_unit"}
                                                                         & self.explicit))
        if fitted and self.main:
            log.info(fitted)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.updates_per_epoch)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=use_scaler)
        if self.resume_ckpt is not None:
            self._restore(self.resume_ckpt)
        else:
            self.scheduler.step_update(0)
        model: nn.Module = self.method
        if self.info.enabled:
            if cfg.train.sync_bn:
                model = D.convert_sync_bn(model)
            # head-first epochs leave the trunk without gradients: DDP must be told those parameters go unused
            leaves_unused = self.method.ddp_find_unused_parameters or cfg.model.freeze_epochs > 0
            model = D.wrap_ddp(model, self.device, **D.ddp_options(leaves_unused, cfg.train.find_unused_parameters))
        self.eager_model = model
        # torch.compile is lazy: it compiles in the first step, which falls back to eager if that fails
        self.compile_pending = bool(cfg.model.compile)
        self.model = torch.compile(model) if cfg.model.compile else model
        self._setup_run_dir()

    def _init_head_from_probe(self, dataset: Any, preprocess: Any) -> None:
        """LP-FT: rank 0 fits the head on frozen features (fgcli.engine.probe), every rank takes its weights."""
        from fgcli.engine.probe import init_head_from_probe, require_probe_head

        head = require_probe_head(self.method, self.cfg)  # on every rank, before any rank waits for another
        state = None
        if self.main:
            self.head_note = init_head_from_probe(self.method, dataset, preprocess, self.cfg, self.device)
            state = {k: v.cpu() for k, v in head.state_dict().items()}
        state = D.broadcast_object(state, self.info)
        head.load_state_dict(state)

    def _plan_speed(self, img_size: int, num_classes: int) -> Any:
        """bf16 / channels_last / depthwise policy (fgcli.engine.speed): rank 0 decides (measuring on a CPU where
        the config says auto), every rank follows."""
        from fgcli.engine.speed import SpeedPlan, plan_speed

        record = None
        if self.main:
            previous = (self.resume_ckpt or {}).get("speed")
            plan = plan_speed(self.cfg, self.device, self.method, img_size, num_classes, previous=previous,
                              step_loss=self.step_loss)
            record = plan.record()
        record = D.broadcast_object(record, self.info)
        return SpeedPlan.from_record(record)

    def _restore(self, ckpt: dict[str, Any]) -> None:
        self.method.load_state_dict(ckpt["model"])
        if self.ema is not None:
            if ckpt.get("ema"):
                self.ema.module.load_state_dict(ckpt["ema"])
            else:
                self.ema.module.load_state_dict(ckpt["model"])
        if ckpt.get("optimizer"):
            self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scheduler"):
            if int(ckpt["config"]["train"]["epochs"]) == self.cfg.train.epochs:
                self.scheduler.load_state_dict(ckpt["scheduler"])
            elif self.main:  # timm schedules are a function of the update count: re-plan for the new length
                log.warning(f"resuming with --epochs {self.cfg.train.epochs} (was {ckpt['config']['train']['epochs']}): "
                            "the lr schedule is re-planned over the new length")
        if ckpt.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        self.start_epoch = int(ckpt["epoch"])
        self.global_step = int(ckpt.get("global_step", 0))
        self.best_metric = ckpt.get("best_metric")
        self.best_epoch = ckpt.get("best_epoch")
        self.history = [dict(r) for r in ckpt.get("history") or [] if int(r.get("epoch", 0)) <= self.start_epoch]
        stop = ckpt.get("early_stop")
        if stop:
            from fgcli.engine.rundir import patience_spent

            if patience_spent(self.start_epoch, int(stop["best_epoch"]), self.cfg.train.patience):
                self.early_stop = dict(stop)  # still stopped: only the end-of-run work is left
        restore_rng(ckpt.get("rng"))
        self.scheduler.step_update(self.global_step)

    def _setup_run_dir(self) -> None:
        cfg = self.cfg
        if self.requested_run_dir is not None:
            run_dir = self.requested_run_dir
        else:
            run_dir = increment_path(cfg.train.project, cfg.train.name, cfg.train.exist_ok) if self.main else None
            run_dir = D.broadcast_object(run_dir, self.info)
        self.run_dir = Path(run_dir)
        self.weights = self.run_dir / "weights"
        if self.main:
            self.weights.mkdir(parents=True, exist_ok=True)
            for folder in (self.run_dir, self.weights):  # temp files of writes cut short by a kill
                for stale in folder.glob(".*.tmp"):
                    stale.unlink(missing_ok=True)
            save_yaml(cfg, self.run_dir / "args.yaml")
            self._file_log = add_file_log(self.run_dir / "log.txt")
            if self.history:
                write_results_csv(self.history, self.run_dir / "results.csv")
        D.barrier(self.info)

    # ---- checkpoints ----
    def checkpoint(self, epoch: int) -> dict[str, Any]:
        ckpt = make_checkpoint(
            model=self.method, cfg=self.cfg, classes=self.data.classes, preprocess=self.data.preprocess,
            dataset=self.data.info, epoch=epoch, global_step=self.global_step, best_metric=self.best_metric,
            best_epoch=self.best_epoch, ema=self.ema.module if self.ema is not None else None,
            optimizer=self.optimizer, scheduler=self.scheduler, scaler=self.scaler, history=self.history,
            speed=self.speed.record())
        ckpt.update(self.step_loss.checkpoint_entries())
        if self.early_stop:
            ckpt["early_stop"] = dict(self.early_stop)
        return ckpt

    def _save_epoch(self, epoch: int, improved: bool) -> None:
        """results.csv/png first, then best.pt, then last.pt: a kill between them is repaired by resume."""
        if not self.main:
            return
        from fgcli.engine.plots import plot_results

        with defer_sigint():
            write_results_csv(self.history, self.run_dir / "results.csv")
            try:
                plot_results(self.history, self.run_dir / "results.png")
            except Exception as e:  # a plotting problem must never lose a checkpoint
                log.warning(f"could not draw results.png: {e}")
            ckpt = self.checkpoint(epoch)
            if improved:
                save_checkpoint(self.weights / "best.pt", ckpt)
            save_checkpoint(self.weights / "last.pt", ckpt)

    def _apply_freeze_schedule(self, epoch: int) -> None:
        """`model.freeze_epochs`: the trunk(s) fixed before that epoch, trained from it on (also on resume).
        The optimizer holds the trunk's parameters from the start; while they have no gradient it skips them."""
        if self.cfg.model.freeze_epochs <= 0:
            return
        if epoch < self.cfg.model.freeze_epochs:
            self.method.freeze_backbones()
        else:
            if self.method.backbones_frozen and self.main:
                log.info(f"Epoch {epoch + 1}: the backbone trains from now on (model.freeze_epochs="
                         f"{self.cfg.model.freeze_epochs}).")
            self.method.unfreeze_backbones()

    # ---- one epoch ----
    def train_one_epoch(self, epoch: int, progress: Any) -> dict[str, float]:
        cfg = self.cfg
        self.model.train()
        set_loader_epoch(self.data.train_loader, cfg.train.seed, epoch)
        seed_everything(epoch_seed(cfg.train.seed, epoch, self.info.rank))
        accum = cfg.train.accum_steps
        n_micro = self.micro_per_epoch
        sums: dict[str, torch.Tensor] = {}
        n_terms = 0
        skipped = 0
        seen = 0
        t0 = time.perf_counter()
        task = progress.add_task(f"epoch {epoch + 1}/{cfg.train.epochs}", total=n_micro, info="") \
            if progress is not None else None
        last_refresh = 0.0
        group_bad = False
        applied_lr = current_lr(self.optimizer)
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(self.data.train_loader):
            images = batch[0].to(self.device, non_blocking=True)
            targets = batch[1].to(self.device, non_blocking=True)
            if self.mixup is not None:  # soft targets (B x C) from here on
                images, targets = self._mix(images, targets, epoch, i)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            group_start = (i // accum) * accum
            group_size = min(accum, n_micro - group_start)
            last_in_group = i - group_start == group_size - 1
            loss_terms = self._forward_backward(images, targets, epoch, group_size, last_in_group)
            if loss_terms is None:
                group_bad = True
            else:
                for name, value in loss_terms.items():
                    sums[name] = sums.get(name, 0) + value
                n_terms += 1
            seen += int(images.shape[0])
            if last_in_group:
                applied_lr = current_lr(self.optimizer)
                stepped = self._optimizer_step(group_bad, epoch, i)
                if not stepped:
                    skipped += 1
                group_bad = False
                self.global_step += 1
                self.scheduler.step_update(self.global_step)
            if task is not None and self._show_progress(progress, task, i, sums, n_terms, seen, t0, last_refresh):
                last_refresh = time.perf_counter()
        if task is not None:
            progress.remove_task(task)
        stats = {f"train/{k}": v for k, v in self._reduce_means(sums, n_terms).items()}
        stats["train/skipped"] = float(skipped)  # skip decisions are agreed by all ranks: the same count
        stats["lr"] = applied_lr  # the lr of the epoch's last update (after any warm-up steps in it)
        stats["train_images_per_s"] = seen * self.info.world_size / max(time.perf_counter() - t0, 1e-9)
        return stats

    def _mix(self, images: torch.Tensor, targets: torch.Tensor, epoch: int,
             index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """timm's Mixup / CutMix of micro-batch `index`. Its draws come from numpy's global generator, seeded here
        from (seed, epoch, index, rank) and restored after: a resumed run mixes each batch as an uninterrupted
        one does, whatever else used numpy."""
        state = np.random.get_state()
        np.random.seed((epoch_seed(self.cfg.train.seed, epoch, self.info.rank) * 1_000_003 + index) % 2 ** 32)
        try:
            return self.mixup(images, targets)
        finally:
            np.random.set_state(state)

    def _forward_backward(self, images: torch.Tensor, targets: torch.Tensor, epoch: int, group_size: int,
                          last_in_group: bool) -> dict[str, torch.Tensor] | None:
        """Loss and backward of one micro-batch (DDP gradient sync only on the last of an accumulation group);
        the detached loss terms, or None when the loss is not finite on some rank (nothing is backpropagated).

        With `--compile` the first call compiles; if that fails (an op or a data-dependent shape the compiler
        cannot handle), one warning is logged and the run continues in eager mode from this micro-batch on.
        """
        if not self.compile_pending:
            return self._step(images, targets, epoch, group_size, last_in_group)
        try:
            result = self._step(images, targets, epoch, group_size, last_in_group)
        except Exception as e:  # noqa: BLE001 - any compiler error; a real model error recurs in eager mode
            if self.main:
                first = (str(e).strip().splitlines() or [""])[0][:200]
                log.warning(f"--compile: torch.compile could not compile {self.cfg.method} on "
                            f"{self.cfg.model.backbone} ({type(e).__name__}: {first}); continuing in eager mode "
                            "(pass --no-compile to skip the attempt).")
            self.model = self.eager_model
            self.compile_pending = False
            self.optimizer.zero_grad(set_to_none=True)  # the run's first micro-batch: no other gradients yet
            return self._step(images, targets, epoch, group_size, last_in_group)
        self.compile_pending = False
        return result

    def _step(self, images: torch.Tensor, targets: torch.Tensor, epoch: int, group_size: int,
              last_in_group: bool) -> dict[str, torch.Tensor] | None:
        model, method = self.model, self.method
        sync = contextlib.nullcontext()
        if self.info.enabled and not last_in_group and hasattr(model, "no_sync"):
            sync = model.no_sync()
        with sync:
            with torch.autocast(device_type=self.device.type, dtype=self.amp_dtype or torch.float32,
                                enabled=self.amp_dtype is not None):
                outputs = model(images, targets)
                total, terms = self.step_loss(method, images, outputs, targets, epoch)
            if self.head_names is None:
                heads = list(method.heads(outputs))
                self.head_names = heads if len(heads) > 1 else []
            if not D.all_finite(bool(torch.isfinite(total.detach()).all()), self.info, self.device):
                return None
            self.scaler.scale(total / group_size).backward()
        return {"loss": total.detach().float(), **{k: v.detach().float() for k, v in terms.items()}}

    def _show_progress(self, progress: Any, task: Any, i: int, sums: dict[str, Any], n_terms: int, seen: int,
                       t0: float, last_refresh: float) -> bool:
        """Advance the epoch's bar; the loss / lr / speed text at most twice a second. True when refreshed."""
        now = time.perf_counter()
        if now - last_refresh <= 0.5 and i != self.micro_per_epoch - 1:
            progress.update(task, completed=i + 1)
            return False
        loss = (sums["loss"] / max(n_terms, 1)).item() if n_terms else float("nan")
        rate = seen * self.info.world_size / max(now - t0, 1e-9)
        progress.update(task, completed=i + 1,
                        info=f"loss {loss:.4f}  lr {current_lr(self.optimizer):.2e}  {rate:.1f} img/s")
        return True

    def _optimizer_step(self, group_bad: bool, epoch: int, index: int) -> bool:
        """Step unless the loss or the gradients are non-finite; returns whether the optimizer stepped."""
        cfg = self.cfg
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        reason = "loss" if group_bad else None
        if reason is None:
            if self.scaler.is_enabled():
                self.scaler.unscale_(self.optimizer)
            max_norm = cfg.optim.clip_grad if cfg.optim.clip_grad else float("inf")
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            if not torch.isfinite(norm):
                if self.scaler.is_enabled():  # fp16 overflow: the scaler skips the step and lowers its scale
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                    self.optimizer.zero_grad(set_to_none=True)
                    return False
                reason = "gradient"
        if reason is not None:
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_run += 1
            if self.main:
                log.warning(f"non-finite {reason} at epoch {epoch + 1}, batch {index + 1}: step skipped "
                            f"({self.nonfinite_run} in a row)")
            if self.nonfinite_run >= cfg.train.max_nonfinite:
                raise NonFiniteStop(
                    f"training stopped: {self.nonfinite_run} consecutive non-finite steps (train.max_nonfinite="
                    f"{cfg.train.max_nonfinite}) at epoch {epoch + 1}. {self.weights / 'last.pt'} keeps the last "
                    "good epoch. Lower --lr, set --set optim.clip_grad=1.0, or try --no-amp.")
            return False
        self.nonfinite_run = 0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.method, step=self.global_step)
        return True

    def _reduce_means(self, sums: dict[str, Any], count: int) -> dict[str, float]:
        names = sorted(sums)
        if self.info.enabled:
            # every rank has the same term names once it ran a finite step; exchange them to be safe
            names = sorted(set().union(*[set(n) for n in _all_gather_names(names, self.info)]))
        vec = torch.tensor([float(sums[n]) if n in sums else 0.0 for n in names] + [float(count)],
                           dtype=torch.float64)
        vec = D.all_reduce_sum(vec, self.info, self.device)
        total = max(float(vec[-1]), 1.0)
        out = {n: float(vec[i]) / total for i, n in enumerate(names)}
        order = ["loss"] + [n for n in names if n != "loss"]
        return {n: out[n] for n in order if n in out}

    def validate(self, model: nn.Module, scores: Any = None, progress: Any = None,
                 title: str = "validation") -> MetricAccumulator | None:
        if self.data.val_loader is None:
            return None
        task = progress.add_task(title, total=self.data.val_count // max(self.info.world_size, 1),
                                 info="") if progress is not None else None
        # the scores a temperature and a rejection threshold are fitted on come from fp32, the precision that
        # eval, export and predict use (a bf16 pass moves probabilities by ~1e-5)
        fp32 = scores is not None
        acc = evaluate_model(model, self.data.val_loader, self.device, len(self.data.classes),
                             amp_dtype=None if fp32 else self.amp_dtype,
                             channels_last=False if fp32 else self.channels_last, heads=self.head_names,
                             scores=scores, progress=None if task is None else
                             (lambda n: progress.advance(task, n)))
        if task is not None:
            progress.remove_task(task)
        if self.info.enabled:
            acc.load_state_tensor(D.all_reduce_sum(acc.state_tensor(), self.info, self.device))
        if acc.n != self.data.val_count and self.main:
            log.warning(f"validation counted {acc.n} images but the split has {self.data.val_count}")
        return acc

    def eval_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.method

    # ---- the loop ----
    def fit(self) -> TrainResult:
        cfg = self.cfg
        if self.start_epoch == 0 and self.main:
            with defer_sigint():  # epoch-0 state, so that a kill during epoch 1 can resume too
                save_checkpoint(self.weights / "last.pt", self.checkpoint(0))
        if self.main:
            self._log_start()
            self._start_trackers()
        run_start = time.perf_counter() - (float(self.history[-1]["time"]) if self.history else 0.0)
        progress = progress_bar(info=True) if not self.quiet else None
        try:
            with progress if progress is not None else contextlib.nullcontext():
                # a run stopped early (resumed for its end-of-run work only) trains no further epoch
                for epoch in range(self.start_epoch, self.start_epoch if self.early_stop else cfg.train.epochs):
                    t0 = time.perf_counter()
                    if self.device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(self.device)
                    self._apply_freeze_schedule(epoch)
                    stats = self.train_one_epoch(epoch, progress)
                    acc = self.validate(self.eval_model(), progress=progress,
                                        title=f"validation {epoch + 1}/{cfg.train.epochs}")
                    row: dict[str, Any] = {"epoch": epoch + 1, "time": 0.0, "lr": stats["lr"]}
                    row.update({k: v for k, v in stats.items() if k.startswith("train/")})
                    improved = False
                    if acc is not None:
                        res = acc.result()
                        row["val/top1"], row["val/top5"] = res.top1, res.top5
                        for name, m in res.heads.items():
                            row[f"val/{name}/top1"] = m["top1"]
                            row[f"val/{name}/top5"] = m[f"top{res.k}"]
                        if self.best_metric is None or res.top1 > self.best_metric:
                            self.best_metric, self.best_epoch, improved = res.top1, epoch + 1, True
                    row["train_img_s"] = stats["train_images_per_s"]  # training only, validation excluded
                    if self.device.type == "cuda":  # peak memory of this epoch (training and validation)
                        row["gpu_mem_gb"] = torch.cuda.max_memory_allocated(self.device) / 2 ** 30
                    row["epoch_time"] = time.perf_counter() - t0
                    row["time"] = time.perf_counter() - run_start
                    self.history.append(row)
                    self.early_stop = self._patience_exhausted(epoch + 1)
                    self._save_epoch(epoch + 1, improved)
                    if self.main:
                        self._log_epoch(row, stats)
                        if self.trackers is not None:
                            from fgcli.engine.trackers import group_lrs

                            self.trackers.log_epoch(epoch + 1, row, group_lrs(self.optimizer))
                    if self.early_stop:
                        if self.main:
                            from fgcli.engine.rundir import early_stop_reason

                            log.info(f"stopping early after epoch {epoch + 1} of {cfg.train.epochs}: "
                                     f"{early_stop_reason(self.early_stop)}; best.pt holds epoch {self.best_epoch}")
                        break
                    if self._stop_requested(epoch + 1, row):
                        break
        except KeyboardInterrupt:
            if self.main:
                done = self.history[-1]["epoch"] if self.history else 0
                log.warning(f"Interrupted. {self.weights / 'last.pt'} holds the last completed epoch ({done}); the "
                            "partial epoch was dropped so that resuming stays exact. Continue with: fgcli train "
                            f"--resume {self.run_dir}")
            raise
        return TrainResult(self.run_dir, len(self.history), self.best_metric, self.best_epoch, self.history,
                           config=self.cfg, classes=list(self.data.classes), val_split=str(self.data.info["val_split"]),
                           is_main=self.main, stopped=self.stopped, early_stop=self.early_stop)

    def _patience_exhausted(self, epoch: int) -> dict[str, int] | None:
        """The early-stop record when `train.patience` epochs have passed since the best val top-1 and epochs are
        left, else None (every rank agrees: the validation result is reduced over ranks)."""
        from fgcli.engine.rundir import patience_spent

        patience = self.cfg.train.patience
        if epoch >= self.cfg.train.epochs or not patience_spent(epoch, self.best_epoch, patience):
            return None
        return {"epoch": epoch, "best_epoch": int(self.best_epoch), "patience": patience}

    def _stop_requested(self, epoch: int, row: dict[str, Any]) -> bool:
        """Tell the on_epoch_end callback (rank 0) about `epoch` and whether it asks to stop there; every rank
        gets the answer. After the last epoch there is nothing left to stop."""
        if self.on_epoch_end is None:
            return False
        reason = self.on_epoch_end(epoch, row) if self.main else None
        reason = D.broadcast_object(reason, self.info)
        if reason is None or epoch >= self.cfg.train.epochs:
            return False
        self.stopped = str(reason)
        if self.main:
            log.info(f"stopping after epoch {epoch} of {self.cfg.train.epochs}: {reason}. {self.weights} holds "
                     "this epoch's checkpoints.")
        return True

    def finish(self, result: TrainResult) -> None:
        """Confusion matrix of best.pt on the val split, the calibration of best.pt / last.pt, then the summary
        (rank 0 prints)."""
        D.barrier(self.info)  # rank 0 may still be writing best.pt: every rank must see it before deciding
        # a run stopped early on purpose (a pruned search trial) gets no confusion matrix and no calibration
        if result.stopped is None and self.data.val_loader is not None and result.best.is_file():
            from fgcli.engine.calibration import ScoreBook
            from fgcli.engine.checkpoint import load_model
            from fgcli.engine.plots import plot_confusion_matrix

            scores = ScoreBook()
            with progress_bar(info=True) if not self.quiet else contextlib.nullcontext() as bar:
                acc = self.validate(load_model(result.best, device=self.device).model, scores=scores,
                                    progress=bar, title="best.pt on val: confusion matrix and calibration")
            if self.main and acc is not None:
                plot_confusion_matrix(acc.confusion.numpy(), self.data.classes,
                                      self.run_dir / "confusion_matrix.png",
                                      title=f"{self.cfg.method} best.pt (epoch {result.best_epoch}), "
                                            f"{self.cfg.data.val_split} split")
            self._calibrate(result, scores)
        elif self.main and self.data.val_loader is None:
            log.warning("no validation split: the model's probabilities stay uncalibrated (no temperature and no "
                        "rejection threshold fitted). Set data.val_fraction > 0, or run `fgcli calibrate` with data "
                        "that has a val split.")
        if self.main and self.trackers is not None:
            self.trackers.finish(self.run_dir)
        # Leave together: a rank that tears its gloo group down while rank 0 still prints can make the peer's
        # transport thread abort the process ("terminate called without an active exception").
        D.barrier(self.info)

    def _calibrate(self, result: TrainResult, best_scores: Any) -> None:
        """Fit the fused prediction's temperature on the val split (every rank scores its shard, rank 0 fits)
        and store it in best.pt, and in last.pt (refitted when last.pt holds other weights)."""
        from fgcli.engine.calibration import ScoreBook

        targets = [(result.best, best_scores)]
        if result.last.is_file() and result.best_epoch != result.epochs_done:
            from fgcli.engine.checkpoint import load_model

            last_scores = ScoreBook()
            with progress_bar(info=True) if not self.quiet else contextlib.nullcontext() as bar:
                self.validate(load_model(result.last, device=self.device).model, scores=last_scores,
                              progress=bar, title="last.pt on val: calibration")
            targets.append((result.last, last_scores))
        else:
            targets.append((result.last, best_scores))
        warned: set[str] = set()  # best.pt and last.pt often get the same reason: say it once
        for path, scores in targets:
            states = D.gather_objects(scores.state(), self.info)
            if self.main and path.is_file():
                merged = ScoreBook()
                for state in states:
                    merged.extend(state)
                record = store_calibration(path, merged, split=str(self.data.info.get("val_split") or "val"),
                                           reject_recall=self.cfg.train.reject_recall, warned=warned)
                if path == result.best:
                    result.calibration = record

    def _start_trackers(self) -> None:
        if not self.cfg.log.loggers:
            return
        from fgcli.config import to_dict
        from fgcli.engine.trackers import Trackers, check_loggers

        log_cfg = self.cfg.log
        self.trackers = Trackers(check_loggers(log_cfg.loggers), log_cfg.mlflow_uri, log_cfg.mlflow_experiment)
        self.trackers.start(self.run_dir, to_dict(self.cfg), self.start_epoch)

    def close(self) -> None:
        if self.trackers is not None:
            self.trackers.close()
            self.trackers = None
        if self._file_log is not None:
            log.removeHandler(self._file_log)
            self._file_log.close()
            self._file_log = None
        if self.info.enabled:
            # DDP's reducer holds the process group, so without this the group outlives destroy_process_group
            # and is torn down later, outside c10d's shutdown; a finished gloo run was seen to abort there
            # ("terminate called without an active exception"). Free the wrapper first.
            self.model = self.eager_model = None
            gc.collect()
        D.cleanup_distributed(self.info)

    # ---- logging ----
    def _log_start(self) -> None:
        cfg, data = self.cfg, self.data
        what = "resuming" if self.start_epoch else "training"
        paths = self.speed.paths()  # the accelerator paths this run takes (benchmarks/gpu_check.py reads them)
        paths += [name for name, on in (("compile", cfg.model.compile),
                                        ("cudnn.benchmark", self.device.type == "cuda"
                                         and torch.backends.cudnn.benchmark)) if on]
        log.info(f"{what} {cfg.method} on {cfg.model.backbone} | data {data.info['name']} "
                 f"({len(data.classes)} classes, {data.info['num_train']} train / {data.val_count} val) | "
                 f"{cfg.train.epochs} epochs, batch {cfg.train.batch_size} x {self.info.world_size} process(es)"
                 f"{f' x {cfg.train.accum_steps} accum' if cfg.train.accum_steps > 1 else ''} | "
                 f"img {data.preprocess.img_size} | device {self.device}"
                 f"{''.join(f' | {p}' for p in paths)} | run {self.run_dir}")
        if self.head_note:
            log.info(f"head_init: {self.head_note}")
        for reason in self.speed.reasons:
            if reason.startswith("warning: "):
                log.warning(reason[len("warning: "):])
            else:
                log.info(f"speed: {reason}")
        if self.data.val_loader is None:
            log.warning("no validation split: best.pt will not be written. Set data.val_fraction > 0.")

    def _log_epoch(self, row: dict[str, Any], stats: dict[str, float]) -> None:
        parts = [f"epoch {row['epoch']}/{self.cfg.train.epochs}"]
        parts += [f"{k[6:]} {v:.4f}" for k, v in row.items() if k.startswith("train/") and k != "train/skipped"]
        if row.get("train/skipped"):
            parts.append(f"skipped {int(row['train/skipped'])}")
        if "val/top1" in row:
            parts.append(f"val top-1 {row['val/top1']:.2f}% top-5 {row['val/top5']:.2f}%")
        parts.append(f"lr {row['lr']:.2e}")
        parts.append(f"{stats['train_images_per_s']:.1f} img/s")
        parts.append(f"{row['epoch_time']:.1f}s")
        remaining = self.cfg.train.epochs - row["epoch"]
        if remaining > 0:  # the cost of the run, visible from its first epoch on
            per_epoch = row["time"] / max(len(self.history), 1) if len(self.history) > 1 else row["epoch_time"]
            parts.append(f"run ~{format_duration(row['time'] + remaining * per_epoch)} "
                         f"({format_duration(remaining * per_epoch)} left)")
        log.info(" | ".join(parts) + ("  *best*" if self.best_epoch == row["epoch"] else ""))


def build_mixup(cfg: Config, method: Any, num_classes: int) -> Any:
    """timm's Mixup for `train.mixup` / `train.cutmix` (None when both are 0), with the run's label smoothing
    built into its soft targets; a method whose loss cannot take soft targets is refused with its reason."""
    t = cfg.train
    if not (t.mixup > 0 or t.cutmix > 0):
        return None
    refusal = method.soft_target_refusal()
    if refusal:
        raise UserError(f"train.mixup / train.cutmix: {refusal}. Set train.mixup=0 and train.cutmix=0 for "
                        f"method '{cfg.method}'.")
    from timm.data import Mixup

    return Mixup(mixup_alpha=t.mixup, cutmix_alpha=t.cutmix, prob=t.mixup_prob, switch_prob=0.5, mode="batch",
                 label_smoothing=t.label_smoothing, num_classes=num_classes)


def format_duration(seconds: float) -> str:
    """1h02m, 12m05s, 42s."""
    seconds = max(int(round(seconds)), 0)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def _all_gather_names(names: list[str], info: D.DistInfo) -> list[list[str]]:
    import torch.distributed as dist

    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, names)
    return out


def train(cfg: Config, resume: dict[str, Any] | None = None, run_dir: Path | None = None,
          explicit: frozenset[str] = frozenset(), on_epoch_end: EpochEnd | None = None,
          step_loss: StepLoss | None = None) -> TrainResult:
    """Train `cfg` (optionally continuing from a checkpoint dict) and return where the results are. `explicit`:
    the config keys the user set directly (flags, --set), which are never adjusted to fit a short run.
    `on_epoch_end(epoch, row)`: called after each saved epoch; a string stops the run there (`result.stopped`).
    `step_loss`: the training loss when a task adds to the method's own (fgcli.engine.steploss). A method fitted
    on frozen features (`fitted_by = "probe"`) is fitted by fgcli.engine.probe instead."""
    from fgcli.methods import get_method

    if get_method(cfg.method).fitted_by == "probe":
        from fgcli.engine.probe import train_probe

        return train_probe(cfg, resume=resume, run_dir=run_dir, on_epoch_end=on_epoch_end)
    trainer = Trainer(cfg, resume=resume, run_dir=run_dir, explicit=explicit, on_epoch_end=on_epoch_end,
                      step_loss=step_loss)
    try:
        trainer.setup()
        result = trainer.fit()
        trainer.finish(result)
        return result
    finally:
        trainer.close()


@dataclass
class RunRequest:
    """What `train()` is called with: the resolved config, and for a resumed run its checkpoint and folder."""

    cfg: Config
    resume: dict[str, Any] | None = None
    run_dir: Path | None = None
    explicit: frozenset[str] = frozenset()
    resumed_from: Path | None = None  # the checkpoint a resumed run continues


def resolve_run(*, recipe: str | None = None, config_file: str | None = None, flags: dict[str, Any] | None = None,
                overrides: list[str] | None = None, resume: str | None = None,
                default_project: str | None = None) -> RunRequest:
    """The config of a fresh run, or of a resumed one with its checkpoint (`resume`: a run folder, a .pt or auto,
    looked up under --project, else `default_project`, else the config's default)."""
    from fgcli.engine.checkpoint import load_checkpoint
    from fgcli.engine.runconfig import explicit_keys, resume_config, train_config
    from fgcli.engine.rundir import resolve_resume_path

    flags = dict(flags or {})
    if resume is None:
        return RunRequest(train_config(recipe, config_file, flags, overrides), explicit=explicit_keys(flags, overrides))
    if recipe is not None or config_file is not None:
        raise UserError("--resume takes its config from the checkpoint; drop --recipe / --config.")
    project = flags.get("train.project") or default_project or Config().train.project
    path = resolve_resume_path(resume, project)
    ckpt = load_checkpoint(path)
    cfg = resume_config(ckpt["config"], {k: v for k, v in flags.items() if k != "train.project"}, overrides)
    from fgcli.engine.rundir import early_stop_reason, end_of_run_done, patience_spent

    run_dir = path.parent.parent if path.parent.name == "weights" else None
    stop = ckpt.get("early_stop")
    stopped_early = bool(stop) and patience_spent(int(ckpt["epoch"]), int(stop["best_epoch"]), cfg.train.patience)
    if int(ckpt["epoch"]) >= cfg.train.epochs or stopped_early:
        if run_dir is not None and not end_of_run_done(ckpt, run_dir / "weights" / "best.pt"):
            # killed during the end-of-run work: do only that, not the whole run again
            if D.launched_rank() == 0:
                log.info(f"resuming run {run_dir} from {path}: every epoch is done ({ckpt['epoch']}) but the "
                         "end-of-run work is not; doing only that (confusion matrix, calibration)")
            return RunRequest(cfg, resume=ckpt, run_dir=run_dir, resumed_from=path)
        if stopped_early:
            raise UserError(f"--resume: {path} stopped early after epoch {ckpt['epoch']}: "
                            f"{early_stop_reason(stop)}. Pass --set train.patience=N (larger, or 0 for none) to "
                            "train on.")
        raise UserError(f"--resume: {path} already finished {ckpt['epoch']} of {cfg.train.epochs} epochs. Pass "
                        "--epochs N (larger) to train on.")
    if D.launched_rank() == 0:
        log.info(f"resuming run {run_dir or path.parent} from {path}: epoch {ckpt['epoch']} of {cfg.train.epochs} "
                 f"done, continuing with epoch {int(ckpt['epoch']) + 1}")
    return RunRequest(cfg, resume=ckpt, run_dir=run_dir, resumed_from=path)


def run_train(*, recipe: str | None = None, config_file: str | None = None, flags: dict[str, Any] | None = None,
              overrides: list[str] | None = None, resume: str | None = None) -> TrainResult:
    """`fgcli train`: resolve the config (fresh or resumed) and train."""
    run = resolve_run(recipe=recipe, config_file=config_file, flags=flags, overrides=overrides, resume=resume)
    return train(run.cfg, resume=run.resume, run_dir=run.run_dir, explicit=run.explicit)
