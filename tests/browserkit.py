"""Load an HTML page in headless Chromium and report what a reader would see go wrong: console messages, script
errors, resources that failed to load, images not decoded, and (at a phone's width) a page wider than the screen.

The page is copied beside itself with a probe script put first in its <head> (relative links still resolve) and
shown in an iframe of the asked width (headless Chromium's window is at least 500 px wide; an iframe is a real
viewport of any width). The probe records every error event (resource failures included, in the capture phase)
and console.error / warn, and once the page has loaded writes its findings into the outer page's DOM, which
`chromium --dump-dom` prints. Chromium's own log (`--enable-logging=stderr`) is read too: any console line there
counts.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
         "--enable-logging=stderr", "--v=0", "--virtual-time-budget=10000",
         "--allow-file-access-from-files"]  # the probe in the iframe writes into the outer page

_PROBE = """<script>(function () {
  var problems = [];
  window.addEventListener('error', function (e) {
    var t = e.target;
    problems.push(t && t !== window && (t.src || t.href) ? 'failed to load ' + (t.src || t.href).slice(0, 120)
                                                         : 'script error: ' + e.message);
  }, true);
  ['error', 'warn'].forEach(function (level) {
    var original = console[level];
    console[level] = function () { problems.push('console.' + level + ': ' + [].join.call(arguments, ' '));
                                   return original.apply(console, arguments); };
  });
  window.addEventListener('load', function () {
    var images = Array.prototype.slice.call(document.images);
    // lazy images below the fold load only when scrolled to: ask for every one now, then wait until each has
    // loaded or failed (img.decode() never settles in headless --dump-dom for some files, so events and a time limit)
    images.forEach(function (i) { i.loading = 'eager'; });
    Promise.all(images.map(function (i) {
      return i.complete ? null : new Promise(function (done) {
        i.addEventListener('load', done); i.addEventListener('error', done); setTimeout(done, 5000);
      });
    })).then(function () {
        var root = document.documentElement;
        var result = {images: images.length, problems: problems,
                      undecoded: images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); })
                                       .map(function (i) { return (i.getAttribute('alt') || i.src).slice(0, 80); }),
                      viewport: window.innerWidth, width: Math.max(root.scrollWidth, document.body.scrollWidth)};
        var out = parent.document.createElement('pre');
        out.id = 'fgcli-browser-check';
        out.textContent = JSON.stringify(result);
        parent.document.body.appendChild(out);
      });
  });
})();</script>"""


def chromium() -> str:
    """The Chromium binary; without one the test skips, except on CI (CI=true), where it fails."""
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail("headless Chromium is needed for the browser checks and is not installed (CI installs it in "
                    ".ci/run: apt-get install -y chromium)")
    pytest.skip("headless Chromium is not installed (apt-get install -y chromium)")


def check_page(page: Path, width: int = 1280, height: int = 900) -> dict:
    """Load `page` in headless Chromium in a `width` x `height` CSS-pixel viewport; returns the probe's findings
    (`images`, `problems`, `undecoded`, `viewport`, `width`: the page's scroll width) plus `console` (Chromium's
    own console log lines)."""
    binary = chromium()
    text = page.read_text(encoding="utf-8")
    head = re.search(r"<head[^>]*>", text, flags=re.IGNORECASE)
    assert head is not None, f"{page} has no <head>"
    probe = page.with_name(f".browser-check-{page.name}")
    probe.write_text(text[:head.end()] + _PROBE + text[head.end():], encoding="utf-8")
    frame = page.with_name(f".browser-frame-{page.name}")
    frame.write_text(f"<!doctype html><html><head><meta charset='utf-8'></head><body style='margin:0'><iframe "
                     f"src='{html.escape(probe.name)}' style='width:{width}px;height:{height}px;border:0'></iframe>"
                     "</body></html>", encoding="utf-8")
    profile = tempfile.mkdtemp(prefix="fgcli-chromium-")
    try:
        done = subprocess.run([binary, *FLAGS, f"--user-data-dir={profile}",
                               f"--window-size={max(width, 800) + 40},{height + 40}", "--dump-dom",
                               frame.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink(missing_ok=True)
        frame.unlink(missing_ok=True)
        shutil.rmtree(profile, ignore_errors=True)
    found = re.search(r'<pre id="fgcli-browser-check">(.*?)</pre>', done.stdout, flags=re.DOTALL)
    assert found is not None, f"the page did not finish loading in Chromium (exit {done.returncode}):\n" \
                              f"{done.stderr[-2000:]}"
    result = json.loads(html.unescape(found.group(1)))
    result["console"] = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return result


def assert_clean(result: dict, page: Path, min_images: int = 1) -> None:
    """No console message, no error, every image decoded, at least `min_images` images."""
    assert not result["console"], f"{page}: console messages: {result['console']}"
    assert not result["problems"], f"{page}: {result['problems']}"
    assert not result["undecoded"], f"{page}: images not decoded: {result['undecoded']}"
    assert result["images"] >= min_images, f"{page}: {result['images']} images, expected >= {min_images}"
