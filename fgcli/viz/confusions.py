"""`confusions.html`: for each of the most-confused class pairs, a few test images of each class side by side with
the prediction, its calibrated confidence and (a checkpoint) the method's attention map over the photo.

One self-contained file (images embedded as base64 JPEG, inline CSS, no script, no external asset) that reads
on a phone-width screen. The maps are those of attention-viz: the method's own `attention()`
(`fgcli.viz.maps.attention_maps`), warped onto the photo and coloured as there (`fgcli.viz.render`).
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fgcli.io import atomic_write_text

#: test images shown per class of each pair
PER_SIDE = 3
#: the longer side of the embedded pictures, in pixels (never upscaled)
MAX_SIDE = 320

_CSS = """
* { box-sizing: border-box; }
body { font-family: system-ui, sans-serif; margin: 0 auto; padding: 0.8em; max-width: 1100px; color: #222;
       overflow-wrap: anywhere; }
h1 { font-size: 1.25em; } h2 { font-size: 1.05em; margin: 1.4em 0 0.3em; } h3 { font-size: 0.95em; margin: 0.4em 0; }
.meta, .note { color: #555; font-size: 0.88em; margin: 0.2em 0; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.6em 0; }
td, th { border: 1px solid #ccc; padding: 3px 6px; text-align: right; }
td:nth-child(2), td:nth-child(3), th:nth-child(2), th:nth-child(3) { text-align: left; }
.pair { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 330px), 1fr)); gap: 12px; }
.side { border: 1px solid #ddd; border-radius: 6px; padding: 6px; background: #fafafa; min-width: 0; }
.card { border-top: 1px solid #e4e4e4; padding: 6px 0; }
.pics { display: flex; gap: 4px; }
.pics figure { flex: 1 1 0; min-width: 0; margin: 0; }
.pics img { width: 100%; height: auto; display: block; border-radius: 3px; }
figcaption { font-size: 0.75em; color: #555; text-align: center; }
.cap { font-size: 0.85em; margin-top: 3px; } .ok { color: #1a7f37; } .bad { color: #cf222e; }
"""


@dataclass
class Shown:
    """One test image on the page: what was predicted, and the pictures (base64 JPEG) drawn for it."""

    path: str
    true: str
    pred: str
    prob: float
    photo: str
    heat: str | None = None
    heat_name: str = ""


def pick(labels: np.ndarray, preds: np.ndarray, probs: np.ndarray, usable: np.ndarray, true: int, other: int,
         count: int = PER_SIDE) -> list[int]:
    """Indices of up to `count` images of class `true`: those predicted as `other` first, then the rest, each
    group most confident first (ties: the earlier image)."""
    mine = np.flatnonzero((labels == true) & usable)
    confused = [i for i in mine if preds[i] == other]
    rest = [i for i in mine if preds[i] != other]
    order = sorted(confused, key=lambda i: (-probs[i], i)) + sorted(rest, key=lambda i: (-probs[i], i))
    return [int(i) for i in order[:count]]


def _jpeg(rgb: np.ndarray) -> str:
    from PIL import Image

    image = Image.fromarray(np.clip(np.asarray(rgb) * 255.0 + 0.5, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def summary_map(maps: Any) -> str | None:
    """The one map shown per image: the method's `SUMMARY_MAP` (its viz module) when it has it, else the first."""
    from fgcli.viz.maps import method_viz

    preferred = getattr(method_viz(maps.method), "SUMMARY_MAP", None)
    if preferred in maps.maps:
        return str(preferred)
    return next(iter(maps.maps), None)


def pictures(image: Any, pre: Any, maps: Any = None, alpha: float = 0.5) -> tuple[str, str | None, str]:
    """(photo, attention overlay or None, map name) as base64 JPEGs, drawn as attention-viz draws them: the part
    outside the model's centre crop dimmed, the map warped onto the photo in the viz colour map."""
    from fgcli.viz.geometry import CropGeometry
    from fgcli.viz.render import Canvas, ImageInfo, blend

    canvas = Canvas(ImageInfo("", np.asarray(image), CropGeometry(image.width, image.height, pre)), alpha)
    shown = canvas.shown
    scale = min(1.0, MAX_SIDE / max(canvas.dw, canvas.dh))
    dim = canvas.outside[..., None]
    photo = np.where(dim, shown * 0.45, shown)
    heat, name = None, ""
    key = summary_map(maps) if maps is not None else None
    if key is not None:
        warped = canvas.info.geometry.warp_map(maps.maps[key], canvas.dw, canvas.dh)
        overlay = blend(shown, warped, alpha)
        heat = _jpeg(_shrink(np.where(dim, overlay * 0.45, overlay), scale))
        name = key
    return _jpeg(_shrink(photo, scale)), heat, name


def _shrink(rgb: np.ndarray, scale: float) -> np.ndarray:
    if scale >= 1.0:
        return rgb
    from PIL import Image

    h, w = rgb.shape[:2]
    image = Image.fromarray(np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8))
    image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.float64) / 255.0


def draw(indices: list[int], load: Any, classes: list[str], labels: np.ndarray, preds: np.ndarray,
         probs: np.ndarray, names: list[str], pre: Any, model: Any = None, method: str = "", device: Any = None,
         temperature: float = 1.0) -> dict[int, Shown]:
    """The pictures of the images `indices` (`load(i)` -> PIL RGB image), with the attention maps of `model`
    (a torch Method) when given; unreadable images are left out."""
    images = {}
    for i in indices:
        try:
            images[i] = load(i)
        except Exception:  # unreadable now (it was read for the scores): left off the page
            continue
    maps: dict[int, Any] = {}
    if model is not None and images:
        import torch

        from fgcli.data.transforms import eval_transform
        from fgcli.viz.maps import attention_maps

        transform = eval_transform(pre)
        order = list(images)
        for start in range(0, len(order), 16):
            chunk = order[start:start + 16]
            batch = torch.stack([transform(images[i]) for i in chunk]).to(device)
            maps.update(zip(chunk, attention_maps(model, method, batch, pre, temperature), strict=True))
    out = {}
    for i, image in images.items():
        photo, heat, name = pictures(image, pre, maps.get(i))
        out[i] = Shown(names[i], classes[int(labels[i])], classes[int(preds[i])], float(probs[i]), photo, heat, name)
    return out


def render(pairs: list[dict[str, Any]], chosen: dict[tuple[int, int], list[int]], shown: dict[int, Shown],
           title: str, meta: list[str], note: str = "") -> str:
    """The page's HTML text (see the module docstring)."""
    esc = html.escape
    parts = ["<!doctype html>", "<html lang='en'><head><meta charset='utf-8'>",
             "<meta name='viewport' content='width=device-width, initial-scale=1'>", f"<title>{esc(title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{esc(title)}</h1>"]
    parts += [f"<p class='meta'>{esc(line)}</p>" for line in meta]
    if note:
        parts.append(f"<p class='note'>{esc(note)}</p>")
    if not pairs:
        parts.append("<p>No test image was mistaken for another class.</p>")
    else:
        parts.append("<div class='scroll'><table><tr><th>#</th><th>class A</th><th>class B</th><th>A → B</th>"
                     "<th>B → A</th></tr>")
        for rank, p in enumerate(pairs, start=1):
            parts.append(f"<tr><td>{rank}</td><td>{esc(p['a'])}</td><td>{esc(p['b'])}</td>"
                         f"<td>{p['a_as_b']} ({100 * p['a_as_b_share']:.1f}%)</td>"
                         f"<td>{p['b_as_a']} ({100 * p['b_as_a_share']:.1f}%)</td></tr>")
        parts.append("</table></div><p class='note'>A → B: test images of A predicted as B (share of A's test "
                     "images).</p>")
    for rank, p in enumerate(pairs, start=1):
        a, b = p["a_index"], p["b_index"]
        parts.append(f"<section><h2>#{rank} {esc(p['a'])} ↔ {esc(p['b'])}</h2>")
        parts.append(f"<p class='meta'>{p['a_as_b']} of {esc(p['a'])} predicted as {esc(p['b'])}, {p['b_as_a']} "
                     "the other way</p><div class='pair'>")
        for true, name in ((a, p["a"]), (b, p["b"])):
            parts.append(f"<div class='side'><h3>true class: {esc(name)}</h3>")
            cards = [shown[i] for i in chosen.get((true, b if true == a else a), []) if i in shown]
            if not cards:
                parts.append("<p class='note'>no test images of this class to show</p>")
            for s in cards:
                parts.append(_card(s))
            parts.append("</div>")
        parts.append("</div></section>")
    parts += ["</body></html>", ""]
    return "\n".join(parts)


def _card(s: Shown) -> str:
    esc = html.escape
    ok = "ok" if s.true == s.pred else "bad"
    pics = f"<figure><img src='data:image/jpeg;base64,{s.photo}' alt='{esc(Path(s.path).name)}'>" \
           "<figcaption>photo</figcaption></figure>"
    if s.heat is not None:
        pics += (f"<figure><img src='data:image/jpeg;base64,{s.heat}' alt='attention map {esc(s.heat_name)}'>"
                 f"<figcaption>attention: {esc(s.heat_name)}</figcaption></figure>")
    return (f"<div class='card'><div class='pics'>{pics}</div><div class='cap'><span class='{ok}'>predicted: "
            f"{esc(s.pred)} ({100 * s.prob:.1f}%)</span><br><span class='meta'>{esc(s.path)}</span></div></div>")


def write_page(path: str | Path, pairs: list[dict[str, Any]], *, labels: np.ndarray, preds: np.ndarray,
               probs: np.ndarray, usable: np.ndarray, names: list[str], load: Any, classes: list[str], pre: Any,
               title: str, meta: list[str], model: Any = None, method: str = "", device: Any = None,
               temperature: float = 1.0, note: str = "") -> Path:
    """Choose the images of every pair (`pick`), draw them (`draw`) and write the page atomically.

    `labels` / `preds` / `probs` (the top-1's calibrated probability) / `usable` (read without error) are per test
    image, in the order of `names` (their paths) and of `load(i)`."""
    chosen: dict[tuple[int, int], list[int]] = {}
    for p in pairs:
        a, b = p["a_index"], p["b_index"]
        chosen[(a, b)] = pick(labels, preds, probs, usable, a, b)
        chosen[(b, a)] = pick(labels, preds, probs, usable, b, a)
    wanted = sorted({i for v in chosen.values() for i in v})
    shown = draw(wanted, load, classes, labels, preds, probs, names, pre, model, method, device, temperature)
    path = Path(path)
    atomic_write_text(path, render(pairs, chosen, shown, title, meta, note))
    return path
