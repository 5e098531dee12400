"""The data a trained model is scored on: which data set, whether its classes match, which split, the loader.

One path for `eval` of a checkpoint, `eval` of an ONNX file, `attention-viz`, a resumed training run and
`export`'s verification / int8 calibration images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fgcli.console import log
from fgcli.errors import UserError


def run_data(cfg: Any, alternative: str) -> str:
    """The data path a run was trained on; a clear error naming `alternative` when it is not here."""
    data = str(cfg.data.path)
    if data != "demo" and not Path(data).exists():
        raise UserError(f"the run's data {data} does not exist here: pass {alternative}.")
    return data


def reachable_run_data(cfg: Any) -> Any | None:
    """The run's own PreparedDataset (its checkpoint's `config.data`), or None with a note when it is not
    reachable here: for the jobs that can fall back to random inputs (export's verification and int8 calibration)."""
    from fgcli.data.prepare import resolve_data

    try:
        return resolve_data(cfg.data)
    except (UserError, OSError) as e:
        log.info(f"the run's data ({cfg.data.path}) is not available here ({str(e).splitlines()[0][:160]}); "
                 "using random inputs")
        return None


def class_difference(expected: list[str], got: list[str]) -> str | None:
    """None when the class lists are equal (names and order), else what differs, in words."""
    if list(expected) == list(got):
        return None
    missing = [c for c in expected if c not in got]
    extra = [c for c in got if c not in expected]
    if not missing and not extra:
        first = next(i for i, (a, b) in enumerate(zip(expected, got, strict=True)) if a != b)
        return f"same names in a different order (index {first}: model '{expected[first]}', data '{got[first]}')"
    return (f"{len(expected)} vs {len(got)} classes"
            + (f"; only in the model: {missing[:5]}{' ...' if len(missing) > 5 else ''}" if missing else "")
            + (f"; only in the data: {extra[:5]}{' ...' if len(extra) > 5 else ''}" if extra else ""))


def check_classes(expected: list[str], got: list[str], data: str,
                  fix: str = "Evaluate on the data set the model was trained on.") -> None:
    """The model's class names must equal the data's (same names, same order); one message for every caller."""
    detail = class_difference(expected, got)
    if detail is not None:
        raise UserError(f"the data at {data} has different classes than the checkpoint (classes do not match: "
                        f"{detail}). {fix}")


def resolve_split(dataset: Any, split: str, data: str) -> list:
    """The samples of `split`, with a clear error listing the splits that exist."""
    available = [k for k, v in getattr(dataset, "splits", {}).items() if v]
    samples = list(dataset.splits.get(split) or [])
    if not samples and split == "val":
        raise UserError(f"--split val: the data at {data} has no validation split (splits: "
                        f"{', '.join(available) or '(none)'}), and the temperature and rejection threshold are never "
                        "fitted on test. Prepare it with one: `fgcli prepare-data FORMAT SRC --val-fraction 0.1`.")
    if not samples:
        raise UserError(f"--split {split}: the data at {data} has no '{split}' images. Available splits: "
                        f"{', '.join(available) or '(none)'}.")
    return samples


@dataclass
class SplitData:
    """A resolved data set, the samples of one split and (when asked for) an eval loader over them."""

    data: str
    dataset: Any
    samples: list
    loader: Any = None


def resolve_split_data(data_cfg: Any, data: str, split: str, classes: list[str], preprocess: Any = None,
                       batch_size: int = 64, workers: int | None = None) -> SplitData:
    """Resolve `data` with the run's own data settings `data_cfg` (val_fraction, demo parameters, so that
    `--split val` is the split it validated on), check the classes, pick the split and, given `preprocess`,
    build the eval loader."""
    from fgcli.data.prepare import resolve_data

    if data != data_cfg.path:
        data_cfg.path, data_cfg.format = data, "auto"
    dataset = resolve_data(data_cfg)
    check_classes(classes, list(dataset.classes), data)
    samples = resolve_split(dataset, split, data)
    loader = None
    if preprocess is not None:
        from fgcli.data.loaders import build_loader
        from fgcli.data.transforms import eval_transform

        loader = build_loader(samples, dataset.source_root, eval_transform(preprocess), batch_size, train=False,
                              workers=data_cfg.workers if workers is None else workers,
                              crop_bottom=int(getattr(dataset, "crop_bottom", 0) or 0))
    return SplitData(data, dataset, samples, loader)
