"""The class pairs a model confuses most, from its confusion matrix (`confusion[true, predicted]` counts)."""

from __future__ import annotations

from typing import Any

import numpy as np

#: pairs listed in metrics.json and the printed report unless asked otherwise
TOP_PAIRS = 5


def confused_pairs(confusion: Any, classes: list[str], top: int = TOP_PAIRS) -> list[dict[str, Any]]:
    """The `top` unordered class pairs with the most mistakes between them (both directions added), largest first.

    Each pair: `a` (the class mistaken for the other more often, then: by the larger share of its images; then
    the lower index), `b`, their indices,
    `a_as_b` (images of a predicted as b) and `a_as_b_share` (of a's images), the same for `b_as_a`, and `total`.
    Pairs the model never confuses are left out; ties in `total` go by the larger share, then by class index.
    """
    c = np.asarray(confusion, dtype=np.int64)
    if c.ndim != 2 or c.shape[0] != c.shape[1] or c.shape[0] != len(classes):
        raise ValueError(f"confusion matrix of shape {c.shape} does not match {len(classes)} classes")
    totals = c.sum(axis=1)
    share = c / np.maximum(totals, 1)[:, None]
    upper = np.triu_indices(len(classes), k=1)
    both = c[upper] + c.T[upper]
    rows = []
    for i, j, total in zip(*upper, both, strict=True):
        if total == 0:
            continue
        if (c[j, i], share[j, i]) > (c[i, j], share[i, j]):
            i, j = j, i
        rows.append((-int(total), -max(share[i, j], share[j, i]), min(i, j), max(i, j), int(i), int(j)))
    pairs = []
    for neg_total, _, _, _, i, j in sorted(rows)[:max(top, 0)]:
        pairs.append({"a": classes[i], "b": classes[j], "a_index": i, "b_index": j,
                      "a_as_b": int(c[i, j]), "a_as_b_share": float(share[i, j]),
                      "b_as_a": int(c[j, i]), "b_as_a_share": float(share[j, i]), "total": -neg_total})
    return pairs


def pairs_table(pairs: list[dict[str, Any]], title: str = "Most confused class pairs") -> Any:
    """A rich table: each pair with its mistakes in both directions (count and share of the true class)."""
    from rich.table import Table

    table = Table(title=title)
    for name, justify in (("#", "right"), ("class A", "left"), ("class B", "left"), ("A → B", "right"),
                          ("B → A", "right"), ("total", "right")):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for rank, p in enumerate(pairs, start=1):
        table.add_row(str(rank), p["a"], p["b"], f"{p['a_as_b']} ({100 * p['a_as_b_share']:.1f}% of A)",
                      f"{p['b_as_a']} ({100 * p['b_as_a_share']:.1f}% of B)", str(p["total"]))
    table.caption = ("A → B: test images of A predicted as B (share of A's test images)" if pairs
                     else "no class was mistaken for another")
    return table
