"""The linear probe's settings (`probe.*`): the L2 grid searched on val, flipped copies, convergence, cache."""

from __future__ import annotations

from dataclasses import dataclass, field

SECTION = "probe"  # the config section: `probe.*` in recipes, args.yaml and --set


def default_grid() -> list[float]:
    """1e-1 down to 1e-6 in half decades (11 values)."""
    return [float(f"{10 ** (-k / 2):.3g}") for k in range(2, 13)]


@dataclass
class ProbeConfig:
    """Multinomial logistic regression on the frozen backbone's pooled features (fgcli.engine.logreg)."""

    # L2 weights λ of mean cross-entropy + λ/2 ||W||² (features standardised); the val-best is kept
    l2_grid: list[float] = field(default_factory=default_grid)
    flip: bool = False  # also fit on the horizontally flipped training images (their features too)
    max_iter: int = 1000  # L-BFGS iterations per grid value
    tol: float = 1e-8  # converged when the largest gradient entry is at most this
    cache: bool = True  # keep the features on disk ($FGCLI_CACHE/features), keyed by weights, size and data


#: the section's dataclass (fgcli.config.method_sections reads SECTION, CONFIG and checks)
CONFIG = ProbeConfig


def checks(c: ProbeConfig) -> list[tuple[bool, str]]:
    """Range checks that types alone cannot express."""
    return [
        (len(c.l2_grid) >= 1 and all(v > 0 for v in c.l2_grid), "probe.l2_grid must be a list of positive numbers"),
        (c.max_iter >= 1, "probe.max_iter must be >= 1"),
        (c.tol > 0, "probe.tol must be > 0"),
    ]
