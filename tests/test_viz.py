"""`fgcli attention-viz`: geometry, maps per method, scoring, figures, the contact sheet and the CLI end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from exportkit import METHOD_SETTINGS, METHODS, make_checkpoint_file, write_images
from PIL import Image
from typer.testing import CliRunner

from fgcli.cli import app
from fgcli.data.transforms import eval_transform
from fgcli.modelinfo import Preprocess
from fgcli.viz.geometry import CropGeometry, upsample
from fgcli.viz.scoring import Scoreboard, box_mask, box_overlap, energy_fraction, pointing_hit

runner = CliRunner()
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: the test machine's cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _pre(size: int = 32, resize: int = 40, mode: str = "shorter") -> Preprocess:
    return Preprocess(img_size=size, resize=resize, resize_mode=mode, mean=MEAN, std=STD)


# ---- geometry -----------------------------------------------------------------------------------------------
def test_herbs_spec_formula_square_510_crop_384() -> None:
    """spec/herbs.md §5: crop pixel u (0-based centre) -> x = (u + 63 + 0.5) * W0 / 510 - 0.5."""
    geo = CropGeometry(640, 480, _pre(384, 510, "square"))
    u = np.array([0.0, 100.0, 383.0])
    x, y = geo.to_original(u + 0.5, u + 0.5)
    np.testing.assert_allclose(x - 0.5, (u + 63 + 0.5) * 640 / 510 - 0.5)
    np.testing.assert_allclose(y - 0.5, (u + 63 + 0.5) * 480 / 510 - 0.5)
    back_u, back_v = geo.to_crop(x, y)
    np.testing.assert_allclose(back_u, u + 0.5)
    np.testing.assert_allclose(back_v, u + 0.5)


@pytest.mark.parametrize("mode,orig", [("shorter", (120, 80)), ("shorter", (70, 150)), ("square", (90, 60))])
def test_peak_lands_at_the_right_pixel(mode: str, orig: tuple[int, int]) -> None:
    """A map with one hot crop pixel, warped onto the original image, peaks where the transform took it from."""
    geo = CropGeometry(orig[0], orig[1], _pre(32, 40, mode))
    for row, col in ((10, 20), (0, 0), (31, 5)):
        crop_map = np.zeros((32, 32))
        crop_map[row, col] = 1.0
        warped = geo.warp_map(crop_map, orig[0], orig[1])
        peak_y, peak_x = np.unravel_index(np.nanargmax(warped), warped.shape)
        x, y = geo.to_original(col + 0.5, row + 0.5)
        assert abs(peak_x + 0.5 - float(x)) <= 1.0 and abs(peak_y + 0.5 - float(y)) <= 1.0


def test_warp_leaves_what_the_crop_cut_off_empty() -> None:
    geo = CropGeometry(120, 80, _pre(32, 40))  # resized to 60 x 40, crop at (14, 4) -> original (28, 8)..(92, 72)
    warped = geo.warp_map(np.ones((4, 4)), 120, 80)
    assert np.isnan(warped[:, :27]).all() and np.isnan(warped[:, 93:]).all()
    assert np.isnan(warped[:7]).all() and np.isnan(warped[73:]).all()
    assert np.isfinite(warped[9:71, 29:91]).all()
    x1, y1, x2, y2 = geo.crop_rect()
    assert (x1, y1, x2, y2) == pytest.approx((28.0, 8.0, 92.0, 72.0))


@pytest.mark.parametrize("mode", ["shorter", "square"])
def test_mask_follows_the_eval_transform(mode: str) -> None:
    """A mask brought to the crop grid matches the image region the real eval transform puts there."""
    pre = _pre(48, 60, mode)
    w, h = 150, 100
    mask = np.zeros((h, w), bool)
    mask[30:70, 60:110] = True
    image = Image.fromarray(np.where(mask[..., None], 255, 0).astype(np.uint8).repeat(3, axis=2))
    shown = eval_transform(pre)(image)[0] * STD[0] + MEAN[0]  # de-normalised red channel, 0..1
    expected = shown.numpy() > 0.5
    geo = CropGeometry(w, h, pre)
    got = geo.mask_to_crop(mask)
    assert got.shape == (48, 48)
    assert (got != expected).mean() < 0.02
    box = geo.box_to_crop((60, 30, 50, 40))  # the same rectangle as a box (x, y, w, h)
    np.testing.assert_array_equal(box, got)


def test_upsample_keeps_a_constant_and_centres() -> None:
    np.testing.assert_allclose(upsample(np.full((3, 3), 0.7), 12), 0.7)
    grid = np.zeros((4, 4))
    grid[1, 2] = 1.0
    up = upsample(grid, 16)
    assert np.unravel_index(up.argmax(), up.shape) in {(5, 9), (5, 10), (6, 9), (6, 10)}


# ---- scoring ------------------------------------------------------------------------------------------------
def _part_mask() -> np.ndarray:
    mask = np.zeros((32, 32), bool)
    mask[8:16, 20:28] = True
    return mask


def test_perfect_map_scores_one_and_outside_scores_zero() -> None:
    mask = _part_mask()
    perfect = mask.astype(float)
    assert pointing_hit(perfect, mask) == 1.0 and energy_fraction(perfect, mask) == 1.0
    outside = (~mask).astype(float)
    assert pointing_hit(outside, mask) == 0.0 and energy_fraction(outside, mask) == 0.0
    peak_outside = np.zeros((32, 32))
    peak_outside[0, 0] = 1.0
    assert pointing_hit(peak_outside, mask) == 0.0


def test_uninformative_maps_score_the_area_fraction() -> None:
    mask = _part_mask()
    area = mask.mean()
    assert pointing_hit(np.ones((32, 32)), mask) == pytest.approx(area)
    assert energy_fraction(np.zeros((32, 32)), mask) == pytest.approx(area)
    assert energy_fraction(np.full((32, 32), np.nan), mask) == pytest.approx(area)
    rng = np.random.default_rng(0)
    board = Scoreboard("test")
    for _ in range(400):
        board.add({"random": rng.random((32, 32))}, mask)
    row = board.summaries()[0]
    assert row["random"] == pytest.approx(area)
    assert row["pointing"] == pytest.approx(area, abs=0.04)
    assert row["energy"] == pytest.approx(area, abs=0.01)


def test_scoreboard_skips_empty_masks_and_ignores_nan() -> None:
    board = Scoreboard("mge")
    board.add({"cam": np.ones((8, 8))}, np.zeros((8, 8), bool))
    assert board.skipped == 1 and board.summaries() == []
    attn = np.full((8, 8), np.nan)
    attn[2:4, 2:4] = 1.0
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:4] = True
    board.add({"cam": attn}, mask)
    assert board.summaries()[0]["pointing"] == 1.0 and board.summaries()[0]["energy"] == 1.0


def test_box_mask_covers_the_inclusive_pixels() -> None:
    mask = box_mask((1.0, 2.0, 3.0, 2.0), 6)  # pixels x 1..3, y 2
    expected = np.zeros((6, 6), bool)
    expected[2, 1:4] = True
    assert np.array_equal(mask, expected)
    assert box_mask((0.0, 0.0, 5.0, 5.0), 6).all()


def test_box_overlap_by_hand() -> None:
    """Box: rows 0-3, cols 0-3 (16 px); target: rows 2-5, cols 2-5 (16 px); overlap rows 2-3, cols 2-3 (4 px):
    1/4 of the target inside, 1/4 of the box on target, IoU 4 / 28."""
    box, target = np.zeros((8, 8), bool), np.zeros((8, 8), bool)
    box[0:4, 0:4] = True
    target[2:6, 2:6] = True
    inside, on_target, iou = box_overlap(box, target)
    assert (inside, on_target) == (0.25, 0.25) and iou == pytest.approx(4 / 28)
    assert box_overlap(target, target) == (1.0, 1.0, 1.0)
    assert box_overlap(np.zeros((8, 8), bool), target) == (0.0, 0.0, 0.0)


def test_scoreboard_scores_boxes_beside_maps() -> None:
    board = Scoreboard("mge")
    mask = np.zeros((8, 8), bool)
    mask[2:6, 2:6] = True
    board.add({"cam1": np.ones((8, 8))}, mask, {"box1": np.array([2.0, 2.0, 5.0, 5.0])})  # exactly the target
    board.add({"cam1": np.ones((8, 8))}, mask, {"box1": np.array([0.0, 0.0, 7.0, 7.0])})  # the whole input
    (row,) = board.box_summaries()
    assert row["box"] == "box1" and row["images"] == 2
    assert row["target_inside"] == 1.0 and row["box_on_target"] == pytest.approx((1.0 + 0.25) / 2)
    assert row["iou"] == pytest.approx((1.0 + 0.25) / 2) and row["box_area"] == pytest.approx((0.25 + 1.0) / 2)
    assert [r["map"] for r in board.summaries()] == ["cam1"]


# ---- maps per method ----------------------------------------------------------------------------------------
def _model(method: str, size: int = 64):
    from fgcli.config import resolve_config
    from fgcli.methods import build_method

    torch.manual_seed(0)
    cfg = resolve_config(overrides=[f"method={method}", "model.backbone=test_resnet", f"data.img_size={size}",
                                    *METHOD_SETTINGS.get(method, [])])
    return build_method(cfg, 3).eval(), cfg


EXPECTED_MAPS = {
    "baseline": ["cam"],
    "probe": ["cam"],  # the baseline's model and viz
    "herbs": ["score1", "score2", "score3", "score4", "score_prod", "select1", "select2", "select3", "select4",
              "select_mean"],
    "mge": ["cam1", "cam2", "cam3"],
}


@pytest.mark.parametrize("method", METHODS)
def test_map_shapes_and_ranges(method: str) -> None:
    from fgcli.viz.maps import attention_maps

    model, _ = _model(method)
    pre = _pre(64, 73)
    images = torch.randn(2, 3, 64, 64)
    records = attention_maps(model, method, images, pre)
    assert len(records) == 2
    for rec in records:
        assert list(rec.maps) == EXPECTED_MAPS[method]
        for name, m in rec.maps.items():
            assert m.shape == (64, 64), name
            finite = m[np.isfinite(m)]
            assert finite.size > 0 and finite.min() >= -1e-6 and finite.max() <= 1 + 1e-6, name
        assert rec.probs.shape == (3,) and rec.probs.sum() == pytest.approx(1.0, abs=1e-5)
        assert rec.pred == int(rec.probs.argmax())
        assert rec.input_rgb.shape == (64, 64, 3) and 0 <= rec.input_rgb.min() <= rec.input_rgb.max() <= 1
    if method == "herbs":
        for s in (1, 2, 3, 4):
            assert set(np.unique(records[0].maps[f"select{s}"])) <= {0.0, 1.0}
            assert records[0].maps[f"score{s}"].max() == pytest.approx(1.0)
    if method == "mge":
        ex = records[0].extra
        assert ex["gate"].shape == (3,) and ex["gate"].sum() == pytest.approx(1.0, abs=1e-5)
        assert ex["crop2"].shape == (64, 64, 3) and "box1" in ex and "box2" in ex and "box3" not in ex


def test_mge_boxes_are_drawn_where_the_cam_says() -> None:
    """The box on the figure is the tight box of CAM >= threshold, mapped back onto the original image."""
    from matplotlib.patches import Rectangle

    from fgcli.viz.maps import attention_maps
    from fgcli.viz.panels import method_panels
    from fgcli.viz.render import ImageInfo, figure

    model, cfg = _model("mge")
    pre = _pre(64, 80)
    torch.manual_seed(3)
    image = (np.random.default_rng(1).random((90, 130, 3)) * 255).astype(np.uint8)
    images = eval_transform(pre)(Image.fromarray(image))[None]
    rec = attention_maps(model, "mge", images, pre)[0]
    cam = rec.extra["cam1_own"]
    rows, cols = np.nonzero(cam >= cfg.mge.box_threshold)
    tight = np.array([cols.min(), rows.min(), cols.max(), rows.max()], float)
    if tight[2] > tight[0] and tight[3] > tight[1]:
        np.testing.assert_allclose(rec.extra["box1"], tight)
    geo = CropGeometry(130, 90, pre)
    info = ImageInfo("x", image, geo, 1)
    panels = method_panels(info, rec, ["a", "b", "c"], 0.5)
    fig = figure(panels, "t", "black", 90 / 130)
    first = fig.axes[0]
    rects = [p for p in first.patches if isinstance(p, Rectangle) and p.get_linestyle() != "--"]
    x1, y1, x2, y2 = geo.box_to_original(rec.extra["box1_image"])
    assert any(abs(r.get_x() - x1) < 1e-6 and abs(r.get_y() - y1) < 1e-6 and abs(r.get_width() - (x2 - x1)) < 1e-6
               and abs(r.get_height() - (y2 - y1)) < 1e-6 for r in rects)
    # the box's left edge is the crop pixel x1's left edge: u = x1 -> original x
    assert x1 == pytest.approx(float(geo.to_original(rec.extra["box1"][0], 0.0)[0]))


def test_headline_names_true_and_predicted_class() -> None:
    from fgcli.viz.maps import ImageMaps
    from fgcli.viz.render import ImageInfo, headline

    rec = ImageMaps("baseline", 1, np.array([0.1, 0.8, 0.1]), np.zeros((8, 8, 3)), {})
    geo = CropGeometry(8, 8, _pre(8, 8))
    text, colour = headline(ImageInfo("im", np.zeros((8, 8, 3), np.uint8), geo, 0), rec, ["cat", "dog", "owl"])
    assert "true: cat" in text and "pred: dog (80.0%)" in text and colour != "black"
    text, colour = headline(ImageInfo("im", np.zeros((8, 8, 3), np.uint8), geo, None), rec, ["cat", "dog", "owl"])
    assert "true class unknown" in text and "true:" not in text and colour == "black"
    text, _ = headline(ImageInfo("im", np.zeros((8, 8, 3), np.uint8), geo, None), rec, ["cat", "dog", "owl"],
                       compact=True)
    assert text.splitlines()[0] == "true class unknown"


# ---- files --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_figures_and_sheet_are_written_and_readable(tmp_path, method: str) -> None:
    from fgcli.options import VizOptions
    from fgcli.tasks.attention_viz import attention_viz

    ckpt = make_checkpoint_file(tmp_path, method)
    images = write_images(tmp_path / "alpha", 2, size=70)  # parent folder = a class name: the true class
    result = attention_viz(ckpt, [str(tmp_path / "alpha")], VizOptions(out=tmp_path / "out", device="cpu"))
    assert len(result.figures) == 2 and result.index is not None
    for path in result.figures:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:
            assert im.size[0] > 400 and im.size[1] > 150
    sheet = result.index.read_text()
    assert sheet.count("<img") == 2 and "true: alpha" in sheet
    assert all(p.stem in sheet for p in images) or "img_000" in sheet


def test_single_layout_writes_one_png_per_panel(tmp_path) -> None:
    from fgcli.options import VizOptions
    from fgcli.tasks.attention_viz import attention_viz

    ckpt = make_checkpoint_file(tmp_path, "herbs")
    write_images(tmp_path / "imgs", 1, size=64)
    result = attention_viz(ckpt, [str(tmp_path / "imgs")], VizOptions(out=tmp_path / "out", device="cpu",
                                                                     layout="single"))
    names = sorted(p.name for p in result.figures)
    assert len(names) == 12 and "score1.png" in names and "select_mean.png" in names and "input.png" in names
    for path in result.figures:
        with Image.open(path) as im:
            im.verify()


# ---- CLI ----------------------------------------------------------------------------------------------------
def test_help_and_alias() -> None:
    for name in ("attention-viz", "viz"):
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0 and "--score" in result.output


def test_onnx_is_refused_with_the_fix(tmp_path) -> None:
    model = tmp_path / "best.onnx"
    model.write_bytes(b"not really")
    result = runner.invoke(app, ["viz", str(model), "--data", "demo"])
    assert result.exit_code == 1
    assert "ONNX" in result.output and ".pt checkpoint" in result.output and "Traceback" not in result.output


def test_bad_inputs_are_one_line_errors(tmp_path) -> None:
    ckpt = make_checkpoint_file(tmp_path, "baseline")
    write_images(tmp_path / "imgs", 1)
    cases = [
        ([str(tmp_path / "imgs"), "--score"], "--score needs --data"),
        ([str(tmp_path / "imgs"), "--layout", "mosaic"], "--layout mosaic"),
        ([str(tmp_path / "missing.jpg")], "does not exist"),
        ([], "does not exist"),  # the checkpoint's data path (/nonexistent/...) is gone
    ]
    for extra, message in cases:
        result = runner.invoke(app, ["viz", str(ckpt), *extra, "--device", "cpu"])
        assert result.exit_code == 1, result.output
        assert message in result.output and "Traceback" not in result.output


def test_score_needs_masks_or_boxes(tmp_path, flowers12) -> None:
    ckpt = make_checkpoint_file(tmp_path, "baseline", classes=sorted(p.name for p in (flowers12 / "train").iterdir()))
    result = runner.invoke(app, ["viz", str(ckpt), "--data", str(flowers12), "--score", "--num", "1",
                                 "--device", "cpu", "--out", str(tmp_path / "out")])
    assert result.exit_code == 1 and "no part masks or bounding boxes" in result.output


@pytest.mark.parametrize("method", METHODS)
def test_cli_on_the_demo_with_scores(tmp_path, demo_factory, method: str) -> None:
    demo = demo_factory(size=48, classes=3, per_class=3, val_fraction=0.0)
    ckpt = make_checkpoint_file(tmp_path, method, classes=list(demo.classes))
    out = tmp_path / "viz"
    result = runner.invoke(app, ["viz", str(ckpt), "--data", str(demo.root), "--num", "2", "--score",
                                 "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "pointing game" in result.output and "random map" in result.output
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) == 2
    rows = json.loads((out / "scores.json").read_text())
    assert [r["map"] for r in rows] == EXPECTED_MAPS[method]
    for r in rows:
        assert r["images"] == 3 and 0 <= r["pointing"] <= 1 and 0 <= r["energy"] <= 1 and 0 < r["random"] < 0.5
    assert (out / "scores.csv").read_text().startswith("method,map,images,pointing,energy,random")
    if method == "mge":  # its zoom boxes against the same target
        boxes = json.loads((out / "box_scores.json").read_text())
        assert [b["box"] for b in boxes] == ["box1", "box2"] and "boxes vs" in result.output
        for b in boxes:
            assert b["images"] == 3 and all(0 <= b[k] <= 1 for k in ("target_inside", "box_on_target", "iou"))
    else:
        assert not (out / "box_scores.json").exists()
    sheet = (out / "index.html").read_text()
    assert "pointing game" in sheet and sheet.count("<img") == 2 and "true: " in sheet


@pytest.mark.slow
def test_train_then_viz_on_the_demo(tmp_path) -> None:
    """The user's path: a short training on the demo, then a bare `fgcli viz best.pt --score`."""
    tiny = ["--data", "demo", "--backbone", "test_resnet", "--img-size", "32", "--batch-size", "8",
            "--workers", "0", "--lr", "0.05", "--device", "cpu", "--set", "data.demo_size=32", "--set",
            "data.demo_classes=3", "--set", "data.demo_per_class=6", "--set", "data.val_fraction=0.25"]
    trained = runner.invoke(app, ["train", "--method", "baseline", *tiny, "--epochs", "1", "--project",
                                  str(tmp_path / "runs"), "--name", "exp"])
    assert trained.exit_code == 0, trained.output
    ckpt = tmp_path / "runs" / "exp" / "weights" / "best.pt"
    out = tmp_path / "viz"
    result = runner.invoke(app, ["viz", str(ckpt), "--score", "--num", "3", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*.png"))) == 3 and (out / "index.html").is_file()
    rows = json.loads((out / "scores.json").read_text())
    assert rows[0]["map"] == "cam" and rows[0]["images"] == 6


@pytest.mark.slow
def test_herbs_demo_recipe_trains_and_scores(tmp_path) -> None:
    """The README's HERBS viz walk-through, on a tiny demo: the recipe alone names method, data and weights
    (the pretrained weights package is a core dependency)."""
    tiny = ["--set", "data.demo_classes=3", "--set", "data.demo_per_class=6", "--set", "data.val_fraction=0.25",
            "--set", "sched.warmup=0", "--batch-size", "6", "--workers", "0", "--device", "cpu"]
    trained = runner.invoke(app, ["train", "--recipe", "herbs_demo_cpu", *tiny, "--epochs", "1", "--project",
                                  str(tmp_path / "runs"), "--name", "exp"])
    assert trained.exit_code == 0, trained.output
    ckpt = torch.load(tmp_path / "runs" / "exp" / "weights" / "best.pt", map_location="cpu", weights_only=True)
    assert ckpt["method"] == "herbs" and ckpt["preprocess"]["img_size"] == 128
    assert ckpt["preprocess"]["mean"] == [0.5, 0.5, 0.5]  # the weights package's own normalisation
    out = tmp_path / "viz"
    result = runner.invoke(app, ["viz", str(tmp_path / "runs" / "exp" / "weights" / "best.pt"), "--score",
                                 "--num", "2", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = {row["map"]: row for row in json.loads((out / "scores.json").read_text())}
    assert {"score1", "score_prod", "select1"} <= set(rows) and rows["score1"]["images"] == 6


def test_flowers_photo_titles_the_folder_class(tmp_path, flowers12) -> None:
    classes = sorted(p.name for p in (flowers12 / "test").iterdir() if p.is_dir())
    ckpt = make_checkpoint_file(tmp_path, "baseline", classes=classes)
    photo = next(p for p in sorted((flowers12 / "test" / classes[0]).iterdir()))
    result = runner.invoke(app, ["viz", str(ckpt), str(photo), "--device", "cpu", "--out", str(tmp_path / "o")])
    assert result.exit_code == 0, result.output
    assert f"true: {classes[0]}" in (tmp_path / "o" / "index.html").read_text()


def test_score_target_is_the_mask_else_the_box(tmp_path) -> None:
    from fgcli.data.manifest import Sample
    from fgcli.tasks.attention_viz import target_mask

    mask = np.zeros((60, 90), np.uint8)
    mask[10:30, 40:70] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    geo = CropGeometry(90, 60, _pre(32, 40))
    from_mask = target_mask(Sample("x.jpg", 0, box=(0, 0, 5, 5), mask="m.png"), tmp_path, geo)
    np.testing.assert_array_equal(from_mask, geo.mask_to_crop(mask > 127))
    from_box = target_mask(Sample("x.jpg", 0, box=(40, 10, 30, 20)), tmp_path, geo)
    np.testing.assert_array_equal(from_box, from_mask)
    assert target_mask(Sample("x.jpg", 0), tmp_path, geo) is None
    cut = target_mask(Sample("x.jpg", 0, mask="m.png"), tmp_path, CropGeometry(90, 40, _pre(32, 40)), crop_bottom=20)
    assert cut.shape == (32, 32) and cut.any()


def test_unreadable_images_are_skipped_or_a_clear_error(tmp_path) -> None:
    ckpt = make_checkpoint_file(tmp_path, "baseline")
    write_images(tmp_path / "imgs", 1)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"not an image")
    result = runner.invoke(app, ["viz", str(ckpt), str(tmp_path / "imgs"), "--device", "cpu", "--out",
                                 str(tmp_path / "out")])
    assert result.exit_code == 0 and "skipped" in result.output and "broken" in result.output
    assert len(list((tmp_path / "out").glob("*.png"))) == 1
    result = runner.invoke(app, ["viz", str(ckpt), str(tmp_path / "imgs" / "broken.jpg"), "--device", "cpu"])
    assert result.exit_code == 1 and "could be read" in result.output
