"""HERBS benchmarks: the batched selector vs the official per-sample loop, and HERBS vs baseline training speed.

1. Selector: `fgcli.methods.herbs.selector.select_tokens` (batched, stateless) against a straight
   re-implementation of the official `WeaklySelector` loop (`select_tokens_loop`) on the same random inputs
   shaped like Swin-L at 384 (S = 2304/576/144/144, K = 256/128/64/32, C = 200, D = 1536), all 4 stages per
   call. Prints the time per call, the speed-up, and whether both select the same tokens in the same order.
2. Training throughput: forward + loss + backward steps/s of the `herbs` and `baseline` Method modules on
   random tensors (no data loading, no optimizer step), same backbone and image size, so the cost of the
   method itself is known.
3. Share: the selector's time inside whole HERBS forward passes of a real backbone (random weights).

    python benchmarks/herbs_selector.py                       # all parts, CPU
    python benchmarks/herbs_selector.py --part selector --batches 1 32
    python benchmarks/herbs_selector.py --part train --backbone resnet50 --img-size 224 --batch 8
    python benchmarks/herbs_selector.py --part share --backbone swin_large_patch4_window12_384 --img-size 384 \
        --batch 1 --steps 3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from fgcli.methods.herbs.selector import select_tokens
from fgcli.timing import time_calls

# the reference loops live with the tests (tests/references.py), not in the package
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from references import select_tokens_loop  # noqa: E402

STAGE_TOKENS = (2304, 576, 144, 144)
STAGE_K = (256, 128, 64, 32)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, repeats: int, device: torch.device) -> float:
    """Median seconds per call after one warm-up call."""
    return float(np.median(time_calls(fn, 1, repeats, sync=lambda: _sync(device))))


def _same(a, b: dict) -> bool:
    return (torch.equal(a.order, b["order"]) and torch.equal(a.features, b["features"])
            and torch.equal(a.selected, b["selected"]) and torch.equal(a.dropped, b["dropped"])
            and torch.allclose(a.threshold, b["threshold"]))


def bench_selector(batch: int, dim: int, classes: int, repeats: int, device: torch.device) -> dict:
    """Time the official loop and the batched selector (both ranking keys) over 4 stages; compare results."""
    g = torch.Generator(device="cpu").manual_seed(batch)
    inputs = [(torch.randn(batch, s, dim, generator=g).to(device),
               (torch.randn(batch, s, classes, generator=g) * 3).to(device)) for s in STAGE_TOKENS]
    stages = list(zip(inputs, STAGE_K, strict=True))

    def batched(key: str):
        return [select_tokens(f, y, k, key=key) for (f, y), k in stages]

    def loop(stable: bool = False):
        return [select_tokens_loop(f, y, k, stable=stable) for (f, y), k in stages]

    with torch.no_grad():
        prob, margin = batched("prob"), batched("margin")
        official, tie_rule = loop(), loop(stable=True)
        result = {
            "batch": batch,
            # exact: the same σ values, ties by lower index (what the official loop does up to its tie order)
            "prob_vs_loop": all(_same(a, b) for a, b in zip(prob, tie_rule, strict=True)),
            "prob_vs_official": all(_same(a, b) for a, b in zip(prob, official, strict=True)),
            # rank positions where the margin order differs from the loop's fp32-σ order (near-ties only)
            "margin_moved": sum(int((a.order != b["order"]).sum()) for a, b in zip(margin, tie_rule, strict=True)),
            "loop_ms": 1e3 * _time(loop, repeats, device),
            "prob_ms": 1e3 * _time(lambda: batched("prob"), repeats, device),
            "margin_ms": 1e3 * _time(lambda: batched("margin"), repeats, device),
        }
    result["prob_speedup"] = result["loop_ms"] / result["prob_ms"]
    result["margin_speedup"] = result["loop_ms"] / result["margin_ms"]
    return result


def bench_train(backbone: str, img_size: int, batch: int, classes: int, steps: int, device: torch.device,
                fpn_size: int | None) -> dict:
    """fwd + loss + bwd steps/s of herbs and baseline on random tensors (same backbone, size, batch)."""
    from fgcli.config import resolve_config
    from fgcli.methods import build_method

    results = {}
    for method in ("baseline", "herbs"):
        sets = [f"method={method}", f"model.backbone={backbone}", f"data.img_size={img_size}"]
        if method == "herbs" and fpn_size:
            sets.append(f"herbs.fpn_size={fpn_size}")
        torch.manual_seed(0)
        model = build_method(resolve_config(overrides=sets), classes).to(device).train()
        x = torch.randn(batch, 3, img_size, img_size, device=device)
        y = torch.randint(0, classes, (batch,), device=device)

        def step(model=model, x=x, y=y):
            model.zero_grad(set_to_none=True)
            total, _ = model.loss(model(x, y), y, 0)
            total.backward()

        results[method] = 1.0 / _time(step, steps, device)
        del model
    return {"baseline_steps_s": results["baseline"], "herbs_steps_s": results["herbs"],
            "herbs_relative": results["herbs"] / results["baseline"]}


def bench_share(backbone: str, img_size: int, batch: int, classes: int, repeats: int, device: torch.device,
                fpn_size: int | None) -> dict:
    """The selector's share of a whole HERBS forward (eval mode): every `select_tokens` call of the model is
    timed inside the same forward passes that are timed as a whole."""
    import time

    import fgcli.methods.herbs.model as herbs_model
    from fgcli.config import resolve_config
    from fgcli.methods import build_method

    sets = ["method=herbs", f"model.backbone={backbone}", f"data.img_size={img_size}"]
    if fpn_size:
        sets.append(f"herbs.fpn_size={fpn_size}")
    torch.manual_seed(0)
    model = build_method(resolve_config(overrides=sets), classes).to(device).eval()
    x = torch.randn(batch, 3, img_size, img_size, device=device)
    spent = [0.0]
    original = herbs_model.select_tokens

    def timed(*args, **kwargs):
        _sync(device)
        t0 = time.perf_counter()
        out = original(*args, **kwargs)
        _sync(device)
        spent[0] += time.perf_counter() - t0
        return out

    herbs_model.select_tokens = timed
    try:
        with torch.no_grad():
            model(x)  # warm-up
            spent[0], total = 0.0, 0.0
            for _ in range(repeats):
                _sync(device)
                t0 = time.perf_counter()
                model(x)
                _sync(device)
                total += time.perf_counter() - t0
    finally:
        herbs_model.select_tokens = original
    return {"forward_ms": 1e3 * total / repeats, "selector_ms": 1e3 * spent[0] / repeats,
            "share": spent[0] / total, "tokens": [int(t) for t in getattr(model, "stage_tokens", [])]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["selector", "train", "share", "all"], default="all")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--dim", type=int, default=1536, help="feature width D (fpn_size)")
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--fpn-size", type=int, default=None, help="herbs.fpn_size (default: config's 1536)")
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")
    if args.part in ("selector", "all"):
        print(f"\nselector, 4 stages per call: S={STAGE_TOKENS} K={STAGE_K} C={args.classes} D={args.dim}")
        print("  loop = official per-sample loop; prob / margin = batched selector ranking on σ / on the margin")
        print("  same = identical tokens, order, features, logits and τ as the loop with ties by lower index "
              "(official loop's own tie order in brackets)")
        print(f"{'batch':>5} {'loop ms':>9} {'prob ms':>9} {'speed-up':>9} {'margin ms':>10} {'speed-up':>9}"
              f"  {'same (prob)':<14} margin near-tie moves")
        for b in args.batches:
            r = bench_selector(b, args.dim, args.classes, args.repeats, device)
            same = f"{r['prob_vs_loop']} ({r['prob_vs_official']})"
            print(f"{b:>5} {r['loop_ms']:>9.2f} {r['prob_ms']:>9.2f} {r['prob_speedup']:>8.2f}x "
                  f"{r['margin_ms']:>10.2f} {r['margin_speedup']:>8.2f}x  {same:<14} {r['margin_moved']}")
    if args.part in ("share", "all"):
        r = bench_share(args.backbone, args.img_size, args.batch, args.classes, min(args.repeats, args.steps), device,
                        args.fpn_size)
        print(f"\nselector share of the HERBS forward (eval): {args.backbone} @ {args.img_size}, batch {args.batch}, "
              f"{args.classes} classes, fpn_size {args.fpn_size or 'default'}")
        print(f"forward {r['forward_ms']:.1f} ms, of which the selector (4 stages) {r['selector_ms']:.1f} ms = "
              f"{100 * r['share']:.1f} %")
    if args.part in ("train", "all"):
        r = bench_train(args.backbone, args.img_size, args.batch, args.classes, args.steps, device, args.fpn_size)
        print(f"\ntraining fwd+loss+bwd on random tensors: {args.backbone} @ {args.img_size}, batch {args.batch}, "
              f"{args.classes} classes")
        print(f"baseline {r['baseline_steps_s']:.3f} steps/s, herbs {r['herbs_steps_s']:.3f} steps/s "
              f"-> herbs runs at {r['herbs_relative']:.2f}x the baseline's speed")


if __name__ == "__main__":
    main()
