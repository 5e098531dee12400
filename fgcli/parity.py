"""Parity between two runtimes of one model: the one comparison and the one tolerance table.

`fgcli export` checks every file it writes against the torch model, `fgcli bench --verify` every backend
against the first one, and the int8 export its file against the fp32 one, all with `compare_probs` and
`TOLERANCES`. Agreement counts a candidate's top-1 as agreeing when the reference gives it a probability within
`TOP1_TIE_TOL` of the reference's own top-1: near-ties (an under-trained, almost uniform model) are not
disagreements, real flips and NaNs are. An image whose |Δprob| exceeds the fp32 tolerance is re-run through
the reference with rounding-level input noise (`unstable_rows`): where the reference itself moves that much,
the model sits at one of its discrete decisions there (HERBS' top-k token selection, MGE-CNN's box threshold),
and the image is set aside from |Δprob| (named in the line) instead of failing a correct file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fgcli.console import track
from fgcli.errors import UserError

#: a candidate's top-1 "agrees" when the reference gives it a probability within this of the reference's top-1
TOP1_TIE_TOL = 1e-3
#: the input noise (std, on normalised pixels: 1e-4 of one 8-bit grey level) and draws that probe whether the
#: reference is at a discrete decision on an image; it is when it moves by at least UNSTABLE_SHARE of the gap
NOISE_STD = 1e-6
NOISE_DRAWS = 4
UNSTABLE_SHARE = 0.5


@dataclass(frozen=True)
class Tolerance:
    """What a candidate of one precision must meet against an fp32 reference on the same inputs."""

    max_dprob: float | None  # the largest |Δprob| allowed (None: judged by top-1 agreement alone)
    min_agreement: float  # the top-1 agreement needed, a fraction in [0, 1]


#: per precision of the candidate. fp32: the same arithmetic up to the order of the sums. tf32: fp32 on a GPU,
#: whose convolutions may run in TF32 (torch's cuDNN default). Reduced precisions are judged by top-1 agreement
#: (int8 also by the top-1 change on the validation split, `fgcli export --int8-max-drop`).
TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(max_dprob=1e-4, min_agreement=1.0),
    "tf32": Tolerance(max_dprob=1e-3, min_agreement=1.0),
    "fp16": Tolerance(max_dprob=None, min_agreement=0.99),
    "bf16": Tolerance(max_dprob=None, min_agreement=0.99),
    "int8": Tolerance(max_dprob=None, min_agreement=0.95),
}


def tolerance(precision: str, gpu: bool = False) -> Tolerance:
    """The row of `TOLERANCES` for a candidate of `precision` (fp32 on a GPU: the tf32 row)."""
    if precision == "fp32" and gpu:
        precision = "tf32"
    return TOLERANCES.get(precision, TOLERANCES["fp16"])


ProbFn = Callable[[np.ndarray], np.ndarray]


@dataclass
class Parity:
    """How closely a candidate's probabilities follow the reference on the same inputs."""

    num_images: int
    max_abs_dprob: float
    top1_agreement: float  # fraction in [0, 1] (reference near-ties within TOP1_TIE_TOL count as agreeing)
    inputs: str  # where the inputs came from, in words
    unstable: int = 0  # images left out of max_abs_dprob: the reference itself moves as much under input noise
    unstable_dprob: float = 0.0  # the largest |Δprob| among them

    def line(self) -> str:
        text = (f"max |Δprob| {self.max_abs_dprob:.2e}, top-1 agreement {100 * self.top1_agreement:.2f}% "
                f"on {self.num_images} {self.inputs}")
        if self.unstable:
            text += (f" ({self.unstable} image{'s' if self.unstable != 1 else ''} at a discrete decision of the "
                     f"model left out of |Δprob|: up to {self.unstable_dprob:.2e}, as the reference itself moves "
                     f"under {NOISE_STD:g} input noise)")
        return text


def compare_probs(reference: np.ndarray, candidate: np.ndarray, inputs: str = "",
                  unstable: np.ndarray | None = None) -> Parity:
    """The parity of two N x C probability arrays (a non-finite candidate row never agrees). `unstable`: a mask of
    the rows left out of max |Δprob| (`unstable_rows`); they still count in the top-1 agreement."""
    ref, cand = np.asarray(reference, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise UserError(f"the candidate returns probabilities of shape {cand.shape}, the reference {ref.shape}. "
                        "Re-export; if it persists, report it with --debug.")
    if not len(ref):
        return Parity(num_images=0, max_abs_dprob=0.0, top1_agreement=1.0, inputs=inputs)
    finite = np.isfinite(cand).all(1)
    rows = np.where(finite, np.abs(ref - np.nan_to_num(cand)).max(1), np.inf)
    aside = np.zeros(len(ref), bool) if unstable is None else np.asarray(unstable, bool) & finite
    delta = float(rows[~aside].max()) if (~aside).any() else 0.0
    ref_of_cand_top1 = np.take_along_axis(ref, np.nan_to_num(cand, nan=-np.inf).argmax(1)[:, None], axis=1)[:, 0]
    agree = float(((ref_of_cand_top1 >= ref.max(1) - TOP1_TIE_TOL) & finite).mean())
    return Parity(num_images=len(ref), max_abs_dprob=delta, top1_agreement=agree, inputs=inputs,
                  unstable=int(aside.sum()), unstable_dprob=float(rows[aside].max()) if aside.any() else 0.0)


def unstable_rows(reference: ProbFn, images: np.ndarray, ref_probs: np.ndarray, cand_probs: np.ndarray,
                  threshold: float | None = None, seed: int = 0) -> np.ndarray:
    """A mask of the images where the candidate's |Δprob| exceeds `threshold` (default: the fp32 tolerance) and
    the reference itself moves by at least UNSTABLE_SHARE of that gap when its input moves by NOISE_STD: the
    model is at a discrete decision there, where any change in the order of fp32 sums may tip it."""
    threshold = TOLERANCES["fp32"].max_dprob if threshold is None else threshold
    ref, cand = np.asarray(ref_probs, dtype=np.float64), np.asarray(cand_probs, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        gap = np.abs(ref - cand).max(1)
    mask = np.zeros(len(ref), bool)
    suspects = np.flatnonzero(np.isfinite(gap) & (gap > threshold))
    if not len(suspects):
        return mask
    rng = np.random.default_rng(seed)
    batch = np.ascontiguousarray(images[suspects], dtype=np.float32)
    moved = np.zeros(len(suspects))
    for _ in range(NOISE_DRAWS):
        noisy = batch + rng.standard_normal(batch.shape).astype(np.float32) * np.float32(NOISE_STD)
        moved = np.maximum(moved, np.abs(np.asarray(reference(noisy), dtype=np.float64) - ref[suspects]).max(1))
    mask[suspects] = moved >= UNSTABLE_SHARE * gap[suspects]
    return mask


def compare(reference: ProbFn, candidate: ProbFn, images: np.ndarray, inputs: str, batch_size: int = 8,
            what: str = "verify: torch vs the exported file", exact: bool = True) -> Parity:
    """Run `images` (N x 3 x H x W) through both probability functions in batches and compare them. `exact`: the
    candidate computes in fp32 (judged by |Δprob|), so images at a discrete decision are set aside."""
    ref_parts, cand_parts = [], []
    for i in track(range(0, len(images), batch_size), what):
        batch = np.ascontiguousarray(images[i:i + batch_size], dtype=np.float32)
        ref_parts.append(np.asarray(reference(batch), dtype=np.float64))
        cand_parts.append(np.asarray(candidate(batch), dtype=np.float64))
    ref, cand = np.concatenate(ref_parts), np.concatenate(cand_parts)
    return compare_probs(ref, cand, inputs, unstable_rows(reference, images, ref, cand) if exact else None)


def failure(parity: Parity, precision: str, gpu: bool = False, min_agreement: float | None = None) -> str | None:
    """How `parity` misses the tolerance of `precision` (one clause), or None when it meets it. `min_agreement`
    (a fraction) replaces the table's agreement for the reduced precisions."""
    need = tolerance(precision, gpu)
    agreement = need.min_agreement if min_agreement is None or need.max_dprob is not None else min_agreement
    if need.max_dprob is not None and not parity.max_abs_dprob <= need.max_dprob:
        return (f"max |Δprob| {parity.max_abs_dprob:.2e} > {need.max_dprob:g}, top-1 agreement "
                f"{100 * parity.top1_agreement:.2f}%")
    if not parity.top1_agreement >= agreement:
        return (f"top-1 agreement {100 * parity.top1_agreement:.2f}% < {100 * agreement:g}% (max |Δprob| "
                f"{parity.max_abs_dprob:.2e})")
    return None


def on_gpu(device: str) -> bool:
    """Whether a predictor's device (in words) is a GPU: its fp32 is judged by the tf32 row."""
    return "cuda" in device.lower()


def check(parity: Parity, precision: str, path: str, against: str = "torch", hint: str = "",
          gpu: bool = False) -> None:
    """A one-line error when the file at `path` misses the tolerance of `precision` against `against`."""
    problem = failure(parity, precision, gpu=gpu)
    if problem is None:
        return
    advice = hint or ("use the fp32 file." if precision != "fp32" else "report it with --debug.")
    raise UserError(f"verification failed for {path}: {problem} against {against} on {parity.num_images} "
                    f"{parity.inputs}. The file was written but its predictions differ from the checkpoint's; "
                    f"{advice}")
