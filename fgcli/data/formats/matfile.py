"""Reading MATLAB .mat index files (Stanford Cars, Stanford Dogs, Flowers-102) with scipy.io.loadmat."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fgcli.errors import UserError


def load_mat(path: Path) -> dict[str, Any]:
    """loadmat with squeezed arrays; clear errors for a missing, corrupt or MATLAB v7.3 (HDF5) file."""
    import scipy.io

    if not path.is_file():
        raise UserError(f"{path} is missing. Check that the data set was extracted completely.")
    try:
        return scipy.io.loadmat(str(path), squeeze_me=True, struct_as_record=True)
    except NotImplementedError:
        raise UserError(f"{path} is a MATLAB v7.3 (HDF5) file, which scipy cannot read. Use the official "
                        "file, or re-save it in MATLAB with save(..., '-v7').") from None
    except Exception as e:  # scipy raises ValueError / TypeError / OSError on corrupt files
        raise UserError(f"{path} is not a readable .mat file ({type(e).__name__}: {e}). Re-download it.") from None


def mat_field(mat: dict[str, Any], key: str, path: Path) -> Any:
    if key not in mat:
        keys = ", ".join(k for k in mat if not k.startswith("__"))
        raise UserError(f"{path} has no variable '{key}' (it has: {keys}). Is this the right file?")
    return mat[key]


def records(mat: dict[str, Any], key: str, path: Path) -> list[dict[str, Any]]:
    """A MATLAB struct array as a list of {field: python value}."""
    array = np.atleast_1d(mat_field(mat, key, path))
    names = array.dtype.names
    if not names:
        raise UserError(f"{path}: '{key}' is not a struct array. Is this the right file?")
    return [{name: scalar(row[name]) for name in names} for row in array]


def scalar(value: Any) -> Any:
    """Unwrap 0-d / 1-element numpy values into Python str / int / float."""
    while isinstance(value, np.ndarray):
        if value.size != 1:
            return value
        value = value.reshape(-1)[0]
    if isinstance(value, np.generic):
        return value.item()
    return value


def strings(value: Any) -> list[str]:
    """A MATLAB cell array of strings as a Python list."""
    return [str(scalar(v)).strip() for v in np.atleast_1d(value).reshape(-1)]


def numbers(value: Any, path: Path, key: str) -> list[int]:
    """A MATLAB numeric vector (or cell of numbers) as a list of ints."""
    flat = [scalar(v) for v in np.atleast_1d(value).reshape(-1)]
    out = []
    for v in flat:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise UserError(f"{path}: '{key}' holds a non-number {v!r}.") from None
        if not f.is_integer():
            raise UserError(f"{path}: '{key}' holds a non-integer {v!r}.")
        out.append(int(f))
    return out
