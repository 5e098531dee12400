"""`fgcli eval --ood DIR`: score images of other classes with the model and measure how well each score separates
them from the evaluated split (AUROC, FPR at 95 % TPR), plus what the stored rejection threshold does.

DIR is a folder of images (searched recursively) or a prepared data set (its test split). The scores and the
measures are in `fgcli.engine.ood`; this module finds the images, runs the model over them and writes the
`ood` section of metrics.json.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fgcli.console import log
from fgcli.errors import UserError

#: "in-distribution confidence": the median max probability of the split's images, which images of the model's
#: own classes reach half the time. The 95 %-recall level would not do: whenever the FPR at 95 % TPR is above 50 %,
#: common for a weak model or unseen species of the same kind, most genuinely new images clear it (a false alarm).
ID_QUANTILE = 0.5
#: above this share of DIR's images at in-distribution confidence, eval warns that DIR may hold the model's classes
#: (0.5 expected for the model's own classes; 0.4 leaves room for sampling noise and is reached by two normal score
#: distributions at an AUROC of about 0.57)
WARN_SHARE = 0.4


@dataclass
class OodImages:
    """The images of an --ood source and the class names it holds (subfolders, or a prepared set's classes)."""

    where: str
    paths: list[Path]
    names: list[str] = field(default_factory=list)
    crop_bottom: int = 0


def find_images(source: str | Path) -> OodImages:
    """The images of `source`: a prepared data set's test split, or every image file under a folder."""
    from fgcli.data.images import IMAGE_EXTENSIONS, is_image_name

    root = Path(source).expanduser()
    if not root.exists():
        raise UserError(f"--ood {source} does not exist. Give a folder of images of classes the model was not "
                        "trained on (searched recursively), or a prepared data set.")
    if not root.is_dir():
        raise UserError(f"--ood {source} is not a folder. Give a folder of images of other classes (searched "
                        "recursively), or a prepared data set.")
    if (root / "dataset.yaml").is_file():
        from fgcli.data.manifest import load_prepared

        prepared = load_prepared(root)
        samples = prepared.splits.get("test") or []
        if not samples:
            raise UserError(f"--ood {source} is a prepared data set without test images. Prepare it with a test "
                            "split, or give a folder of images.")
        return OodImages(f"{root} (test split)", [prepared.source_root / s.path for s in samples],
                         list(prepared.classes), prepared.crop_bottom)
    try:
        paths = sorted(p for p in root.rglob("*") if is_image_name(p.name) and p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(root).parts))
        names = sorted({p.parent.name for p in paths if p.parent != root})
    except OSError as e:
        raise UserError(f"--ood {source} cannot be read ({type(e).__name__}: {e}). Check its permissions.") from e
    if not paths:
        raise UserError(f"--ood {source} holds no images ({', '.join(IMAGE_EXTENSIONS)}, searched recursively). "
                        "Point it at a folder of images of classes the model was not trained on.")
    return OodImages(str(root), paths, names)


class _ImageFiles:
    """A torch Dataset over image files: (tensor, 0, ok, reason); an unreadable file gives ok = 0."""

    def __init__(self, paths: list[Path], transform: Callable, size: int, crop_bottom: int = 0) -> None:
        self.paths, self.transform, self.size, self.crop_bottom = paths, transform, size, crop_bottom

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, int, int, str]:
        import torch

        from fgcli.data.images import load_rgb

        try:
            image = load_rgb(self.paths[index])
            if self.crop_bottom > 0 and image.height > self.crop_bottom + 1:
                image = image.crop((0, 0, image.width, image.height - self.crop_bottom))
            return self.transform(image), 0, 1, ""
        except Exception as e:  # unreadable, truncated, not an image: left out of the scores, and said
            text = str(e).splitlines()[0][:120] if str(e) else ""
            return torch.zeros(3, self.size, self.size), 0, 0, f"{type(e).__name__}: {text}"


@dataclass
class OodScores:
    """The model's scores of the readable --ood images."""

    where: str
    book: Any  # fgcli.engine.calibration.ScoreBook, rows of the readable images only
    count: int
    skipped: list[tuple[str, str]]
    names: list[str]


def score_images(model: Any, images: OodImages, preprocess: Any, num_classes: int, *, batch_size: int = 64,
                 workers: int = 0, device: Any = None, progress: Callable[[int], None] | None = None) -> OodScores:
    """Run `model` (a torch Method or an onnxruntime predictor, as `fgcli.engine.evaluate.evaluate` takes) over
    the images and keep the fused logits (and the heads' agreement) of each readable one."""
    from torch.utils.data import DataLoader

    from fgcli.data.transforms import eval_transform
    from fgcli.engine.calibration import ScoreBook
    from fgcli.engine.evaluate import evaluate

    dataset = _ImageFiles(images.paths, eval_transform(preprocess), preprocess.img_size, images.crop_bottom)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)
    flags: list[np.ndarray] = []
    reasons: list[str] = []

    def batches() -> Iterator[tuple[Any, Any]]:
        for x, y, ok, why in loader:
            flags.append(ok.numpy().astype(bool))
            reasons.extend(why)
            yield x, y

    book = ScoreBook()
    evaluate(model, batches(), num_classes, device=device, scores=book, progress=progress)
    ok = np.concatenate(flags) if flags else np.zeros(0, dtype=bool)
    skipped = [(str(images.paths[i]), reasons[i]) for i in np.flatnonzero(~ok)]
    if not ok.any():
        first = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise UserError(f"--ood {images.where}: none of its {len(images.paths)} images could be read{first}. "
                        "Check the files.")
    if skipped:
        log.warning(f"--ood: {len(skipped)} of {len(images.paths)} images could not be read and are left out "
                    f"(first: {skipped[0][0]}: {skipped[0][1]})")
    return OodScores(images.where, _subset(book, ok), int(ok.sum()), skipped, images.names)


def _subset(book: Any, keep: np.ndarray) -> Any:
    """A ScoreBook of the kept rows only."""
    from fgcli.engine.calibration import ScoreBook

    state = book.state()
    out = ScoreBook()
    out.add([v[keep] for v in state["logits"]], state["targets"][keep],
            [v[keep] for v in state["probs"]] if state["probs"] is not None else None,
            {k: v[keep] for k, v in state["extra"].items()} or None)
    return out


def book_scores(book: Any, temperature: float | None) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Every score of the plain view of a ScoreBook (see fgcli.engine.ood.image_scores); the probabilities are
    the model's own calibrated ones when it gave them (an exported graph), else softmax(logits / T)."""
    from fgcli.engine.calibration import calibrated_probs
    from fgcli.engine.ood import image_scores

    logits, probs, _ = book.arrays()
    shown = probs[0] if probs is not None else calibrated_probs(logits[0], temperature or 1.0)
    return image_scores(logits[0], shown, book.extras(), temperature)


def ood_section(inside: Any, outside: OodScores, *, temperature: float | None, reject: dict[str, Any] | None,
                classes: list[str], split: str) -> dict[str, Any]:
    """The `ood` section of metrics.json: each score's AUROC and FPR at 95 % TPR (the `split` images against
    the --ood ones), what the stored rejection threshold does, and warnings about the --ood images."""
    from fgcli.engine.ood import TPR, rejection_rates, separation

    id_scores, notes = book_scores(inside, temperature)
    ood_scores, _ = book_scores(outside.book, temperature)
    section: dict[str, Any] = {
        "source": outside.where, "id_split": split, "num_id": int(len(id_scores["msp"])),
        "num_ood": outside.count, "unreadable": len(outside.skipped), "tpr": TPR,
        "temperature": temperature, "scores": separation(id_scores, ood_scores), "notes": notes,
    }
    level = float(np.quantile(id_scores["msp"], ID_QUANTILE))
    share = float(np.mean(ood_scores["msp"] >= level))
    section["ood_at_id_confidence"] = share
    warnings = []
    shared = sorted(set(outside.names) & set(classes))
    if shared:
        warnings.append(f"{len(shared)} of the --ood folder's class names are classes of the model (e.g. "
                        f"'{shared[0]}'): those images are not out-of-distribution")
    if share > WARN_SHARE:
        warnings.append(f"{100 * share:.0f}% of the --ood images are as confident as the median {split} image "
                        f"(images of the model's own classes: about 50%): does {outside.where} hold the model's "
                        "own classes?")
    section["warnings"] = warnings
    if reject is not None:
        section["reject"] = {**rejection_rates(id_scores["msp"], ood_scores["msp"], float(reject["threshold"])),
                             "recall": reject.get("recall"), "fitted_on": reject.get("split", "val")}
    return section


def ood_table(section: dict[str, Any]) -> Any:
    """A rich table: AUROC and FPR at 95 % TPR of each score, with the stored threshold's effect below."""
    from rich.table import Table

    table = Table(title=f"In-distribution ({section['id_split']}, {section['num_id']} images) vs --ood "
                        f"({section['num_ood']} images)")
    for name, justify in (("score", "left"), ("AUROC", "right"), (f"FPR @ {100 * section['tpr']:g}% TPR", "right"),
                          ("what it is", "left")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for name, row in section["scores"].items():
        table.add_row(name, f"{row['auroc']:.4f}", f"{100 * row['fpr95']:.1f}%", row["description"])
    caption = [f"{name}: {note}" for name, note in section["notes"].items()]
    reject = section.get("reject")
    if reject is not None:
        caption.append(f"stored rejection threshold {reject['threshold']:.4f} (fitted on val): keeps "
                       f"{100 * reject['id_kept']:.1f}% of the {section['id_split']} images, rejects "
                       f"{100 * reject['ood_rejected']:.1f}% of the --ood images")
    else:
        caption.append("no stored rejection threshold: `fgcli calibrate CHECKPOINT` fits one on val")
    table.caption = "\n".join(caption)
    return table
