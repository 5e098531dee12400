"""`fgcli predict`: classify images, folders (recursive) and globs with any registered model file.

Images are prepared exactly as the model's preprocessing says (from the checkpoint or the ONNX metadata,
through `fgcli.data.transforms.eval_transform`); unreadable files are reported and skipped.
"""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fgcli.errors import UserError
from fgcli.inference import Predictor
from fgcli.options import PredictOptions

_GLOB_CHARS = set("*?[")


#: what `--reject` answers for an image whose top-1 probability is below the model's rejection threshold
UNKNOWN = "unknown"


@dataclass
class Prediction:
    """The top-k classes of one image: (class name, class index, probability), most likely first; `rejected`:
    its top-1 probability is below the model's rejection threshold (only with `reject`)."""

    path: str
    top: list[tuple[str, int, float]]
    rejected: bool = False

    @property
    def decision(self) -> str:
        """The answer: the top-1 class, or 'unknown' when rejected."""
        return UNKNOWN if self.rejected else self.top[0][0]


@dataclass
class PredictResult:
    """Predictions in input order, plus the files that could not be read."""

    model: str
    backend: str
    device: str
    topk: int
    predictions: list[Prediction] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    reject_threshold: float | None = None  # with `reject`: the stored threshold the top-1 probability is held to


def _is_image(path: Path) -> bool:
    from fgcli.data.images import is_image_name

    return is_image_name(path.name)


def collect_images(sources: Sequence[str]) -> list[Path]:
    """Image files named by `sources`: files as given, folders recursively, glob patterns expanded.

    Errors name the source: a path that does not exist, a folder or glob with no images in it.
    """
    from fgcli.data.images import IMAGE_EXTENSIONS

    if not sources:
        raise UserError("no SOURCE given: pass image files, folders or glob patterns.")
    found: list[Path] = []
    for source in sources:
        path = Path(source).expanduser()
        if path.is_dir():
            images = sorted(p for p in path.rglob("*") if p.is_file() and _is_image(p)
                            and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not images:
                raise UserError(f"folder {source} contains no images ({', '.join(IMAGE_EXTENSIONS)}). Point "
                                "SOURCE at a folder with images, an image file, or a glob like 'photos/*.jpg'.")
            found += images
        elif path.is_file():
            found.append(path)
        elif _GLOB_CHARS & set(source):
            matches = sorted(Path(m) for m in glob.glob(os.path.expanduser(source), recursive=True))
            images = [m for m in matches if m.is_file() and _is_image(m)]
            if not images:
                raise UserError(f"the pattern '{source}' matched no images. Check the pattern (quote it so that "
                                "the shell does not expand it; use ** for subfolders).")
            found += images
        else:
            raise UserError(f"SOURCE {source} does not exist. Give image files, folders or glob patterns.")
    return list(dict.fromkeys(found))


def make_loader(predictor: Predictor) -> Callable[[Path], np.ndarray]:
    """Path -> preprocessed 3 x H x W float32 array, as the model's preprocessing says."""
    from fgcli.data.images import load_rgb
    from fgcli.data.transforms import eval_transform

    transform = eval_transform(predictor.info.preprocess)

    def load(path: Path) -> np.ndarray:
        return np.asarray(transform(load_rgb(path)), dtype=np.float32)

    return load


def _try(load: Callable[[Path], np.ndarray], path: Path) -> tuple[np.ndarray | None, str]:
    try:
        return load(path), ""
    except Exception as e:  # unreadable, truncated, not an image: report and go on
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else 'unreadable'}"


def predict_paths(predictor: Predictor, paths: Sequence[Path], topk: int = 5, batch_size: int = 32,
                  workers: int = 4, model: str = "", progress: Callable[[int], None] | None = None,
                  reject: bool = False) -> PredictResult:
    """Classify `paths` in batches; decoding runs on `workers` threads; unreadable files go to `skipped`.
    `reject`: an image whose top-1 probability is below the model's stored rejection threshold is marked
    `rejected` (its answer is 'unknown'; its probabilities stay listed)."""
    if batch_size < 1:
        raise UserError(f"--batch-size {batch_size} must be >= 1.")
    if topk < 1:
        raise UserError(f"--topk {topk} must be >= 1.")
    threshold = predictor.reject_threshold() if reject else None
    classes = predictor.info.classes
    k = min(topk, len(classes))
    result = PredictResult(model=model, backend=predictor.backend, device=predictor.device, topk=k,
                           reject_threshold=threshold)
    load = make_loader(predictor)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(paths), batch_size):
            chunk = list(paths[start:start + batch_size])
            arrays, ok = [], []
            for path, (array, reason) in zip(chunk, pool.map(lambda p: _try(load, p), chunk), strict=True):
                if array is None:
                    result.skipped.append((str(path), reason))
                else:
                    arrays.append(array)
                    ok.append(path)
            if arrays:
                _, probs = predictor(np.stack(arrays))
                order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
                for path, row, idx in zip(ok, probs, order, strict=True):
                    result.predictions.append(Prediction(str(path), [(classes[i], int(i), float(row[i]))
                                                                     for i in idx],
                                                         rejected=bool(threshold is not None
                                                                       and row[idx[0]] < threshold)))
            if progress is not None:
                progress(len(chunk))
    return result


def predict_sources(predictor: Predictor, sources: str | Path | Sequence[str | Path], options: PredictOptions,
                    model: str = "", progress: Callable[[int], None] | None = None) -> PredictResult:
    """`fgcli predict`: classify the images of `sources` (files, folders, globs) with the options' top-k, batch
    size, decoding threads and --reject, and write `options.out` (.csv / .json) when given."""
    names = [str(sources)] if isinstance(sources, (str, Path)) else [str(s) for s in sources]
    result = predict_paths(predictor, collect_images(names), topk=options.topk, batch_size=options.batch_size,
                           workers=options.workers, model=model, progress=progress, reject=options.reject)
    if options.out is not None:
        write_output(result, options.out)
    return result


def to_csv(result: PredictResult) -> str:
    """path, [decision,] class_1, prob_1, ..., class_k, prob_k (one row per readable image; `decision`, the top-1
    class or 'unknown', only with --reject)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    rejecting = result.reject_threshold is not None
    header = ["path"] + (["decision"] if rejecting else [])
    for i in range(1, result.topk + 1):
        header += [f"class_{i}", f"prob_{i}"]
    writer.writerow(header)
    for p in result.predictions:
        row: list[Any] = [p.path] + ([p.decision] if rejecting else [])
        for name, _, prob in p.top:
            row += [name, f"{prob:.6f}"]
        writer.writerow(row)
    return buf.getvalue()


def to_json(result: PredictResult) -> str:
    """The whole result (model, backend, predictions with class indices, skipped files; with --reject the
    threshold and each image's decision) as JSON."""
    rejecting = result.reject_threshold is not None
    data: dict[str, Any] = {"model": result.model, "backend": result.backend, "device": result.device,
                            "topk": result.topk}
    if rejecting:
        data["reject_threshold"] = result.reject_threshold
    data["predictions"] = [{"path": p.path, **({"decision": p.decision} if rejecting else {}),
                            "top": [{"class": n, "index": i, "prob": round(pr, 6)} for n, i, pr in p.top]}
                           for p in result.predictions]
    data["skipped"] = [{"path": path, "error": reason} for path, reason in result.skipped]
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def write_output(result: PredictResult, out: str | Path) -> Path:
    """Write CSV or JSON (by the file's suffix) atomically."""
    from fgcli.io import atomic_write_text

    path = Path(out)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise UserError(f"--out {out}: use a .csv or .json file name.")
    atomic_write_text(path, to_csv(result) if suffix == ".csv" else to_json(result))
    return path


def results_table(result: PredictResult, limit: int = 50) -> Any:
    """A rich table: one row per image with its top-k classes and probabilities (first `limit` images)."""
    from rich.markup import escape
    from rich.table import Table

    rejecting = result.reject_threshold is not None
    table = Table(title=f"Predictions ({result.backend}, {result.device})")
    table.add_column("image", overflow="fold")
    if rejecting:
        table.add_column("answer")
    for i in range(1, result.topk + 1):
        table.add_column(f"top-{i}" if result.topk > 1 else "class")
    for p in result.predictions[:limit]:
        answer = [f"[bold red]{UNKNOWN}[/]" if p.rejected else escape(p.decision)] if rejecting else []
        table.add_row(p.path, *answer, *[f"{escape(name)} [dim]{100 * prob:.1f}%[/]" for name, _, prob in p.top])
    more = len(result.predictions) - limit
    caption = f"{len(result.predictions)} images" + (f" ({more} more not shown: use --out)" if more > 0 else "")
    if rejecting:
        unknown = sum(p.rejected for p in result.predictions)
        caption += (f"; {unknown} answered {UNKNOWN}: top-1 probability below the rejection threshold "
                    f"{result.reject_threshold:.4f} (chosen on the validation split)")
    table.caption = caption
    return table
