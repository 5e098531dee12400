"""Parity between the torch model and an exported ONNX file: max |Δprob| and top-1 agreement."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fgcli.console import track
from fgcli.errors import UserError

#: max |Δprob| allowed for an fp32 export; fp16 / int8 are judged by top-1 agreement (int8 also by accuracy)
FP32_PROB_TOL = 1e-4
MIN_TOP1_AGREEMENT = {"fp32": 1.0, "fp16": 0.99}
#: a candidate's top-1 "agrees" when the reference gives it a probability within this of the reference's top-1:
#: near-ties (an under-trained, almost uniform model) are not disagreements
TOP1_TIE_TOL = 1e-3

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


def compare(reference: ProbFn, candidate: ProbFn, images: np.ndarray, inputs: str,
            batch_size: int = 8) -> Parity:
    """Run `images` (N x 3 x H x W) through both probability functions in batches and compare them."""
    ref_parts, cand_parts = [], []
    for i in track(range(0, len(images), batch_size), "verify: torch vs onnxruntime"):
        batch = np.ascontiguousarray(images[i:i + batch_size], dtype=np.float32)
        ref_parts.append(np.asarray(reference(batch), dtype=np.float64))
        cand_parts.append(np.asarray(candidate(batch), dtype=np.float64))
    ref, cand = np.concatenate(ref_parts), np.concatenate(cand_parts)
    if ref.shape != cand.shape:
        raise UserError(f"the ONNX model returns probabilities of shape {cand.shape}, torch {ref.shape}. "
                        "Re-export; if it persists, report it with --debug.")
    finite = np.isfinite(cand).all()
    delta = float(np.abs(ref - cand).max()) if finite else float("inf")
    ref_of_cand_top1 = np.take_along_axis(ref, cand.argmax(1)[:, None], axis=1)[:, 0]
    agree = float(((ref_of_cand_top1 >= ref.max(1) - TOP1_TIE_TOL) & np.isfinite(cand).all(1)).mean())
    return Parity(num_images=len(images), max_abs_dprob=delta, top1_agreement=agree, inputs=inputs)


def check(parity: Parity, precision: str, path: str) -> None:
    """Fail with a clear message when `parity` is outside the tolerance for `precision` (fp32 / fp16)."""
    if precision == "fp32" and not parity.max_abs_dprob <= FP32_PROB_TOL:
        raise UserError(f"verification failed for {path}: max |Δprob| {parity.max_abs_dprob:.2e} > {FP32_PROB_TOL:g} "
                        f"between torch and onnxruntime ({parity.line()}). The file was written but does not match "
                        "the checkpoint; try --exporter torchscript, or report it with --debug.")
    need = MIN_TOP1_AGREEMENT.get(precision)
    if need is not None and parity.top1_agreement < need:
        raise UserError(f"verification failed for {path}: top-1 agreement {100 * parity.top1_agreement:.2f}% < "
                        f"{100 * need:.0f}% ({parity.line()}). The file was written but its predictions differ from "
                        "the checkpoint's" + ("; use the fp32 file." if precision != "fp32" else "."))
