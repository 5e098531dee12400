"""The batched HERBS selector against the official per-sample loop and the lower-index tie rule (spec §2.6)."""

from __future__ import annotations

import pytest
import torch
from references import select_tokens_loop

from fgcli.methods.herbs.selector import rank_scores, select_tokens


def _python_order(key: list[float]) -> list[int]:
    """Descending by key, ties by lower index: the rule the model must follow."""
    return sorted(range(len(key)), key=lambda s: (-key[s], s))


@pytest.mark.parametrize("key", ["prob", "margin"])
def test_batched_selector_equals_official_loop(key):
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(6, 50, 8, generator=g)
    logits = torch.randn(6, 50, 7, generator=g) * 3
    ref = select_tokens_loop(feats, logits, 12)
    sel = select_tokens(feats, logits, 12, key=key)
    assert torch.equal(sel.order, ref["order"])
    assert torch.equal(sel.pred, ref["pred"])
    assert torch.equal(sel.features, ref["features"])
    assert torch.equal(sel.selected, ref["selected"])
    assert torch.equal(sel.dropped, ref["dropped"])
    assert torch.allclose(sel.threshold, ref["threshold"])
    assert sel.features.shape == (6, 12, 8) and sel.dropped.shape == (6, 38, 7)


def test_threshold_and_scores_by_hand():
    # one sample, 3 tokens, 2 classes; mean logits [2/3 ln3, 1/3 ln3] -> class 0; σ_0 = 1/2, 3/4, 1/4
    ln3 = torch.log(torch.tensor(3.0)).item()
    logits = torch.tensor([[[0.0, 0.0], [ln3, 0.0], [0.0, ln3]]])
    sel = select_tokens(torch.arange(3.0).view(1, 3, 1), logits, 1)
    assert sel.pred.tolist() == [0]
    assert sel.order.tolist() == [[1, 0, 2]]
    assert sel.score[0].tolist() == pytest.approx([0.5, 0.75, 0.25])
    assert sel.threshold.tolist() == pytest.approx([0.5])  # σ of the first dropped token
    assert sel.features[0, :, 0].tolist() == [1.0]


def test_many_ties_break_by_lower_index():
    # 4 distinct token rows repeated in a shuffled pattern: hundreds of exact ties per sample
    g = torch.Generator().manual_seed(1)
    rows = torch.randn(4, 5, generator=g) * 2
    pattern = torch.randint(0, 4, (3, 300), generator=g)
    logits = rows[pattern]
    feats = torch.arange(300.0).view(1, 300, 1).expand(3, -1, -1)
    for key in ("margin", "prob"):
        sel = select_tokens(feats, logits, 40, key=key)
        rk, _ = rank_scores(logits, sel.pred, key)
        for b in range(3):
            assert sel.order[b].tolist() == _python_order(rk[b].tolist())
        ref = select_tokens_loop(feats, logits, 40, stable=True)
        assert torch.equal(sel.order, ref["order"])
        assert sel.features[..., 0].long().tolist() == sel.order[:, :40].tolist()


def test_margin_avoids_saturation_ties():
    # σ of both tokens rounds to exactly 1.0 in fp32, the margin still orders them (40 > 30)
    logits = torch.tensor([[[30.0, 0.0], [40.0, 0.0], [0.0, 0.0]]])
    prob_key, prob = rank_scores(logits, torch.tensor([0]), "prob")
    assert prob[0, 0].item() == prob[0, 1].item() == 1.0
    assert select_tokens(torch.zeros(1, 3, 1), logits, 1, key="margin").order.tolist() == [[1, 0, 2]]
    assert select_tokens(torch.zeros(1, 3, 1), logits, 1, key="prob").order.tolist() == [[0, 1, 2]]


def test_label_override_ranks_for_the_given_class():
    logits = torch.tensor([[[5.0, 0.0], [0.0, 1.0], [0.0, 3.0]]])
    sel = select_tokens(torch.zeros(1, 3, 1), logits, 1, cls=torch.tensor([1]))
    assert sel.pred.tolist() == [1] and sel.order.tolist() == [[2, 1, 0]]


def test_keep_everything_gives_empty_dropped_set():
    logits = torch.randn(2, 6, 3, requires_grad=True)
    feats = torch.randn(2, 6, 4, requires_grad=True)
    sel = select_tokens(feats, logits, 6)
    assert sel.dropped.shape == (2, 0, 3)
    assert sel.threshold.tolist() == [0.0, 0.0]
    (sel.features.sum() + sel.selected.sum()).backward()
    assert torch.isfinite(feats.grad).all() and torch.isfinite(logits.grad).all()


def test_gradients_flow_through_gathered_tokens_only():
    feats = torch.randn(1, 5, 2, requires_grad=True)
    logits = torch.randn(1, 5, 3)
    sel = select_tokens(feats, logits, 2)
    sel.features.sum().backward()
    kept = set(sel.order[0, :2].tolist())
    for s in range(5):
        assert feats.grad[0, s].abs().sum().item() == (2.0 if s in kept else 0.0)


def test_invalid_num_select():
    with pytest.raises(ValueError, match="num_select"):
        select_tokens(torch.zeros(1, 3, 1), torch.zeros(1, 3, 2), 4)
