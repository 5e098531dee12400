"""benchmarks/mge_zoom.py: MGE-CNN's box areas and gate choices, by hand and end to end on a tiny demo."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from benchkit import load_benchmark
from exportkit import make_checkpoint_file


@pytest.fixture(scope="module")
def zoom():
    return load_benchmark("mge_zoom")


def test_box_area_of_inclusive_pixel_boxes(zoom) -> None:
    boxes = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 4.0, 9.0], [2.0, 3.0, 2.0, 3.0]])
    assert zoom.box_areas(boxes, 10).tolist() == pytest.approx([1.0, 0.5, 0.01])


def test_summary_by_hand(zoom) -> None:
    gates = np.array([[0.1, 0.2, 0.7], [0.0, 0.0, 1.0], [0.6, 0.3, 0.1], [0.005, 0.0, 0.995]])
    out = zoom.summarise({"box1": [1.0, 0.9, 0.5, 0.2]}, gates)
    box = out["boxes"]["box1"]
    assert out["images"] == 4 and box["mean_area"] == pytest.approx(0.65) and box["median_area"] == pytest.approx(0.7)
    assert box["share_at_least_80"] == 0.5 and box["share_at_most_50"] == 0.5
    assert out["gate"]["mean_max_weight"] == pytest.approx((0.7 + 1.0 + 0.6 + 0.995) / 4)
    assert out["gate"]["share_above_0.99"] == 0.5 and out["gate"]["argmax_counts"] == [1, 0, 3]


def test_end_to_end_on_a_tiny_demo(zoom, tmp_path, demo_factory, capsys) -> None:
    demo = demo_factory(size=48, classes=3, per_class=3, val_fraction=0.0)
    ckpt = make_checkpoint_file(tmp_path, "mge", classes=list(demo.classes))
    zoom.main([str(ckpt), "--data", str(demo.root), "--split", "test", "--num", "3"])
    out = json.loads(capsys.readouterr().out)
    assert out["images"] == 3 and set(out["boxes"]) == {"box1", "box2"}
    assert all(0 < b["mean_area"] <= 1 for b in out["boxes"].values())
    assert sum(out["gate"]["argmax_counts"]) == 3


def test_refuses_another_method(zoom, tmp_path, demo_factory) -> None:
    demo = demo_factory(size=48, classes=3, per_class=3, val_fraction=0.0)
    ckpt = make_checkpoint_file(tmp_path, "baseline", classes=list(demo.classes))
    with pytest.raises(SystemExit, match="baseline checkpoint"):
        zoom.main([str(ckpt), "--data", str(demo.root), "--num", "2"])
