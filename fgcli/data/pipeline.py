"""The preparation pipeline: check every image, make the splits, write and summarise the prepared folder."""

from __future__ import annotations

import hashlib
import os
import shutil
import statistics
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml
from rich.table import Table

from fgcli import __version__
from fgcli.console import log
from fgcli.data.checks import check_images
from fgcli.data.demo import DemoParams, generate_demo
from fgcli.data.formats import FORMATS, reader
from fgcli.data.formats.base import RawDataset
from fgcli.data.images import DEFAULT_MAX_PIXELS, DEFAULT_MIN_SIZE
from fgcli.data.manifest import (
    SPLITS,
    PreparedDataset,
    Sample,
    bad_images_to_csv,
    load_prepared,
    write_prepared,
)
from fgcli.data.splits import carve
from fgcli.errors import UserError, unknown_choice
from fgcli.io import atomic_open

OUT_SUFFIX = "_fgcli"
BAD_REPORT_HEADER = "path,reason"  # first line of bad_images.csv


@dataclass
class PrepareOptions:
    """Everything besides the source that decides the prepared result."""

    val_fraction: float = 0.1  # carved from train when the data set has no official val split
    test_fraction: float = 0.2  # carved from train only when the data set has no test split at all
    seed: int = 0
    strict: bool = False  # bad images are an error instead of being skipped
    workers: int | None = None  # image-check processes; None = CPUs (max 8)
    level: str | None = None  # aircraft: variant | family | manufacturer
    min_size: int = DEFAULT_MIN_SIZE
    max_pixels: int = DEFAULT_MAX_PIXELS
    classes: list[str] | None = None  # keep only these classes (fgcli.data.classes); None = all
    exclude_classes: list[str] | None = None  # drop these classes
    classes_file: str = ""  # where the two lists came from (for messages only)
    exclude_classes_file: str = ""

    def validate(self) -> None:
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError(f"--val-fraction must be in [0, 1), got {self.val_fraction}.")
        if not 0.0 <= self.test_fraction < 1.0:
            raise UserError(f"--test-fraction must be in [0, 1), got {self.test_fraction}.")
        if self.min_size < 1:
            raise UserError(f"--min-size must be >= 1, got {self.min_size}.")
        if self.max_pixels < 1:
            raise UserError(f"--max-pixels must be >= 1, got {self.max_pixels}.")
        if self.workers is not None and self.workers < 1:
            raise UserError(f"--workers must be >= 1, got {self.workers}.")

    def identity(self) -> dict[str, Any]:
        """The options that change the output (workers and strictness do not)."""
        d = asdict(self)
        for key in ("workers", "strict", "classes_file", "exclude_classes_file"):
            d.pop(key)
        for key in ("classes", "exclude_classes"):  # older fingerprints (no selection) stay valid
            if d[key] is None:
                d.pop(key)
        return d


def read_source(fmt: str, src: Path, options: PrepareOptions) -> RawDataset:
    """Read a raw data set with the reader of `fmt` (not `demo`)."""
    if fmt not in FORMATS:
        raise unknown_choice("data set format", fmt, FORMATS)
    if options.level is not None and fmt != "aircraft":
        raise UserError(f"--level applies to the aircraft format only, not '{fmt}'. Remove --level.")
    return reader(fmt).read(src, level=options.level)


def prepare_demo(target: Path, params: DemoParams, options: PrepareOptions, fingerprint: str) -> PreparedDataset:
    """Generate, check and write the demo data set in a hidden staging folder beside `target`, then move it in.

    An error or Ctrl-C before the move leaves `target` as it was (no images without a manifest); an older
    prepared demo in `target` is replaced only once the new one is complete, manifest last.
    """
    params.validate()
    _check_replaceable(target, demo=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        raw = generate_demo(staging, params)
        finish(raw, staging, options, fingerprint=fingerprint)
        if not target.exists():
            os.replace(staging, target)
        else:
            target.mkdir(exist_ok=True)
            names = sorted(p.name for p in staging.iterdir() if p.name != "dataset.yaml") + ["dataset.yaml"]
            for name in names:  # dataset.yaml last: the folder reads as prepared only when all is in place
                old = target / name
                trash = None
                if old.is_dir():
                    trash = target / f".{name}-old-{os.getpid()}"
                    os.replace(old, trash)
                os.replace(staging / name, old)
                if trash is not None:
                    shutil.rmtree(trash, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return load_prepared(target)


def finish(raw: RawDataset, out: Path, options: PrepareOptions, fingerprint: str | None = None) -> PreparedDataset:
    """Check images, make the splits and write the prepared folder for an already-read data set (only the classes
    `options` keeps, when it names some)."""
    from fgcli.data.classes import select_classes

    raw = select_classes(raw, options.classes, options.exclude_classes, options.classes_file,
                         options.exclude_classes_file)
    _check_out(raw, out)
    splits = _dedupe(raw)
    paths = sorted({s.path for samples in splits.values() for s in samples})
    if not paths:
        raise UserError(f"{raw.root}: the {raw.format} index lists no images.")
    log.info(f"{raw.format}: {len(paths)} images in {len(raw.classes)} classes under {raw.root}")
    results = check_images([raw.root / p for p in paths], workers=options.workers, min_size=options.min_size,
                           max_pixels=options.max_pixels)
    by_path = dict(zip(paths, results, strict=True))
    bad = sorted(raw.skipped) + [(p, r.reason) for p, r in by_path.items() if r.reason is not None]
    _report_bad(bad, out, options.strict)
    try:
        return _finish_checked(raw, out, options, splits, paths, by_path, bad, fingerprint)
    except BaseException:
        if bad and not options.strict:  # the warning above points at bad_images.csv: it must exist
            _write_bad_report(out, bad)
        raise


def _finish_checked(raw: RawDataset, out: Path, options: PrepareOptions, splits: dict[str, list[Sample]],
                    paths: list[str], by_path: dict[str, Any], bad: list[tuple[str, str]],
                    fingerprint: str | None) -> PreparedDataset:
    """The rest of `finish` once the images are checked: drop bad images, carve splits, write the folder."""
    splits = {name: [s for s in samples if by_path[s.path].reason is None] for name, samples in splits.items()}
    official_val = bool(splits.get("val"))
    carved = []
    if not splits.get("test"):
        splits["train"], splits["test"] = carve(splits.get("train", []), options.test_fraction, options.seed + 1)
        if splits["test"]:
            carved.append("test")
            log.warning(f"{raw.format}: no test split in the source; held out {len(splits['test'])} training "
                        f"images as test (--test-fraction {options.test_fraction})")
    if not official_val:
        splits["train"], splits["val"] = carve(splits.get("train", []), options.val_fraction, options.seed)
        carved.append("val")
    _check_train_classes(raw, splits, out / "bad_images.csv" if bad else None)
    ok = [by_path[p] for p in paths if by_path[p].reason is None]
    meta = {
        "name": raw.name,
        "format": raw.format,
        "fgcli_version": __version__,
        "manifest_version": 1,
        # demo images live in the prepared folder itself: "." keeps it valid when the folder is moved
        "source_root": "." if raw.format == "demo" else str(raw.root),
        "num_classes": len(raw.classes),
        "classes": list(raw.classes),
        "splits": {name: len(splits.get(name, [])) for name in SPLITS},
        "official_val": official_val,
        "carved": carved,
        "val_fraction": options.val_fraction,
        "test_fraction": options.test_fraction,
        "seed": options.seed,
        "has_boxes": any(s.box is not None for v in splits.values() for s in v),
        "has_masks": any(s.mask is not None for v in splits.values() for s in v),
        "crop_bottom": int(raw.meta.get("crop_bottom", 0)),
        "image_stats": _stats(ok),
        "bad_images": len(bad),
        "options": options.identity(),
        "fingerprint": fingerprint or source_fingerprint(raw, options),
        **{k: v for k, v in raw.meta.items() if k != "crop_bottom"},
    }
    write_prepared(out, meta, {name: splits.get(name, []) for name in SPLITS}, bad)
    return load_prepared(out)


def _check_replaceable(out: Path, demo: bool = False) -> None:
    """Refuse to overwrite files in `out` that a previous prepare-data run did not write."""
    if not out.is_dir():
        return
    meta_path = out / "dataset.yaml"
    if meta_path.is_file():
        try:
            meta = yaml.safe_load(meta_path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            meta = None
        if isinstance(meta, dict) and "classes" in meta and (not demo or meta.get("format") == "demo"):
            return
    ours = {"dataset.yaml", "train.csv", "val.csv", "test.csv", "bad_images.csv"} | (
        {"images", "masks"} if demo else set())
    clash = sorted(p.name for p in out.iterdir() if p.name in ours)
    if clash == ["bad_images.csv"] and _is_bad_report(out / "bad_images.csv"):
        return  # left by a preparation that stopped with an error: ours to replace
    if clash:
        raise UserError(f"{out} already holds {', '.join(clash)} that prepare-data did not write; refusing to "
                        "replace them. Choose a new or empty folder with --out.")


def _is_bad_report(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n") == BAD_REPORT_HEADER
    except (OSError, UnicodeDecodeError):
        return False


def _check_out(raw: RawDataset, out: Path) -> None:
    _check_replaceable(out)
    root = raw.root.resolve()
    if raw.format != "demo" and out == root:
        raise UserError(f"--out {out} is the data set folder itself; choose another folder (default: "
                        f"{root}{OUT_SUFFIX}).")
    if raw.format == "imagefolder" and root in out.parents:
        raise UserError(f"--out {out} is inside the image folder {root}, where it would look like a class. "
                        "Choose a folder outside it.")


def _dedupe(raw: RawDataset) -> dict[str, list[Sample]]:
    owner: dict[str, str] = {}
    splits: dict[str, list[Sample]] = {}
    for name, samples in raw.splits.items():
        kept, dropped = [], 0
        for s in samples:
            if s.path in owner:
                if owner[s.path] != name:
                    raise UserError(f"{raw.root}: image {s.path} is in both the {owner[s.path]} and the {name} "
                                    "split; a test image must never be trained on. Fix the index.")
                dropped += 1
                continue
            owner[s.path] = name
            kept.append(s)
        if dropped:
            log.warning(f"{raw.format}: {dropped} duplicate entr{'y' if dropped == 1 else 'ies'} in the {name} "
                        "split ignored")
        splits[name] = kept
    return splits


def _report_bad(bad: list[tuple[str, str]], out: Path, strict: bool) -> None:
    if not bad:
        return
    shown = bad[:5]
    for path, reason in shown:
        log.warning(f"bad image {path}: {reason}")
    if strict:
        path, reason = bad[0]
        above = f"; the first {len(shown)} are listed above" if len(bad) > 1 else ""
        raise UserError(f"{len(bad)} bad image(s) (first: {path}: {reason}){above}. Fix or remove them, or run "
                        "without --strict to skip them (they are then listed in bad_images.csv).")
    listed = (f"the first {len(shown)} are shown above, all {len(bad)} are listed in" if len(bad) > len(shown)
              else "all are listed in")
    log.warning(f"skipped {len(bad)} bad image(s); {listed} {out / 'bad_images.csv'}")


def _write_bad_report(out: Path, bad: list[tuple[str, str]]) -> None:
    """bad_images.csv alone, when preparation stops with an error after the bad images were reported."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with atomic_open(out / "bad_images.csv", "w", encoding="utf-8", newline="") as handle:
            handle.write(bad_images_to_csv(bad))
    except (OSError, UserError) as e:
        log.warning(f"could not write {out / 'bad_images.csv'}: {e}")


def _check_train_classes(raw: RawDataset, splits: dict[str, list[Sample]], bad_report: Path | None) -> None:
    have = {s.label for s in splits.get("train", [])}
    missing = [c for i, c in enumerate(raw.classes) if i not in have]
    if missing:
        shown = ", ".join(repr(c) for c in missing[:5]) + (" ..." if len(missing) > 5 else "")
        why = f" after skipping bad images (listed in {bad_report})" if bad_report else ""
        raise UserError(f"{len(missing)} class(es) have no training images{why}: {shown}. Add images for them "
                        "or remove the classes.")


def _stats(checks: list) -> dict[str, Any]:
    if not checks:
        return {"count": 0}
    widths = [c.width for c in checks]
    heights = [c.height for c in checks]
    return {"count": len(checks),
            "width": {"min": min(widths), "median": statistics.median(widths), "max": max(widths)},
            "height": {"min": min(heights), "median": statistics.median(heights), "max": max(heights)}}


def summary_table(ds: PreparedDataset) -> Table:
    """The rich summary of a prepared data set: splits, image sizes, bad images skipped, where it lies."""
    table = Table(title=f"{ds.name} ({ds.format}): {ds.num_classes} classes", title_justify="left")
    table.add_column("split")
    table.add_column("images", justify="right")
    table.add_column("classes", justify="right")
    table.add_column("with box", justify="right")
    table.add_column("source")
    carved = ds.meta.get("carved", [])
    for name in SPLITS:
        samples = ds.splits.get(name, [])
        origin = f"carved from train ({ds.meta.get(f'{name}_fraction')})" if name in carved else "official"
        if ds.format in ("imagefolder", "csv", "demo") and name not in carved:
            origin = "source"
        table.add_row(name, str(len(samples)), str(len({s.label for s in samples})),
                      str(sum(s.box is not None for s in samples)), origin if samples else "-")
    stats = ds.meta.get("image_stats", {})
    if stats.get("count"):
        w, h = stats["width"], stats["height"]
        table.caption = (f"image sizes: {w['min']}-{w['max']} x {h['min']}-{h['max']} px (median "
                         f"{w['median']:g} x {h['median']:g}); bad images skipped: {ds.meta.get('bad_images', 0)}; "
                         f"written to {ds.root}")
        table.caption_justify = "left"
    return table


def default_out(src: Path, fmt: str) -> Path:
    """`<SRC>_fgcli` beside SRC when that folder is writable, else a folder under the user cache dir."""
    base = src.with_suffix("") if src.is_file() else src
    beside = base.with_name(base.name + OUT_SUFFIX)
    if _writable(beside):
        return beside
    digest = hashlib.sha1(f"{fmt}:{src}".encode()).hexdigest()[:10]
    return cache_dir() / "datasets" / f"{base.name}-{digest}"


def cache_dir() -> Path:
    """`$FGCLI_CACHE`, else `$XDG_CACHE_HOME/fgcli`, else `~/.cache/fgcli`."""
    if os.environ.get("FGCLI_CACHE"):
        return Path(os.environ["FGCLI_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "fgcli"


def _writable(folder: Path) -> bool:
    if folder.exists():
        return folder.is_dir() and os.access(folder, os.W_OK)
    parent = folder.parent
    return parent.is_dir() and os.access(parent, os.W_OK)


def source_fingerprint(raw: RawDataset, options: PrepareOptions) -> str:
    """A hash of the index contents, every image's size and mtime, and the options: equal = up to date."""
    h = hashlib.sha1()
    h.update(f"{raw.format}|{__version__}|{sorted(options.identity().items())}|{raw.classes}".encode())
    for path in sorted(raw.index_files):
        h.update(_stat_key(path).encode())
    for name in sorted(raw.splits):
        for s in raw.splits[name]:
            h.update(f"{name}|{s.path}|{s.label}|{s.box}|{s.mask}|{_stat_key(raw.root / s.path)}\n".encode(
                "utf-8", "backslashreplace"))
    return h.hexdigest()


def demo_fingerprint(params: DemoParams, options: PrepareOptions) -> str:
    text = f"demo|{__version__}|{sorted(params.to_dict().items())}|{sorted(options.identity().items())}"
    return hashlib.sha1(text.encode()).hexdigest()


def _stat_key(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return f"{path}:missing"
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"
