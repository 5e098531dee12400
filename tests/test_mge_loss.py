"""MGE-CNN's loss terms against hand-computed values, their switches, and gradient routing (spec §2.2, §3)."""

from __future__ import annotations

import math

import pytest
import torch

from fgcli.config import Config
from fgcli.methods import build_method
from fgcli.methods.mge import diversity_official, diversity_paper

CUR = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
PREV = torch.tensor([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
Y = torch.tensor([1, 2])


def _softmax(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def _ce(row: list[float], y: int) -> float:
    return -math.log(_softmax(row)[y])


def test_diversity_official_by_hand() -> None:
    # D = 1/(B*C) sum_{b,c} exp(-d_bc), d_bc = q̄ (log q̄ - ℓ̄), y entries zeroed (d = 0 there), no renorm.
    total = 0.0
    for cur, prev, y in zip(CUR.tolist(), PREV.tolist(), Y.tolist(), strict=True):
        q = _softmax(prev)
        log_p = [math.log(p) for p in _softmax(cur)]
        for c in range(3):
            d = 0.0 if c == y else q[c] * (math.log(q[c]) - log_p[c])
            total += math.exp(-d)
    expected = total / 6
    assert diversity_official(CUR, PREV, Y).item() == pytest.approx(expected, rel=1e-6)


def test_diversity_paper_by_hand() -> None:
    # D = mean_b exp(-KL(q̃ || p̃)), q̃ / p̃ = the distributions without class y, renormalised.
    values = []
    for cur, prev, y in zip(CUR.tolist(), PREV.tolist(), Y.tolist(), strict=True):
        rest = [c for c in range(3) if c != y]
        q = _softmax([prev[c] for c in rest])
        p = _softmax([cur[c] for c in rest])
        values.append(math.exp(-sum(qi * math.log(qi / pi) for qi, pi in zip(q, p, strict=True))))
    assert diversity_paper(CUR, PREV, Y).item() == pytest.approx(sum(values) / 2, rel=1e-6)


def test_diversity_gradient_reaches_only_the_current_logits() -> None:
    cur, prev = CUR.clone().requires_grad_(True), PREV.clone().requires_grad_(True)
    for form in (diversity_official, diversity_paper):
        cur.grad = prev.grad = None
        form(cur, prev, Y).backward()
        assert prev.grad is None and cur.grad.abs().sum() > 0


def _model(**mge: object) -> torch.nn.Module:
    cfg = Config()
    cfg.method = "mge"
    cfg.model.backbone = "test_resnet"
    for key, value in mge.items():
        setattr(cfg.mge, key, value)
    torch.manual_seed(0)
    return build_method(cfg, 3)


def _outputs() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    names = [f"{k}{e}" for e in (1, 2, 3) for k in "gpc"] + ["gate"]
    return {n: torch.randn(2, 3, generator=gen) for n in names}


def test_total_is_the_weighted_sum_of_hand_computed_terms() -> None:
    model = _model(lambda_global=1.0, lambda_part=0.5, lambda_concat=2.0, lambda_gate=3.0, lambda_div=0.25)
    out = _outputs()
    total, terms = model.loss(out, Y, epoch=0)
    rows = {k: v.tolist() for k, v in out.items()}
    ce = {k: sum(_ce(r, y) for r, y in zip(rows[k], Y.tolist(), strict=True)) / 2 for k in rows}
    for name in rows:
        assert terms[f"ce_{name}"].item() == pytest.approx(ce[name], rel=1e-6)
    div2 = diversity_official(out["c2"], out["c1"], Y).item()
    div3 = diversity_official(out["c3"], out["c2"], Y).item()
    assert terms["div2"].item() == pytest.approx(div2) and terms["div3"].item() == pytest.approx(div3)
    expected = (sum(ce[f"g{e}"] + 0.5 * ce[f"p{e}"] + 2.0 * ce[f"c{e}"] for e in (1, 2, 3))
                + 3.0 * ce["gate"] + 0.25 * (div2 + div3))
    assert total.item() == pytest.approx(expected, rel=1e-6)
    assert sorted(terms) == sorted([f"ce_{n}" for n in rows] + ["div2", "div3"])


def test_terms_switch_off() -> None:
    out = _outputs()
    total, terms = _model(lambda_part=0.0, lambda_gate=0.0, diversity="off").loss(out, Y, epoch=0)
    assert sorted(terms) == sorted([f"ce_{k}{e}" for e in (1, 2, 3) for k in "gc"])
    assert total.item() == pytest.approx(sum(t.item() for t in terms.values()), rel=1e-6)
    _, terms = _model(lambda_div=0.0).loss(out, Y, epoch=0)
    assert "div2" not in terms and "ce_gate" in terms
    _, terms = _model(diversity="paper").loss(out, Y, epoch=0)
    assert terms["div2"].item() == pytest.approx(diversity_paper(out["c2"], out["c1"], Y).item())


def test_staged_schedule_adds_experts_in_turn() -> None:
    model = _model(schedule="staged", stage_epochs=2)
    out = _outputs()
    all_terms = sorted([f"ce_{k}{e}" for e in (1, 2, 3) for k in "gpc"] + ["ce_gate", "div2", "div3"])

    def nonzero(epoch: int) -> set[str]:
        total, terms = model.loss(out, Y, epoch=epoch)
        assert sorted(terms) == all_terms  # the logged columns never change during a run
        assert total.item() == pytest.approx(sum(t.item() for t in terms.values()), rel=1e-6)
        return {k for k, v in terms.items() if v.item() != 0}

    assert nonzero(1) == {"ce_g1", "ce_p1", "ce_c1"}
    assert nonzero(3) == {"ce_g1", "ce_p1", "ce_c1", "ce_g2", "ce_p2", "ce_c2", "div2"}
    assert nonzero(4) == set(all_terms)


def _grad_owners(model: torch.nn.Module, term: torch.Tensor) -> set[str]:
    """Top-level parameter owners (trunks.0, experts.1.part_conv, gate_head, ...) with a nonzero gradient."""
    named = [(n, p) for n, p in model.named_parameters()]
    grads = torch.autograd.grad(term, [p for _, p in named], retain_graph=True, allow_unused=True)
    owners = set()
    for (name, _), grad in zip(named, grads, strict=True):
        if grad is not None and grad.abs().sum() > 0:
            parts = name.split(".")
            owners.add(".".join(parts[:3]) if parts[0] == "experts" else ".".join(parts[:2]))
    return owners


def test_gradient_routing() -> None:
    model = _model()
    model.train()
    images = torch.randn(2, 3, 64, 64)
    out = model(images, Y)
    _, terms = model.loss(out, Y, epoch=0)
    for e in (1, 2, 3):
        i = e - 1
        assert _grad_owners(model, terms[f"ce_g{e}"]) == {f"trunks.{i}", f"experts.{i}.global_fc"}
        assert _grad_owners(model, terms[f"ce_p{e}"]) == {f"experts.{i}.part_conv", f"experts.{i}.part_fc"}
        assert _grad_owners(model, terms[f"ce_c{e}"]) == {f"experts.{i}.concat_fc"}
    assert _grad_owners(model, terms["div2"]) == {"experts.1.concat_fc"}
    assert _grad_owners(model, terms["div3"]) == {"experts.2.concat_fc"}
    assert _grad_owners(model, terms["ce_gate"]) == {"trunks.3", "gate_head.mlp"}


def test_every_parameter_is_in_the_graph_even_with_terms_off() -> None:
    # DDP without find_unused_parameters needs every parameter to get a gradient tensor
    model = _model(lambda_part=0.0, diversity="off")
    out = model(torch.randn(2, 3, 64, 64), Y)
    total, _ = model.loss(out, Y, epoch=0)
    total.backward()
    assert all(p.grad is not None for p in model.parameters())
    assert all(p.grad.abs().sum() == 0 for p in model.experts[0].part_conv.parameters())
