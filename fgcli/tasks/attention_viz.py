"""`fgcli attention-viz`: load a checkpoint (the one format with attention maps, fgcli.formats), pick images,
render each method's `attention()` maps, score them.

Checkpoint loading, data resolution, class checks and preprocessing are the same helpers `fgcli eval` and
`fgcli predict` use; only the figures, the scores and the contact sheet are new here.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fgcli.console import log, progress_bar
from fgcli.errors import UserError
from fgcli.options import VizOptions

LAYOUTS = ("grid", "single")


@dataclass
class VizItem:
    """One image to draw: how to read it, its true class (if known), its mask / box source (if any)."""

    name: str
    load: Callable[[], Any]  # -> PIL RGB image (after any crop_bottom)
    true_label: int | None = None
    sample: Any = None  # a manifest Sample (for masks / boxes)


@dataclass
class VizResult:
    """What was written."""

    out_dir: Path
    figures: list[Path] = field(default_factory=list)
    index: Path | None = None
    scores: list[dict] | None = None
    box_scores: list[dict] = field(default_factory=list)  # boxes the method draws (MGE-CNN's zooms), if any
    score_target: str = ""
    skipped: list[tuple[str, str]] = field(default_factory=list)


def attention_viz(checkpoint: str | Path, images: Sequence[str] = (), options: VizOptions | None = None) -> VizResult:
    """Render attention figures for IMAGES (or `num` images of a data split) and optionally score the maps.

    Writes `<name>.png` per image (`--layout single`: `<name>/<panel>.png`), `index.html`, and with `score`
    `scores.csv` / `scores.json` (and `box_scores.csv` / `.json` for a method that draws boxes) into `out`
    (default `runs/viz/<run name>`). Titles show the calibrated
    probability when the checkpoint has a fitted temperature, unless `calibration` is False.
    """
    from fgcli.data.select import resolve_split_data, run_data
    from fgcli.engine.checkpoint import load_model
    from fgcli.engine.rundir import default_out_dir

    opts = options or VizOptions()
    data, split, num, out, alpha, layout, score, batch_size = (opts.data, opts.split, opts.num, opts.out, opts.alpha,
                                                              opts.layout, opts.score, opts.batch_size)
    path = Path(checkpoint)
    _check_args(path, images, data, layout, alpha, num, score, batch_size)
    loaded = load_model(path, device=opts.device, use_ema=opts.ema)
    model, classes, pre, cfg, ckpt, dev = (loaded.model, loaded.classes, loaded.preprocess, loaded.config,
                                           loaded.checkpoint, loaded.device)
    method = str(ckpt["method"])
    if not images and data is None:
        data = run_data(cfg, "IMAGES or --data PATH")
    chosen = None if images else resolve_split_data(cfg.data, data, split, classes)
    dataset, samples = (None, []) if chosen is None else (chosen.dataset, chosen.samples)
    items = _path_items(images, classes) if images else _sample_items(dataset, _spread(samples, num))
    out_dir = Path(out) if out is not None else default_out_dir(path, project="runs/viz")
    result = VizResult(out_dir)
    target = result.score_target = _score_target(dataset, samples, data or cfg.data.path) if score else ""
    temperature = _temperature(ckpt, opts.calibration)
    entries = _render_all(model, method, pre, classes, items, out_dir, alpha, layout, batch_size, dev, result,
                          temperature)
    if not result.figures:
        first = f" (first: {result.skipped[0][0]}: {result.skipped[0][1]})" if result.skipped else ""
        raise UserError(f"none of the {len(items)} images could be read{first}. Check the files.")
    if score:
        scored = samples if opts.score_num is None else _spread(samples, opts.score_num)
        result.scores, result.box_scores = _score_all(model, method, pre, dataset, scored, batch_size, dev, target)
        _write_scores(result.scores, out_dir, "scores")
        if result.box_scores:
            _write_scores(result.box_scores, out_dir, "box_scores")
    from fgcli.viz.html import write_index

    meta = [f"{path} · {method} / {ckpt['backbone']} · epoch {ckpt.get('epoch')} · "
            f"{'EMA' if opts.ema and ckpt.get('ema') else 'model'} weights",
            f"input {pre.img_size}px (resize {pre.resize}, {pre.resize_mode}) · maps from {method}.attention()"]
    title = f"attention-viz: {path.parent.parent.name if path.parent.name == 'weights' else path.stem}"
    result.index = write_index(out_dir / "index.html", entries, title, meta, result.scores, target)
    return result


# ---- arguments and inputs ---------------------------------------------------------------------------------
def _check_args(path: Path, images: Sequence[str], data: str | None, layout: str, alpha: float, num: int,
                score: bool, batch_size: int) -> None:
    from fgcli.formats import format_of

    fmt = format_of(path)
    if not fmt.heads:
        raise UserError(f"{path} is an exported {fmt.title} model: it holds only the fused logits, no attention "
                        "maps. Pass the .pt checkpoint it was exported from (e.g. runs/train/exp/weights/best.pt).")
    if images and data:
        raise UserError("give either IMAGES or --data, not both (--data picks --num images of --split).")
    if layout not in LAYOUTS:
        raise UserError(f"--layout {layout}: use one of {', '.join(LAYOUTS)}.")
    if not 0.0 <= alpha <= 1.0:
        raise UserError(f"--alpha {alpha} must be between 0 (image only) and 1 (map only).")
    if num < 1 or batch_size < 1:
        raise UserError("--num and --batch-size must be at least 1.")
    if score and images:
        raise UserError("--score needs --data with part masks or boxes (e.g. --data demo, a CUB / Cars / "
                        "Aircraft root); loose IMAGES have none.")


def _spread(samples: list, num: int) -> list:
    """Up to `num` samples, round-robin over classes in manifest order (deterministic, class-balanced)."""
    by_class: dict[int, list] = {}
    for s in samples:
        by_class.setdefault(s.label, []).append(s)
    queues = [iter(v) for _, v in sorted(by_class.items())]
    picked: list = []
    while len(picked) < num and queues:
        for q in list(queues):
            nxt = next(q, None)
            if nxt is None:
                queues.remove(q)
            elif len(picked) < num:
                picked.append(nxt)
    return picked


def _sample_items(dataset: Any, samples: list) -> list[VizItem]:
    from fgcli.data.dataset import ManifestDataset

    ds = ManifestDataset(samples, dataset.source_root, crop_bottom=int(getattr(dataset, "crop_bottom", 0) or 0))
    return [VizItem(f"{i:03d}_{_slug(Path(s.path).stem)}", (lambda i=i: ds.load(i)), s.label, s)
            for i, s in enumerate(samples)]


def _path_items(images: Sequence[str], classes: list[str]) -> list[VizItem]:
    """Loose images; the true class is taken from the parent folder when it is one of the model's classes."""
    from fgcli.data.images import load_rgb
    from fgcli.tasks.predict_images import collect_images

    lookup = {c: i for i, c in enumerate(classes)}
    return [VizItem(f"{i:03d}_{_slug(p.stem)}", (lambda p=p: load_rgb(p)), lookup.get(p.parent.name))
            for i, p in enumerate(collect_images(list(images)))]


def _slug(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in text)
    return keep[:60] or "image"


# ---- rendering ---------------------------------------------------------------------------------------------
def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _load_batch(items: list[VizItem], pre: Any, result: VizResult) -> tuple[list[VizItem], list, Any]:
    """Read and transform a batch; unreadable images are reported and skipped."""
    import torch

    from fgcli.data.transforms import eval_transform

    transform = eval_transform(pre)
    ok, originals, tensors = [], [], []
    for item in items:
        try:
            image = item.load()
        except Exception as e:  # unreadable / truncated: report and go on
            result.skipped.append((item.name, f"{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"))
            continue
        ok.append(item)
        originals.append(image)
        tensors.append(transform(image))
    return ok, originals, (torch.stack(tensors) if tensors else None)


def _temperature(ckpt: dict, calibration: bool) -> float:
    """The temperature the titles' probabilities use (1.0: uncalibrated, with a note when none is fitted)."""
    from fgcli.console import log
    from fgcli.engine.calibration import stored_temperature
    from fgcli.inference import calibration_note

    fitted = stored_temperature(ckpt)
    if fitted is None:
        log.info(calibration_note(None, False))
    return fitted if calibration and fitted else 1.0


def _render_all(model: Any, method: str, pre: Any, classes: list[str], items: list[VizItem], out_dir: Path,
                alpha: float, layout: str, batch_size: int, dev: Any, result: VizResult,
                temperature: float = 1.0) -> list:
    from fgcli.viz.geometry import CropGeometry
    from fgcli.viz.html import SheetEntry
    from fgcli.viz.maps import attention_maps
    from fgcli.viz.panels import method_panels
    from fgcli.viz.render import ImageInfo, figure, headline, save_png

    entries: list[SheetEntry] = []
    with _progress("attention-viz", len(items)) as advance:
        for chunk in _batches(items, batch_size):
            ok, originals, batch = _load_batch(chunk, pre, result)
            if batch is None:
                advance(len(chunk))
                continue
            for item, image, maps in zip(ok, originals, attention_maps(model, method, batch.to(dev), pre,
                                                                       temperature), strict=True):
                info = ImageInfo(item.name, np.asarray(image), CropGeometry(image.width, image.height, pre),
                                 item.true_label)
                rows = method_panels(info, maps, classes, alpha)
                title, colour = headline(info, maps, classes)
                aspect = image.height / image.width
                if layout == "grid":
                    files = [save_png(figure(rows, title, colour, aspect), out_dir / f"{item.name}.png")]
                else:
                    short, _ = headline(info, maps, classes, compact=True)
                    files = [save_png(figure([[p]], short, colour, aspect), out_dir / item.name / f"{p.key}.png")
                             for row in rows for p in row if p is not None]
                result.figures += files
                notes = _notes(maps)
                entries.append(SheetEntry(item.name, [f.relative_to(out_dir).as_posix() for f in files],
                                          None if item.true_label is None else classes[item.true_label],
                                          classes[maps.pred], float(maps.probs[maps.pred]), notes))
            advance(len(chunk))
    return entries


def _notes(maps: Any) -> list[str]:
    """Caption notes from the method's own viz module (`notes(maps)`), if it has one."""
    from fgcli.viz.maps import method_viz

    notes = getattr(method_viz(maps.method), "notes", None)
    return notes(maps) if notes is not None else []


# ---- scoring -----------------------------------------------------------------------------------------------
def _score_target(dataset: Any, samples: list, data: str) -> str:
    if any(s.mask for s in samples):
        return "part masks"
    if any(s.box is not None for s in samples):
        return "object boxes"
    raise UserError(f"--score: the data at {data} has no part masks or bounding boxes. Use --data demo, or a "
                    "CUB-200-2011 / Stanford Cars / FGVC-Aircraft root (they ship boxes).")


def target_mask(sample: Any, source_root: Path, geometry: Any, crop_bottom: int = 0) -> np.ndarray | None:
    """The sample's part mask (preferred) or box, on the input-crop grid; None when it has neither."""
    if sample.mask:
        from PIL import Image

        with Image.open(Path(source_root) / sample.mask) as im:
            mask = np.asarray(im.convert("L")) > 127
        if crop_bottom > 0 and mask.shape[0] > crop_bottom + 1:
            mask = mask[: mask.shape[0] - crop_bottom]
        return geometry.mask_to_crop(mask)
    if sample.box is not None:
        return geometry.box_to_crop(sample.box)
    return None


def _score_all(model: Any, method: str, pre: Any, dataset: Any, samples: list, batch_size: int, dev: Any,
               target: str) -> tuple[list[dict], list[dict]]:
    """The maps' scores and the boxes' overlaps (empty for a method that draws no box) against the target."""
    from fgcli.viz.geometry import CropGeometry
    from fgcli.viz.maps import attention_maps
    from fgcli.viz.scoring import Scoreboard

    board = Scoreboard(method)
    crop_bottom = int(getattr(dataset, "crop_bottom", 0) or 0)
    items = [it for it in _sample_items(dataset, samples) if it.sample.mask or it.sample.box is not None]
    sink = VizResult(Path("."))
    with _progress(f"scoring vs {target}", len(items)) as advance:
        for chunk in _batches(items, batch_size):
            ok, originals, batch = _load_batch(chunk, pre, sink)
            if batch is not None:
                for item, image, maps in zip(ok, originals, attention_maps(model, method, batch.to(dev), pre),
                                             strict=True):
                    geometry = CropGeometry(image.width, image.height, pre)
                    mask = target_mask(item.sample, dataset.source_root, geometry, crop_bottom)
                    if mask is not None:
                        board.add(maps.maps, mask, maps.boxes)
            advance(len(chunk))
    if board.skipped:
        log.warning(f"--score: {board.skipped} image(s) skipped: their part lies outside the model's centre crop")
    if not board.rows:
        raise UserError(f"--score: none of the {len(items)} images with {target} could be scored.")
    return board.summaries(), board.box_summaries()


def _write_scores(rows: list[dict], out_dir: Path, name: str) -> None:
    from fgcli.io import atomic_write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    atomic_write_text(out_dir / f"{name}.csv", buf.getvalue())
    atomic_write_text(out_dir / f"{name}.json", json.dumps(rows, indent=2) + "\n")


def scores_table(rows: list[dict], target: str) -> Any:
    """A rich table: pointing game and energy inside the target per map, with the random-map baseline."""
    from rich.table import Table

    table = Table(title=f"{rows[0]['method']} attention vs {target}")
    for col, justify in (("map", "left"), ("images", "right"), ("pointing game", "right"),
                         ("energy inside", "right"), ("random map", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(str(r["map"]), str(r["images"]), f"{r['pointing']:.3f}", f"{r['energy']:.3f}",
                      f"[dim]{r['random']:.3f}[/]")
    table.caption = "random map = the expected score of a map with no information (the target's share of the input)"
    return table


def box_scores_table(rows: list[dict], target: str) -> Any:
    """A rich table: how each box the method draws overlaps the target (MGE-CNN: box e is where expert e + 1
    zooms in)."""
    from rich.table import Table

    table = Table(title=f"{rows[0]['method']} boxes vs {target}")
    for col in ("box", "images", "target inside box", "box on target", "IoU", "box area"):
        table.add_column(col, justify="left" if col == "box" else "right")
    for r in rows:
        table.add_row(str(r["box"]), str(r["images"]), f"{r['target_inside']:.3f}", f"{r['box_on_target']:.3f}",
                      f"{r['iou']:.3f}", f"[dim]{r['box_area']:.3f}[/]")
    table.caption = ("target inside box: the share of the target the box frames; box on target: the share of the "
                     "box that is target; box area: its share of the input")
    return table


@contextlib.contextmanager
def _progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    if total <= 1:
        yield lambda n: None
        return
    with progress_bar() as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)
