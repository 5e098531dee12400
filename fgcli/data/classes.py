"""`prepare-data --classes FILE` / `--exclude-classes FILE`: keep or drop named classes of a data set (e.g. train on
80 CUB species and keep the other 20 as images the model never saw). One class name per line; blank lines and
lines starting with '#' are ignored."""

from __future__ import annotations

import dataclasses
import difflib
from pathlib import Path

from fgcli.data.formats.base import RawDataset
from fgcli.errors import UserError


def read_class_list(path: str | Path, flag: str) -> list[str]:
    """The class names in a text file (one per line, in file order, duplicates dropped)."""
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"{flag} {path} does not exist. Give a text file with one class name per line.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{flag} {path} cannot be read ({type(e).__name__}); give a UTF-8 text file with one class "
                        "name per line.") from e
    names = [line.strip() for line in text.splitlines()]
    names = list(dict.fromkeys(n for n in names if n and not n.startswith("#")))
    if not names:
        raise UserError(f"{flag} {path} names no class. Write one class name per line.")
    return names


def _check_known(names: list[str], classes: list[str], flag: str, source: str) -> None:
    known = set(classes)
    unknown = [n for n in names if n not in known]
    if not unknown:
        return
    name = unknown[0]
    close = difflib.get_close_matches(name, classes, n=3, cutoff=0.5)
    hint = f" Close matches: {', '.join(repr(c) for c in close)}." if close else ""
    more = f" ({len(unknown)} unknown names in all)" if len(unknown) > 1 else ""
    raise UserError(f"{flag} {source}: '{name}' is not a class of this data set{more}.{hint} Use the names from "
                    "its class list (dataset.yaml `classes` of a prepared folder).")


def select_classes(raw: RawDataset, keep: list[str] | None = None, drop: list[str] | None = None,
                   keep_source: str = "", drop_source: str = "") -> RawDataset:
    """`raw` with only the classes in `keep` (all when None) minus those in `drop`, labels renumbered in the data
    set's own class order; a one-line error for a name that is not a class (with the closest ones)."""
    if keep is None and drop is None:
        return raw
    if keep is not None:
        _check_known(keep, raw.classes, "--classes", keep_source or "list")
    if drop is not None:
        _check_known(drop, raw.classes, "--exclude-classes", drop_source or "list")
    wanted = set(raw.classes if keep is None else keep) - set(drop or [])
    kept = [c for c in raw.classes if c in wanted]
    if not kept:
        raise UserError("--classes / --exclude-classes leave no class: keep at least one.")
    new_label = {raw.classes.index(c): i for i, c in enumerate(kept)}
    splits = {name: [dataclasses.replace(s, label=new_label[s.label]) for s in samples if s.label in new_label]
              for name, samples in raw.splits.items()}
    meta = dict(raw.meta, class_selection={"kept": len(kept), "of": len(raw.classes),
                                            "classes_file": keep_source or None,
                                            "exclude_classes_file": drop_source or None})
    return dataclasses.replace(raw, classes=kept, splits=splits, meta=meta)
