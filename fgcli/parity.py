"""Parity between two runtimes of one model: the one comparison and the one tolerance table.

`fgcli export` checks every file it writes against the torch model, `fgcli bench --verify` every backend
against the first one, and the int8 export its file against the fp32 one, all with `compare_probs` and
`TOLERANCES`. Agreement counts a candidate's top-1 as agreeing when the reference gives it a probability within
`TOP1_TIE_TOL` of the reference's own top-1: near-ties (an under-trained, almost uniform model) are not
disagreements, real flips and NaNs are.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fgcli.console import track
from fgcli.errors import UserError

#: a candidate's top-1 "agrees" when the reference gives it a probability within this of the reference's top-1
TOP1_TIE_TOL = 1e-3


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

    def line(self) -> str:
        return (f"max |Δprob| {self.max_abs_dprob:.2e}, top-1 agreement {100 * self.top1_agreement:.2f}% "
                f"on {self.num_images} {self.inputs}")


def compare_probs(reference: np.ndarray, candidate: np.ndarray, inputs: str = "") -> Parity:
    """The parity of two N x C probability arrays (a non-finite candidate row never agrees)."""
    ref, cand = np.asarray(reference, dtype=np.float64), np.asarray(candidate, dtype=np.float64)
    if ref.shape != cand.shape:
        raise UserError(f"the candidate returns probabilities of shape {cand.shape}, the reference {ref.shape}. "
                        "Re-export; if it persists, report it with --debug.")
    if not len(ref):
        return Parity(num_images=0, max_abs_dprob=0.0, top1_agreement=1.0, inputs=inputs)
    finite = np.isfinite(cand).all(1)
    delta = float(np.abs(ref - cand).max()) if finite.all() else float("inf")
    ref_of_cand_top1 = np.take_along_axis(ref, np.nan_to_num(cand, nan=-np.inf).argmax(1)[:, None], axis=1)[:, 0]
    agree = float(((ref_of_cand_top1 >= ref.max(1) - TOP1_TIE_TOL) & finite).mean())
    return Parity(num_images=len(ref), max_abs_dprob=delta, top1_agreement=agree, inputs=inputs)


def compare(reference: ProbFn, candidate: ProbFn, images: np.ndarray, inputs: str, batch_size: int = 8,
            what: str = "verify: torch vs the exported file") -> Parity:
    """Run `images` (N x 3 x H x W) through both probability functions in batches and compare them."""
    ref_parts, cand_parts = [], []
    for i in track(range(0, len(images), batch_size), what):
        batch = np.ascontiguousarray(images[i:i + batch_size], dtype=np.float32)
        ref_parts.append(np.asarray(reference(batch), dtype=np.float64))
        cand_parts.append(np.asarray(candidate(batch), dtype=np.float64))
    return compare_probs(np.concatenate(ref_parts), np.concatenate(cand_parts), inputs)


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
