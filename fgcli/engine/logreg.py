"""Multinomial logistic regression on fixed features, fitted to convergence (L-BFGS, float64), its L2 weight
chosen on a validation split from a grid: the linear-probe floor (fgcli.engine.probe).

Objective for one L2 weight λ: mean cross-entropy + λ/2 · ‖W‖² (the bias is not penalised), on features
standardised with the training mean and std; the returned weights act on the raw features. (scikit-learn's
C is 1 / (λ · n_train).)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class Fit:
    """One grid point: the weights (on standardised features) and how well they do."""

    l2: float
    weight: torch.Tensor  # C x D, float64
    bias: torch.Tensor  # C
    objective: float  # the training objective at the solution
    train_top1: float  # percent
    iterations: int
    grad_max: float  # largest |gradient| entry at the solution
    converged: bool
    val_top1: float | None = None  # percent
    val_nll: float | None = None  # mean cross-entropy on val


@dataclass
class ProbeFit:
    """The chosen fit, as a Linear layer on the raw features, and every grid point tried."""

    weight: torch.Tensor  # C x D, float64, on raw features
    bias: torch.Tensor
    chosen: Fit
    path: list[Fit] = field(default_factory=list)  # in the order fitted (strongest regularisation first)


def _objective(x: torch.Tensor, y: torch.Tensor, theta: torch.Tensor, num_classes: int,
               l2: float) -> torch.Tensor:
    d = x.shape[1]
    weight, bias = theta[:num_classes * d].view(num_classes, d), theta[num_classes * d:]
    return F.cross_entropy(x @ weight.T + bias, y) + 0.5 * l2 * weight.square().sum()


def fit_logistic(x: torch.Tensor, y: torch.Tensor, num_classes: int, l2: float,
                 init: tuple[torch.Tensor, torch.Tensor] | None = None, max_iter: int = 1000,
                 tol: float = 1e-8) -> Fit:
    """Minimise mean CE + l2/2 ‖W‖² over (W, b) with scipy's L-BFGS-B, from `init` (warm start) or zeros.

    Converged means the largest gradient entry is at most `tol`; the line search may stop a little before when
    it cannot improve in float64 any more, which is reported through `converged` / `grad_max`.
    """
    from scipy.optimize import minimize

    x, y = x.double(), y.long()
    d = x.shape[1]
    if init is None:
        theta0 = np.zeros(num_classes * d + num_classes)
    else:
        theta0 = torch.cat([init[0].double().flatten(), init[1].double()]).numpy()

    def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
        t = torch.from_numpy(theta).requires_grad_(True)
        loss = _objective(x, y, t, num_classes, l2)
        (grad,) = torch.autograd.grad(loss, t)
        return float(loss.detach()), grad.numpy().copy()

    result = minimize(fun, theta0, jac=True, method="L-BFGS-B",
                      options={"maxiter": int(max_iter), "maxfun": int(max_iter) * 2, "gtol": float(tol),
                               "ftol": 0.0, "maxcor": 20})
    theta = torch.from_numpy(result.x)
    value, grad = fun(result.x)
    weight, bias = theta[:num_classes * d].view(num_classes, d).clone(), theta[num_classes * d:].clone()
    grad_max = float(np.abs(grad).max())
    top1 = float(((x @ weight.T + bias).argmax(1) == y).double().mean()) * 100
    return Fit(l2=float(l2), weight=weight, bias=bias, objective=value, train_top1=top1,
               iterations=int(result.nit), grad_max=grad_max, converged=grad_max <= tol)


def standardise(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The training features' per-dimension mean and std (a constant dimension gets std 1)."""
    x = x.double()
    mean, std = x.mean(0), x.std(0, unbiased=False)
    return mean, torch.where(std > 1e-12, std, torch.ones_like(std))


def select_l2(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor | None, val_y: torch.Tensor | None,
              num_classes: int, grid: list[float], max_iter: int = 1000, tol: float = 1e-8,
              report: Callable[[Fit], None] | None = None) -> ProbeFit:
    """Fit every L2 weight of `grid` on train (strongest first, each warm-started from the previous solution)
    and keep the one with the best val top-1 (ties: the lower val cross-entropy, then the stronger L2).

    Without val data the grid must hold a single value. `report(fit)` is called after each grid point.
    """
    grid = sorted({float(v) for v in grid}, reverse=True)
    if (val_x is None or len(val_x) == 0) and len(grid) > 1:
        raise ValueError("choosing the L2 weight needs validation features")
    mean, std = standardise(train_x)
    xs = (train_x.double() - mean) / std
    vs = None if val_x is None or len(val_x) == 0 else (val_x.double() - mean) / std
    path: list[Fit] = []
    init = None
    for l2 in grid:
        fit = fit_logistic(xs, train_y, num_classes, l2, init=init, max_iter=max_iter, tol=tol)
        if vs is not None and val_y is not None:
            logits = vs @ fit.weight.T + fit.bias
            fit.val_top1 = float((logits.argmax(1) == val_y).double().mean()) * 100
            fit.val_nll = float(F.cross_entropy(logits, val_y.long()))
        path.append(fit)
        init = (fit.weight, fit.bias)
        if report is not None:
            report(fit)
    chosen = path[0] if vs is None else max(path, key=lambda f: (f.val_top1, -(f.val_nll or 0.0), f.l2))
    weight = chosen.weight / std  # W (x - m) / s + b = (W / s) x + (b - (W / s) m)
    bias = chosen.bias - weight @ mean
    return ProbeFit(weight=weight, bias=bias, chosen=chosen, path=path)
