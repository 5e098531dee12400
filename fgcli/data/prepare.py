"""Entry points: `prepare_dataset` (the prepare-data command) and `resolve_dataset` / `resolve_data` (--data).

`--data` accepts a prepared folder, a raw data set root, an ImageFolder, a CSV, or "demo". Raw sources are
prepared once into `<SRC>_fgcli` (or the user cache dir when SRC's folder is read-only) and reused while the
source and the options are unchanged. Under torchrun every rank may call it: a lock (fgcli.data.locking,
kept in the cache, never beside the data) makes the other ranks wait for the first one and reuse its result.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from fgcli.console import log
from fgcli.data.demo import DemoParams, generate_demo
from fgcli.data.formats import FORMATS, detect_format
from fgcli.data.locking import folder_lock
from fgcli.data.manifest import PreparedDataset, load_prepared
from fgcli.data.pipeline import (
    OUT_SUFFIX,
    PrepareOptions,
    cache_dir,
    default_out,
    demo_fingerprint,
    finish,
    prepare_demo,
    read_source,
    source_fingerprint,
)
from fgcli.errors import UserError, unknown_choice

__all__ = ["PrepareOptions", "cache_dir", "prepare_dataset", "resolve_data", "resolve_dataset"]


def prepare_dataset(fmt: str, src: str | Path | None, out: str | Path | None = None,
                    options: PrepareOptions | None = None, demo: DemoParams | None = None) -> PreparedDataset:
    """Prepare a data set of format `fmt` from `src` into `out` (default: beside `src`) and load it back."""
    options = options or PrepareOptions()
    options.validate()
    if fmt not in FORMATS:
        raise unknown_choice("data set format", fmt, FORMATS)
    if fmt == "demo":
        params = demo or DemoParams(seed=options.seed)
        target = Path(out or src or f"demo{OUT_SUFFIX}").expanduser().resolve()
        return prepare_demo(target, params, options, demo_fingerprint(params, options))
    if src is None:
        raise UserError(f"the {fmt} format needs SRC, the data set folder (or CSV file).")
    src_path = Path(src).expanduser()
    raw = read_source(fmt, src_path, options)
    target = Path(out).expanduser().resolve() if out else default_out(src_path.resolve(), fmt)
    return finish(raw, target, options)


def resolve_dataset(path: str | Path, *, fmt: str = "auto", val_fraction: float = 0.1, seed: int = 0,
                    test_fraction: float = 0.2, level: str | None = None, workers: int | None = None,
                    demo: DemoParams | None = None, strict: bool = False) -> PreparedDataset:
    """Turn whatever the user passed as --data into a PreparedDataset, preparing it when needed."""
    options = PrepareOptions(val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, strict=strict,
                             workers=workers, level=level)
    options.validate()
    text = str(path)
    if fmt == "demo" or (text == "demo" and fmt == "auto"):
        return _demo(demo or DemoParams(), options)
    src = Path(text).expanduser()
    if not src.exists():
        hint = " (use --data demo for the built-in synthetic data set)" if text.lower() == "demo" else ""
        raise UserError(f"--data {text} does not exist{hint}. Give a prepared folder, a data set root, an "
                        "ImageFolder, a CSV file or 'demo'.")
    src = src.resolve()
    if fmt == "auto":
        if (src / "dataset.yaml").is_file():
            log.info(f"data: prepared data set {src}")
            return load_prepared(src)
        found = detect_format(src)
        if found is None:
            raise UserError(f"could not tell what kind of data set {src} is: no dataset.yaml, no official index "
                            "files (CUB, NABirds, Cars, Aircraft, Dogs, Flowers-102), no <class>/ image folders "
                            "and not a .csv. Run `fgcli prepare-data FORMAT SRC` with the right format.")
        fmt, _root = found
        log.info(f"data: {src} is a data set in the {fmt} format (auto-detected)")
    elif fmt not in FORMATS:
        raise unknown_choice("data format", fmt, (*FORMATS, "auto"))
    raw = read_source(fmt, src, options)
    out = default_out(src, fmt)
    fingerprint = source_fingerprint(raw, options)
    with folder_lock(out):
        if _up_to_date(out, fingerprint):
            log.info(f"data: reusing the prepared manifest in {out}")
            return load_prepared(out)
        log.info(f"data: preparing {fmt} manifest in {out} (done once; later runs reuse it)")
        return finish(raw, out, options, fingerprint=fingerprint)


def resolve_data(data_cfg: Any, *, workers: int | None = None) -> PreparedDataset:
    """resolve_dataset driven by the config's `data` section (path, format, val_fraction, seed, demo_*)."""
    demo = DemoParams(seed=getattr(data_cfg, "seed", 0), size=data_cfg.demo_size, classes=data_cfg.demo_classes,
                      per_class=data_cfg.demo_per_class)
    return resolve_dataset(data_cfg.path, fmt=data_cfg.format, val_fraction=data_cfg.val_fraction,
                           seed=getattr(data_cfg, "seed", 0), level=getattr(data_cfg, "level", None),
                           workers=workers, demo=demo)


def _demo(params: DemoParams, options: PrepareOptions) -> PreparedDataset:
    """The demo set under the cache dir, generated once per parameter set (atomic folder rename)."""
    params.validate()
    final = cache_dir() / "demo" / params.key()
    fingerprint = demo_fingerprint(params, options)
    if _up_to_date(final, fingerprint):
        return load_prepared(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(final):
        if _up_to_date(final, fingerprint):
            return load_prepared(final)
        log.info(f"data: generating the demo data set ({params.classes} classes, {params.size} px) in {final}")
        staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
        try:
            raw = generate_demo(staging, params)
            finish(raw, staging, options, fingerprint=fingerprint)
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return load_prepared(final)


def _up_to_date(out: Path, fingerprint: str) -> bool:
    meta_path = out / "dataset.yaml"
    if not meta_path.is_file():
        return False
    try:
        meta = yaml.safe_load(meta_path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        return False
    return isinstance(meta, dict) and meta.get("fingerprint") == fingerprint
