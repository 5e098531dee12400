"""The run configuration: nested dataclasses, YAML recipes and `--set a.b=value` overrides.

Precedence (lowest first): built-in defaults < recipe (`--recipe`) < `--config args.yaml` < CLI flags
< `--set key=value`. Unknown keys are an error that lists the valid ones; values are parsed with YAML's
safe loader (never `eval`) and checked against the field's type.
"""

from __future__ import annotations

import dataclasses
import importlib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fgcli.errors import UserError, closest
from fgcli.methods.builtin import BUILTIN_MODULES

__all__ = ["Config", "MethodSection", "from_saved", "method_sections", "register_section"]


@dataclass(frozen=True)
class MethodSection:
    """A method's config section (`<method>.*` in recipes, args.yaml and --set): its dataclass and range checks."""

    name: str  # the method's name, which is also the section's key
    config: type  # the dataclass of its hyper-parameters
    checks: Callable[[Any], list[tuple[bool, str]]] | None = None  # (ok, message naming the key) pairs


_SECTIONS: dict[str, MethodSection] = {}


def register_section(name: str, config: type, checks: Callable[[Any], list[tuple[bool, str]]] | None = None) -> None:
    """Give method `name` its config section (the method registry does this for a Method with a `config_class`)."""
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"the config section of method {name!r} must be a dataclass, not {config!r}")
    if name in {f.name for f in dataclasses.fields(Config)}:
        raise ValueError(f"method {name!r} cannot have a config section: '{name}' is a section of every config")
    _SECTIONS[name] = MethodSection(name, config, checks)


def method_sections() -> dict[str, MethodSection]:
    """Every method's config section: the built-in methods' (`fgcli/methods/<name>/config.py`: SECTION, CONFIG,
    checks; light, no torch) and any registered since."""
    for name in BUILTIN_MODULES:
        if name not in _SECTIONS:
            try:
                module = importlib.import_module(f"fgcli.methods.{name}.config")
            except ModuleNotFoundError as e:  # a built-in method without hyper-parameters
                if e.name != f"fgcli.methods.{name}.config":
                    raise
                continue
            register_section(module.SECTION, module.CONFIG, getattr(module, "checks", None))
    return dict(_SECTIONS)


def _default_sections() -> dict[str, Any]:
    return {name: section.config() for name, section in method_sections().items()}


@dataclass
class DataConfig:
    """Where the data is and how images become tensors."""

    path: str = "demo"  # prepared folder, raw dataset root, ImageFolder, or "demo"
    format: str = "auto"  # prepare-data format used when `path` is a raw root ("auto" = detect)
    val_fraction: float = 0.1  # carved from train (stratified) when the data set has no official val split
    val_split: str = "val"  # split used for validation / best.pt during training
    img_size: int | None = None  # crop size fed to the network; None = backbone default (or 224)
    resize: int | None = None  # resize before the crop; None = img_size / crop_pct
    resize_mode: str = "shorter"  # "shorter" (keep aspect, shorter side = resize) or "square"
    interpolation: str = "bilinear"
    mean: list[float] | None = None  # None = the backbone's pretrained mean
    std: list[float] | None = None
    hflip: float = 0.5
    color_jitter: float = 0.0
    blur_prob: float = 0.0  # HERBS recipe: GaussianBlur(k=5, sigma in [0.1, 5]) with p=0.1
    sharpness_prob: float = 0.0  # HERBS recipe: RandomAdjustSharpness(1.5) with p=0.1
    # timm's RandomResizedCrop in place of resize + random crop, on when either is set (the other then takes
    # timm's default: scale [0.08, 1], ratio [3/4, 4/3]); null = off
    rrc_scale: list[float] | None = None  # the crop's share of the image area, [min, max]
    rrc_ratio: list[float] | None = None  # the crop's aspect ratio, [min, max]
    # timm's augmentation string: "rand-m9-mstd0.5-inc1" (RandAugment), "augmix-m5-w4-d2", "original" (AutoAugment),
    # or "trivial" (torchvision's TrivialAugmentWide); null = off
    auto_augment: str | None = None
    random_erasing: float = 0.0  # timm RandomErasing probability (per image, per-pixel noise, after normalising)
    workers: int = 2
    decoder: str = "pil"  # training/validation loaders: "pil", or "torchvision" (libjpeg-turbo into tensors, JPEGs)
    demo_size: int = 64  # image size of the generated demo data set
    demo_per_class: int = 150  # train images per class of the demo (test gets a third)
    demo_classes: int = 10
    seed: int = 0  # val/test carving and demo generation (independent of train.seed, so splits stay fixed)
    level: str | None = None  # FGVC-Aircraft label level: variant (default), family or manufacturer


@dataclass
class ModelConfig:
    """The backbone and its weights."""

    backbone: str = "resnet50"
    pretrained: bool = False
    pretrained_file: str | None = None  # local state dict, or an installed weights package name
    pretrained_strict: bool = True
    drop_path: float | None = None  # None = timm default
    output_stride: int | None = None  # timm's dilated last stages (8 or 16): finer maps; None = the model's 32
    # NHWC memory format: "auto" (on CUDA; on a CPU where measured faster for this model, fgcli/engine/speed.py),
    # "always", "never"; the old booleans still load: true = auto, false = never
    channels_last: str = "auto"
    freeze: str = "none"  # "backbone": pretrained trunk(s) fixed (no gradient, batch-norm statistics frozen)
    # head-first (LP-FT): the trunk(s) fixed for the first N epochs while the method's own layers learn on the
    # pretrained features, then fine-tuned at optim.backbone_lr_scale for the rest (one schedule for the run)
    freeze_epochs: int = 0
    # the trunk's batch-norm layers keep their pretrained running statistics (eval mode) while every weight
    # trains: for small per-process batches, where batch statistics are noisy and differ from the pretrained ones
    freeze_bn_stats: bool = False
    # "probe": before fine-tuning, the method's linear head starts from the converged linear probe on the frozen
    # pretrained features (L-BFGS, L2 chosen on val from probe.l2_grid; features cached): LP-FT. Methods with
    # one linear head on pooled features (the baseline); "random": timm's initialisation
    head_init: str = "random"
    compile: bool = False  # torch.compile the training step; falls back to eager with a warning if it fails


@dataclass
class OptimConfig:
    """Optimizer (timm.optim.create_optimizer_v2)."""

    name: str = "sgd"  # any timm optimizer name: sgd, momentum, adamw, ...
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 1e-4
    decay_all: bool = False  # decay biases and norm weights too (the official HERBS / MGE-CNN code does)
    clip_grad: float | None = None
    # the backbone(s) train at lr * this, the method's own layers at lr; None = the method's default
    # (MGE-CNN paper: 0.1, i.e. 1e-3 vs 1e-2; baseline and HERBS: 1.0, as in their official code)
    backbone_lr_scale: float | None = None


@dataclass
class SchedConfig:
    """Learning-rate schedule (timm.scheduler)."""

    name: str = "cosine"  # "cosine", "step", "none"
    warmup: float = 0.0  # warm-up length, in `warmup_unit`s
    warmup_unit: str = "epochs"  # "epochs" or "steps" (optimizer steps)
    warmup_lr: float = 1e-6
    min_lr: float = 0.0
    cosine_period: str = "after_warmup"  # or "whole_run" (HERBS official: cosine over t - warmup, period = run)
    step_size: int = 30  # epochs, for "step"
    gamma: float = 0.1


@dataclass
class TrainConfig:
    """The training loop and the run folder."""

    epochs: int = 10
    batch_size: int = 32
    accum_steps: int = 1
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool | None = None  # None = auto: on for CUDA; bf16 on a CPU with AVX-512 BF16 / AMX where measured faster
    # under CPU bf16 autocast, depthwise convolutions compute in fp32 (oneDNN's bf16 depthwise backward is slow);
    # None = auto (on)
    depthwise_fp32: bool | None = None
    threads: int | None = None  # torch intra-op threads; None = torch's default (the physical cores)
    amp_dtype: str = "auto"  # auto (bf16 if supported else fp16) | fp16 | bf16
    ema: bool = False
    ema_decay: float = 0.9998
    # smoothing of every cross-entropy term on labels (each method says which terms: README "Methods")
    label_smoothing: float = 0.0
    # timm Mixup / CutMix (soft targets), Beta(alpha, alpha) for each; 0 = off; both on: one or the other per
    # batch, at random (timm's switch_prob 0.5); only for methods whose loss takes soft targets
    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0  # the share of batches mixed when mixup or cutmix is on
    seed: int = 0
    deterministic: bool = False
    project: str = "runs/train"
    name: str = "exp"
    exist_ok: bool = False
    max_nonfinite: int = 10  # consecutive non-finite steps before the run stops
    # early stopping: end the run when val top-1 has not improved for this many epochs (0 = never; ultralytics'
    # `patience`); the end-of-run work (confusion matrix, calibration of best.pt) is done as after the last epoch
    patience: int = 0
    sync_bn: bool = False  # DDP on GPUs: batch-norm statistics over the global batch (SyncBatchNorm)
    find_unused_parameters: bool = False  # DDP: for methods whose heads skip parameters in some steps
    quiet: bool = False
    # the share of val images the rejection threshold (fitted with the temperature at the end) keeps:
    # `predict --reject` answers "unknown" below it
    reject_recall: float = 0.95


@dataclass
class DistillConfig:
    """`fgcli distill`: a baseline student learns from a frozen teacher's calibrated probabilities and the labels."""

    teacher: str | None = None  # the teacher's checkpoint (.pt) or exported .onnx; set by `fgcli distill TEACHER`
    alpha: float = 0.5  # weight of the distillation term T^2 * KL(teacher || student); the labels' loss gets 1 - alpha
    temperature: float = 2.0  # T, softening teacher and student alike (on top of the teacher's calibration)


@dataclass
class LogConfig:
    """Experiment trackers (`--logger`): TensorBoard event files in the run folder, an MLflow run."""

    loggers: list[str] = field(default_factory=list)  # "tensorboard", "mlflow"; none by default
    mlflow_uri: str | None = None  # None = $MLFLOW_TRACKING_URI, else a local ./mlruns store
    mlflow_experiment: str = "fgcli"


@dataclass
class Config:
    """Everything a run needs; saved as args.yaml."""

    method: str = "baseline"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    #: each method's section by name (`cfg.herbs` reads `sections["herbs"]`); saved at the top level
    sections: dict[str, Any] = field(default_factory=_default_sections, repr=False)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: SchedConfig = field(default_factory=SchedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __getattr__(self, name: str) -> Any:
        """A method's section as an attribute (`cfg.herbs.temperature`)."""
        sections = self.__dict__.get("sections")
        if sections is None or name.startswith("__"):
            raise AttributeError(name)
        if name not in sections and name in _SECTIONS:  # registered after this config was made
            sections[name] = _SECTIONS[name].config()
        if name in sections:
            return sections[name]
        raise AttributeError(f"'Config' has no section {name!r}")


def items(cfg: Any) -> list[tuple[str, Any, Any]]:
    """(key, value, type hint) of each entry of a config dataclass, the method sections at the top level of a
    Config (in the place of `sections`)."""
    hints = typing.get_type_hints(type(cfg))
    out: list[tuple[str, Any, Any]] = []
    for f in dataclasses.fields(cfg):
        if isinstance(cfg, Config) and f.name == "sections":
            sections = method_sections()
            out += [(name, getattr(cfg, name), sections[name].config) for name in sections]
        else:
            out.append((f.name, getattr(cfg, f.name), hints[f.name]))
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts (YAML / checkpoint friendly)."""
    if not isinstance(cfg, Config):
        return dataclasses.asdict(cfg)
    return {key: dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
            for key, value, _ in items(cfg)}


def from_dict(data: dict[str, Any], base: Config | None = None, source: str = "config") -> Config:
    """Merge a nested dict onto `base` (default: built-in defaults), checking keys and types."""
    cfg = _copy(base) if base is not None else Config()
    _merge(cfg, _migrate(data or {}), prefix="", source=source)
    return cfg


def from_saved(data: dict[str, Any], source: str = "checkpoint config") -> Config:
    """The config a run saved (checkpoint, args.yaml). A section of another method that this process does not
    know is dropped: a run written where a plugin method was registered carries every registered method's section,
    and only its own method's matters here (that one must be known)."""
    known = {f.name for f in dataclasses.fields(Config)} | set(method_sections()) | {data.get("method")}
    return from_dict({k: v for k, v in (data or {}).items() if k in known or not isinstance(v, dict)}, source=source)


# Keys that moved: old recipes, args.yaml files and checkpoints keep loading.
MOVED_KEYS = {("mge", "backbone_lr_scale"): ("optim", "backbone_lr_scale")}
# Values whose form changed (same key): {(section, key): {old value: new value}}.
LEGACY_VALUES: dict[tuple[str, str], dict[Any, Any]] = {
    ("model", "channels_last"): {True: "auto", False: "never"},  # was a bool meaning "on CUDA"
}


def _migrate(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with keys from MOVED_KEYS moved to their new place (the new place wins when both are set)."""
    if not isinstance(data, dict):
        return data
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for (old_section, old_key), (new_section, new_key) in MOVED_KEYS.items():
        section = out.get(old_section)
        if isinstance(section, dict) and old_key in section:
            value = section.pop(old_key)
            target = out.setdefault(new_section, {})
            if isinstance(target, dict):
                target.setdefault(new_key, value)
    for (section_name, key), mapping in LEGACY_VALUES.items():
        section = out.get(section_name)
        if isinstance(section, dict) and isinstance(section.get(key), bool):
            section[key] = mapping.get(section[key], section[key])
    return out


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing or malformed file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"config file {path} does not exist. Check the path (recipes live in models/).")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {str(e).splitlines()[0]}. Fix the file.") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a YAML mapping (key: value), not a {type(data).__name__}.")
    return data


def save_yaml(cfg: Config, path: str | Path) -> None:
    """Write the resolved config atomically as YAML."""
    from fgcli.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Turn ['a.b=1', 'c=x'] into a nested dict; values parsed with yaml.safe_load."""
    nested: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set '{item}' must look like key=value, e.g. --set optim.lr=0.01")
        key, raw = item.split("=", 1)
        key = key.strip()
        if not key:
            raise UserError(f"--set '{item}' has an empty key; use e.g. --set optim.lr=0.01")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--set '{item}' conflicts with an earlier --set of '{part}'.")
        node[parts[-1]] = value
    return nested


def resolve_config(
    recipe: str | Path | None = None,
    config_file: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    overrides: list[str] | None = None,
    check: bool = True,
) -> Config:
    """Build the config with precedence defaults < recipe < config file < flags < --set (validated unless
    `check` is False: the caller validates after fitting it)."""
    cfg = Config()
    if recipe is not None:
        cfg = from_dict(load_yaml(resolve_recipe(recipe)), cfg, source=f"recipe {recipe}")
    if config_file is not None:
        cfg = from_dict(load_yaml(config_file), cfg, source=f"config {config_file}")
    if flags:
        cfg = from_dict(_nest({k: v for k, v in flags.items() if v is not None}), cfg, source="flags")
    if overrides:
        cfg = from_dict(parse_overrides(overrides), cfg, source="--set")
    if check:
        validate(cfg)
    return cfg


def recipe_folders() -> list[Path]:
    """Where bare recipe names are looked up, first match wins: ./models (the user's own recipes), the recipes
    shipped inside the installed package (`fgcli/_recipes`, a wheel install), and the source tree's `models/`
    (an editable install or a checkout)."""
    from importlib.resources import files

    shipped = Path(str(files("fgcli") / "_recipes"))
    source = Path(__file__).resolve().parent.parent / "models"
    return [Path.cwd() / "models", shipped, source]


def resolve_recipe(recipe: str | Path) -> Path:
    """A recipe path, or a bare recipe name looked up in `recipe_folders()`."""
    path = Path(recipe)
    if path.is_file():
        return path
    name = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
    folders = recipe_folders()
    for folder in folders:
        if (folder / name).is_file():
            return folder / name
    known = sorted({p.stem for folder in folders if folder.is_dir() for p in folder.glob("*.yaml")})
    raise UserError(f"recipe '{recipe}' not found.{closest(path.stem, known)} "
                    f"Give a YAML path or one of: {', '.join(known) or '(none found)'}")


def validate(cfg: Config) -> None:
    """Range checks that types alone cannot express."""
    checks: list[tuple[bool, str]] = [
        (cfg.train.epochs >= 1, "train.epochs must be >= 1"),
        (cfg.train.batch_size >= 1, "train.batch_size must be >= 1"),
        (cfg.train.patience >= 0, "train.patience must be >= 0 (epochs without a val gain before stopping; 0 = off)"),
        (cfg.train.accum_steps >= 1, "train.accum_steps must be >= 1"),
        (cfg.data.workers >= 0, "data.workers must be >= 0"),
        (cfg.data.img_size is None or cfg.data.img_size >= 8, "data.img_size must be >= 8"),
        (cfg.data.resize is None or cfg.data.resize >= 8, "data.resize must be >= 8"),
        (0.0 <= cfg.data.val_fraction < 1.0, "data.val_fraction must be in [0, 1)"),
        (cfg.data.resize_mode in ("shorter", "square"), "data.resize_mode must be 'shorter' or 'square'"),
        (cfg.data.decoder in ("pil", "torchvision"), "data.decoder must be 'pil' or 'torchvision'"),
        (cfg.optim.lr > 0, "optim.lr must be > 0"),
        (cfg.optim.weight_decay >= 0, "optim.weight_decay must be >= 0"),
        (0.0 <= cfg.optim.momentum < 1.0, "optim.momentum must be in [0, 1)"),
        (0.0 <= cfg.data.hflip <= 1.0, "data.hflip must be in [0, 1] (a probability)"),
        (cfg.sched.name in ("cosine", "step", "none"), "sched.name must be one of cosine, step, none"),
        (cfg.sched.warmup_unit in ("epochs", "steps"), "sched.warmup_unit must be 'epochs' or 'steps'"),
        (cfg.sched.cosine_period in ("after_warmup", "whole_run"),
         "sched.cosine_period must be 'after_warmup' or 'whole_run'"),
        (cfg.sched.warmup >= 0, "sched.warmup must be >= 0"),
        (cfg.train.amp_dtype in ("auto", "fp16", "bf16"), "train.amp_dtype must be auto, fp16 or bf16"),
        (0.0 < cfg.train.reject_recall <= 1.0, "train.reject_recall must be in (0, 1]"),
        (cfg.optim.backbone_lr_scale is None or cfg.optim.backbone_lr_scale >= 0,
         "optim.backbone_lr_scale must be >= 0 (or null for the method's default)"),
        (cfg.model.freeze in ("none", "backbone"), "model.freeze must be 'none' or 'backbone'"),
        (0 <= cfg.model.freeze_epochs < cfg.train.epochs,
         "model.freeze_epochs must be >= 0 and below train.epochs (the epochs before the backbone trains)"),
        (cfg.model.freeze_epochs == 0 or cfg.model.freeze == "none",
         "model.freeze_epochs needs model.freeze: none (with 'backbone' the trunk never trains)"),
        (cfg.model.head_init in ("random", "probe"), "model.head_init must be 'random' or 'probe'"),
        (cfg.model.channels_last in ("auto", "always", "never"),
         "model.channels_last must be auto, always or never"),
        (cfg.train.threads is None or cfg.train.threads >= 1, "train.threads must be >= 1 (or null for all cores)"),
        (cfg.model.output_stride in (None, 8, 16, 32), "model.output_stride must be 8, 16, 32 or null"),
        (0.0 <= cfg.distill.alpha <= 1.0, "distill.alpha must be in [0, 1]"),
        (cfg.distill.temperature > 0, "distill.temperature must be > 0"),
        (_range_pair(cfg.data.rrc_scale, 1.0), "data.rrc_scale must be [min, max] with 0 < min <= max <= 1 (or null)"),
        (_range_pair(cfg.data.rrc_ratio, None), "data.rrc_ratio must be [min, max] with 0 < min <= max (or null)"),
        (cfg.data.auto_augment is None or cfg.data.auto_augment == "trivial"
         or cfg.data.auto_augment.startswith(AUTO_AUGMENT_PREFIXES),
         "data.auto_augment must be a timm augmentation string (rand-m9-mstd0.5-inc1, augmix-m5-w4-d2, original, "
         "v0), trivial, or null"),
        (0.0 <= cfg.data.random_erasing <= 1.0, "data.random_erasing must be in [0, 1] (a probability)"),
        (0.0 <= cfg.train.label_smoothing < 1.0, "train.label_smoothing must be in [0, 1)"),
        (cfg.train.mixup >= 0, "train.mixup must be >= 0 (the Beta distribution's alpha; 0 = off)"),
        (cfg.train.cutmix >= 0, "train.cutmix must be >= 0 (the Beta distribution's alpha; 0 = off)"),
        (0.0 < cfg.train.mixup_prob <= 1.0, "train.mixup_prob must be in (0, 1]"),
        (not (cfg.train.mixup or cfg.train.cutmix) or cfg.train.batch_size % 2 == 0,
         "train.batch_size must be even with train.mixup / train.cutmix (timm mixes each batch with its reverse)"),
    ]
    for name, section in method_sections().items():
        if section.checks is not None:
            checks += section.checks(getattr(cfg, name))
    for ok, message in checks:
        if not ok:
            raise UserError(f"{message}{_got(cfg, message.split()[0])}. Fix it in the recipe, --config file, flag "
                            "or --set.")


#: what `data.auto_augment` may start with: timm's RandAugment, AugMix and AutoAugment policies
AUTO_AUGMENT_PREFIXES = ("rand", "augmix", "original", "v0", "3a")


def _range_pair(values: list[float] | None, upper: float | None) -> bool:
    """None, or [min, max] with 0 < min <= max (<= upper)."""
    if values is None:
        return True
    return len(values) == 2 and 0 < values[0] <= values[1] and (upper is None or values[1] <= upper)


def _got(cfg: Config, key: str) -> str:
    """' (got VALUE)' for the dotted `key` of `cfg`, or '' when the message does not start with a key."""
    value: Any = cfg
    for part in key.split("."):
        if not dataclasses.is_dataclass(value) or not hasattr(value, part):
            return ""
        value = getattr(value, part)
    return f" (got {value!r})"


def flatten(nested: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1} (the inverse of `_nest`)."""
    out: dict[str, Any] = {}
    for key, value in nested.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def _copy(obj: Any) -> Any:
    return type(obj)(**{f.name: _copy_value(getattr(obj, f.name)) for f in dataclasses.fields(obj)})


def _copy_value(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return _copy(value)
    if isinstance(value, list):
        return list(value)
    if isinstance(value, dict):
        return {k: _copy_value(v) for k, v in value.items()}
    return value


def _merge(obj: Any, data: dict[str, Any], prefix: str, source: str) -> None:
    if not isinstance(data, dict):
        raise UserError(f"{source}: '{prefix.rstrip('.')}' must be a mapping of keys, got {data!r}.")
    entries = {key: hint for key, _, hint in items(obj)}
    names = list(entries)
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            valid = ", ".join(f"{prefix}{n}" for n in names)
            raise UserError(f"{source}: unknown key '{full}'.{closest(str(key), names)} Valid keys here: {valid}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _merge(current, value, prefix=f"{full}.", source=source)
        else:
            setattr(obj, key, _coerce(value, entries[key], full, source))


def _coerce(value: Any, hint: Any, key: str, source: str) -> Any:
    """Check `value` against the type hint, converting the safe cases (int -> float, str path)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key, source)
            except UserError as e:
                errors.append(str(e))
        raise UserError(errors[0] if errors else f"{source}: {key} has a wrong type.")
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, list):
            raise UserError(f"{source}: {key} must be a list like [1, 2], got {value!r}.")
        (inner,) = args or (Any,)
        return [_coerce(v, inner, key, source) for v in value]
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise UserError(f"{source}: {key} must be true or false, got {value!r}.")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise UserError(f"{source}: {key} must be an integer, got {value!r}.")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise UserError(f"{source}: {key} must be a number, got {value!r}.")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise UserError(f"{source}: {key} must be a string, got {value!r}.")
    return value
