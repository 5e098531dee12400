"""The shared value types that describe a trained model: its preprocessing and its `ModelInfo`.

They sit at the bottom of the layers (see tests/test_layers.py) so that backbones, checkpoints, inference
and export all read the same description. `ModelInfo` is also what an exported ONNX file says about itself
(`metadata_props`): enough to use it with no checkpoint. Every value is a string; lists and numbers are JSON;
`ModelInfo.from_props` accepts files written by this version and names the missing keys of anything else.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fgcli.errors import UserError


@dataclass
class Preprocess:
    """How images must be prepared for a model (stored in checkpoints and ONNX metadata)."""

    img_size: int
    resize: int
    resize_mode: str  # "shorter" | "square"
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def to_dict(self) -> dict[str, Any]:
        return {"img_size": self.img_size, "resize": self.resize, "resize_mode": self.resize_mode,
                "mean": list(self.mean), "std": list(self.std), "interpolation": self.interpolation}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(img_size=int(d["img_size"]), resize=int(d["resize"]), resize_mode=str(d["resize_mode"]),
                   mean=tuple(float(v) for v in d["mean"]), std=tuple(float(v) for v in d["std"]),
                   interpolation=str(d.get("interpolation", "bilinear")))


FORMAT_VERSION = 1
#: keys every fgcli ONNX file carries (besides the optional ones in `ModelInfo.extra`)
REQUIRED_KEYS = ("fgcli_format", "classes", "img_size", "resize", "resize_mode", "interpolation", "mean", "std",
                 "method", "backbone", "fgcli_version", "precision")


@dataclass
class ModelInfo:
    """The model's description: classes, preprocessing and provenance."""

    classes: list[str]
    preprocess: Preprocess
    method: str
    backbone: str
    fgcli_version: str
    precision: str = "fp32"  # fp32 | fp16 | int8
    source_sha256: str = ""
    extra: dict[str, str] = field(default_factory=dict)  # exporter, opset, source checkpoint name, epoch, ...

    def to_props(self) -> dict[str, str]:
        """The `metadata_props` key/value strings."""
        pre = self.preprocess
        props = {
            "fgcli_format": str(FORMAT_VERSION),
            "classes": json.dumps(list(self.classes), ensure_ascii=False),
            "num_classes": str(len(self.classes)),
            "img_size": str(pre.img_size),
            "resize": str(pre.resize),
            "resize_mode": pre.resize_mode,
            "interpolation": pre.interpolation,
            "mean": json.dumps([float(v) for v in pre.mean]),
            "std": json.dumps([float(v) for v in pre.std]),
            "input": "images: float32 N x 3 x img_size x img_size, RGB in [0, 1] minus mean, divided by std",
            "outputs": "logits: N x C fused logits; probs: N x C softmax(logits)",
            "method": self.method,
            "backbone": self.backbone,
            "fgcli_version": self.fgcli_version,
            "precision": self.precision,
            "source_checkpoint_sha256": self.source_sha256,
        }
        props.update({k: str(v) for k, v in self.extra.items()})
        return props

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "the ONNX file") -> ModelInfo:
        """Parse `metadata_props`; a clear error when the file was not written by `fgcli export`."""
        missing = [k for k in REQUIRED_KEYS if k not in props]
        if missing:
            raise UserError(f"{source} has no fgcli metadata ({', '.join(missing)} missing): it was not written by "
                            "`fgcli export`. Export the checkpoint with `fgcli export CHECKPOINT --onnx`.")
        try:
            pre = Preprocess(img_size=int(props["img_size"]), resize=int(props["resize"]),
                             resize_mode=props["resize_mode"], mean=tuple(json.loads(props["mean"])),
                             std=tuple(json.loads(props["std"])), interpolation=props["interpolation"])
            classes = [str(c) for c in json.loads(props["classes"])]
        except (ValueError, TypeError) as e:
            raise UserError(f"{source} has malformed fgcli metadata ({e}). Re-export it with `fgcli export`.") from e
        known = set(REQUIRED_KEYS) | {"num_classes", "input", "outputs", "source_checkpoint_sha256"}
        return cls(classes=classes, preprocess=pre, method=props["method"], backbone=props["backbone"],
                   fgcli_version=props["fgcli_version"], precision=props["precision"],
                   source_sha256=props.get("source_checkpoint_sha256", ""),
                   extra={k: v for k, v in props.items() if k not in known})

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any], classes: list[str] | None = None,
                        preprocess: Preprocess | None = None, source_sha256: str = "",
                        extra: dict[str, str] | None = None) -> ModelInfo:
        """The description of a loaded fgcli checkpoint dict (see fgcli.engine.checkpoint)."""
        info_extra = {"source_checkpoint_epoch": str(ckpt.get("epoch", "")),
                      "source_checkpoint_date": str(ckpt.get("date", ""))}
        info_extra.update(extra or {})
        return cls(classes=list(classes if classes is not None else ckpt["classes"]),
                   preprocess=preprocess or Preprocess.from_dict(ckpt["preprocess"]),
                   method=str(ckpt.get("method", "")), backbone=str(ckpt.get("backbone", "")),
                   fgcli_version=str(ckpt.get("fgcli_version", "")), source_sha256=source_sha256,
                   extra=info_extra)


def set_metadata(model: Any, info: ModelInfo) -> None:
    """Write `info` into an `onnx.ModelProto`'s metadata_props (replacing earlier fgcli keys)."""
    props = info.to_props()
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for p in kept:
        model.metadata_props.add(key=p.key, value=p.value)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)


def get_metadata(model: Any) -> dict[str, str]:
    """The metadata_props of an `onnx.ModelProto` as a dict."""
    return {p.key: p.value for p in model.metadata_props}


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
