"""The HTML pages fgcli writes, in a real browser (headless Chromium): confusions.html from `fgcli eval` (also at a
phone's width) and attention-viz's index.html load with no console message or error and every image decoded.

Chromium comes from Debian's `chromium` package (.ci/run installs it); without it these tests skip, except on CI
(CI=true), where they fail."""

from __future__ import annotations

import pytest
from browserkit import assert_clean, check_page
from exportkit import make_checkpoint_file, write_images

import fgcli

PHONE = 360  # CSS pixels: a small phone in portrait


@pytest.fixture(scope="module")
def confusions_page(tmp_path_factory, demo_factory):
    """confusions.html of a random-weight HERBS checkpoint (attention maps) on a 5-class demo: it confuses plenty."""
    tmp = tmp_path_factory.mktemp("browser")
    demo = demo_factory(size=48, classes=5, per_class=3, val_fraction=0.0)
    ckpt = make_checkpoint_file(tmp, "herbs", classes=list(demo.classes))
    report = fgcli.evaluate(ckpt, str(demo.root), out=tmp / "eval", workers=0, device="cpu", confusions=3)
    assert report.confusions, "the random model confused no pair: nothing to draw"
    return report.files["confusions_html"]


def test_confusions_page_loads_cleanly_on_a_desktop(confusions_page) -> None:
    result = check_page(confusions_page, width=1280)
    # every pair shows images of both classes, each with its photo and its attention map
    assert_clean(result, confusions_page, min_images=4)


def test_confusions_page_fits_a_phone_screen(confusions_page) -> None:
    result = check_page(confusions_page, width=PHONE, height=740)
    assert_clean(result, confusions_page, min_images=4)
    assert result["viewport"] == PHONE
    assert result["width"] <= PHONE, f"the page is {result['width']} px wide on a {PHONE} px screen"


def test_attention_viz_index_loads_cleanly(tmp_path) -> None:
    from fgcli.options import VizOptions
    from fgcli.tasks.attention_viz import attention_viz

    ckpt = make_checkpoint_file(tmp_path, "mge")
    write_images(tmp_path / "alpha", 3, size=70)
    result = attention_viz(ckpt, [str(tmp_path / "alpha")], VizOptions(out=tmp_path / "viz", device="cpu"))
    assert result.index is not None
    assert_clean(check_page(result.index), result.index, min_images=3)


def test_the_check_catches_a_broken_page(tmp_path) -> None:
    """The browser check itself can fail: a missing and a truncated image, a console error, a script error and a
    too-wide block are all reported."""
    page = tmp_path / "broken.html"
    page.write_text("<!doctype html><html><head><meta charset='utf-8'></head><body>"
                    "<img src='missing.png' alt='missing'><div style='width:900px'>wide</div>"
                    "<img src='data:image/jpeg;base64,/9j/4AAQSkZJRgABAQ' alt='truncated'>"
                    "<script>console.error('boom'); notAFunction();</script></body></html>")
    result = check_page(page, width=PHONE)
    assert result["undecoded"] == ["missing", "truncated"]
    assert any("missing.png" in p for p in result["problems"])
    assert any("console.error: boom" in p for p in result["problems"])
    assert any("notAFunction" in p for p in result["problems"])
    assert result["console"] and result["width"] > PHONE
    with pytest.raises(AssertionError):
        assert_clean(result, page)


def test_without_chromium_the_checks_fail_on_ci_and_skip_elsewhere(monkeypatch) -> None:
    import browserkit

    monkeypatch.setattr(browserkit.shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y chromium"):
        browserkit.chromium()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception):
        browserkit.chromium()
