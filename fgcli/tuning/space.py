"""The search space of a study: the method's declared `Param`s (or a `--space` YAML file) made concrete
against the config the study starts from, checked before any trial runs, and turned into Optuna
distributions and back into config values.

A `--space` file maps config keys to a range or to choices, and replaces the method's default space:

    optim.lr: {low: 1.0e-4, high: 1.0e-2, log: true}
    train.epochs: {low: 6, high: 18, step: 3}
    model.freeze_bn_stats: [true, false]
    herbs.num_selects: [[0.11, 0.22, 0.44, 0.22], [0.125, 0.125, 0.125, 0.125]]
    optim.backbone_lr_scale: {low: 0.5, high: 2, relative: true}   # multiples of the recipe's value
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fgcli.config import Config, _nest, flatten, from_dict, items, load_yaml, to_dict, validate
from fgcli.errors import UserError, closest
from fgcli.searchspace import Param

#: keys a search may not change: they choose the data it is scored on, or where and how results are kept
UNSEARCHABLE = {
    "method": "a study searches one method (compare methods with --methods / --recipes)",
    "data.path": "the data set is fixed", "data.format": "the data set is fixed",
    "data.val_split": "trials are scored on one validation split",
    "data.val_fraction": "it changes the validation split the trials are scored on",
    "data.seed": "it changes the validation split the trials are scored on",
    "data.level": "the data set is fixed", "data.demo_size": "the data set is fixed",
    "data.demo_per_class": "the data set is fixed", "data.demo_classes": "the data set is fixed",
    "train.project": "trials go under the tune folder", "train.name": "trials go under the tune folder",
    "train.exist_ok": "trials go under the tune folder", "train.device": "it does not change the model",
    "train.quiet": "it does not change the model", "data.workers": "it does not change the model",
}
_UNSEARCHABLE_PREFIXES = ("log.",)
_SPEC_FIELDS = {"low", "high", "log", "step", "relative", "choices"}


@dataclass(frozen=True)
class Dim:
    """One concrete searched key: `kind` float / int (low..high, maybe log or a step) or choice."""

    key: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def distribution(self) -> Any:
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "choice":
            return CategoricalDistribution([encode(c) for c in self.choices])
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)

    def suggest(self, trial: Any) -> Any:
        """Ask the trial for this key's value; returns it as the config holds it."""
        if self.kind == "choice":
            return decode(trial.suggest_categorical(self.key, [encode(c) for c in self.choices]))
        if self.kind == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_float(self.key, float(self.low), float(self.high), log=self.log, step=self.step)

    def describe(self) -> str:
        if self.kind == "choice":
            return "one of " + ", ".join(encode(c) if isinstance(c, (list, tuple)) else yaml_scalar(c)
                                         for c in self.choices)
        extra = ", log" if self.log else f", step {self.step:g}" if self.step else ""
        return f"{self.low:g} .. {self.high:g}{extra}"

    def as_dict(self) -> dict[str, Any]:
        """A JSON-able description (kept with the study, to recognise the same space on resume)."""
        if self.kind == "choice":
            return {"key": self.key, "choices": [encode(c) for c in self.choices]}
        return {"key": self.key, "kind": self.kind, "low": self.low, "high": self.high, "log": self.log,
                "step": self.step}


@dataclass
class Space:
    """The searched dims and the start trial (the recipe's values), with what was left out and why."""

    dims: list[Dim]
    start: dict[str, Any]  # key -> the starting config's value for each dim (trial 0)
    fixed: dict[str, str] = field(default_factory=dict)  # key -> the flag that fixed it
    skipped: dict[str, str] = field(default_factory=dict)  # key -> why it is not searched
    widened: dict[str, str] = field(default_factory=dict)  # key -> how the range grew to hold the start

    def keys(self) -> list[str]:
        return [d.key for d in self.dims]

    def as_list(self) -> list[dict[str, Any]]:
        return [d.as_dict() for d in self.dims]


def encode(value: Any) -> Any:
    """A config value as an Optuna parameter (None, bool, int, float or str): lists become YAML text."""
    if isinstance(value, (list, tuple)):
        return yaml.safe_dump(list(value), default_flow_style=True).strip()
    return value


def decode(value: Any) -> Any:
    """The inverse of `encode`."""
    if isinstance(value, str) and value.startswith("["):
        return yaml.safe_load(value)
    return value


def yaml_scalar(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()



# -- key types ---------------------------------------------------------------------------------------------
def key_types() -> dict[str, Any]:
    """Every dotted config key -> its type hint (Optional unwrapped)."""
    out: dict[str, Any] = {}

    def walk(obj: Any, prefix: str) -> None:
        for key, value, hint in items(obj):
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{key}.")
            else:
                out[f"{prefix}{key}"] = _unwrap(hint)

    walk(Config(), "")
    return out


def _unwrap(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0] if len(args) == 1 else hint
    return hint


# -- declarations -> concrete dims -------------------------------------------------------------------------
def load_space_file(path: str | Path) -> list[Param]:
    """Read a `--space` YAML file into Params (shape checks only; ranges are checked by `resolve`)."""
    data = load_yaml(path)
    where = f"--space {path}"
    if not data:
        raise UserError(f"{where} lists no keys. Map config keys to ranges, e.g. 'optim.lr: {{low: 1.0e-4, "
                        "high: 1.0e-2, log: true}'.")
    params = []
    for key, spec in flatten_space(data).items():
        if isinstance(spec, list):
            spec = {"choices": spec}
        if not isinstance(spec, dict):
            raise UserError(f"{where}: {key} must be a range {{low: A, high: B}} or a list of choices, got "
                            f"{spec!r}.")
        unknown = sorted(set(spec) - _SPEC_FIELDS)
        if unknown:
            raise UserError(f"{where}: {key} has an unknown field '{unknown[0]}'.{closest(unknown[0], _SPEC_FIELDS)}"
                            f" Fields: {', '.join(sorted(_SPEC_FIELDS))}.")
        choices = spec.get("choices")
        if choices is not None:
            if not isinstance(choices, list) or not choices or set(spec) - {"choices"}:
                raise UserError(f"{where}: {key} choices must be a non-empty list (and nothing else).")
            params.append(Param(key, choices=tuple(tuple(c) if isinstance(c, list) else c for c in choices)))
            continue
        if "low" not in spec or "high" not in spec:
            raise UserError(f"{where}: {key} needs low and high (or a list of choices).")
        for name in ("low", "high", "step"):
            value = spec.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise UserError(f"{where}: {key} {name} must be a number, got {value!r}.")
        params.append(Param(key, spec["low"], spec["high"], log=bool(spec.get("log", False)), step=spec.get("step"),
                            relative=bool(spec.get("relative", False))))
    return params


def flatten_space(data: dict[str, Any]) -> dict[str, Any]:
    """Space keys may be dotted (`optim.lr: ...`) or nested (`optim: {lr: ...}`); a range or choice list ends
    the nesting."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and not (set(value) & _SPEC_FIELDS):
            out.update({f"{key}.{k}": v for k, v in flatten_space(value).items()})
        else:
            out[str(key)] = value
    return out


def resolve(params: list[Param] | tuple[Param, ...], base: Config, *, source: str,
            fixed_by: dict[str, str] | None = None, defaults: dict[str, Any] | None = None,
            epochs_high: int | None = None) -> Space:
    """Concrete dims for `params` against the starting config `base`.

    `fixed_by`: keys the user set by flag or --set (never searched); `defaults`: values that stand for a null
    in `base` (the method's backbone lr scale); `epochs_high`: the largest train.epochs a trial may use (the
    same maximum for every arm of a comparison). Every bound and choice must be a valid value of its key (the
    config's own checks), else one UserError naming `source`.
    """
    types_ = key_types()
    flat = flatten(to_dict(base))
    flat.update({k: v for k, v in (defaults or {}).items() if flat.get(k) is None})
    space = Space(dims=[], start={})
    seen: set[str] = set()
    for p in params:
        _check_key(p.key, types_, source)
        if p.key in seen:
            raise UserError(f"{source}: {p.key} is listed twice.")
        seen.add(p.key)
        if p.key in (fixed_by or {}):
            space.fixed[p.key] = fixed_by[p.key]
            continue
        unmet = [f"{k} is {flat.get(k)!r}, not {v!r}" for k, v in p.requires if flat.get(k) != v]
        if unmet:
            space.skipped[p.key] = "; ".join(unmet)
            continue
        start = flat.get(p.key)
        if p.key == "train.epochs" and epochs_high is not None and start > epochs_high:
            raise UserError(f"the study starts from {start} epochs (trial 0 is the recipe as given), above the "
                            f"maximum of {epochs_high}; raise --max-epochs or fix the epochs with --epochs.")
        dim, why = _concrete(p, types_[p.key], start, source, epochs_high)
        if dim is None:
            space.skipped[p.key] = why
            continue
        dim, note = _widen(dim, start)
        if note:
            space.widened[p.key] = note
        _check_values(dim, base, source)
        space.dims.append(dim)
        space.start[p.key] = _as_choice(dim, start)
    return space


def _as_choice(dim: Dim, start: Any) -> Any:
    """The start value as the dim holds it (for choices: the equal choice, so that it encodes the same)."""
    if dim.kind != "choice":
        return start
    value = list(start) if isinstance(start, tuple) else start
    return next(c for c in dim.choices if (list(c) if isinstance(c, tuple) else c) == value)


def _check_key(key: str, types_: dict[str, Any], source: str) -> None:
    if key in UNSEARCHABLE or key.startswith(_UNSEARCHABLE_PREFIXES):
        reason = UNSEARCHABLE.get(key, "it does not change the model")
        raise UserError(f"{source}: {key} cannot be searched ({reason}). Remove it.")
    if key not in types_:
        sections = sorted({k.split(".")[0] for k in types_})
        raise UserError(f"{source}: unknown key '{key}'.{closest(key, list(types_))} Keys are the config's, "
                        f"e.g. optim.lr (sections: {', '.join(sections)}).")


def _concrete(p: Param, hint: Any, start: Any, source: str, epochs_high: int | None) -> tuple[Dim | None, str]:
    if p.choices is not None:
        return Dim(p.key, "choice", choices=tuple(p.choices)), ""
    if hint not in (int, float):
        raise UserError(f"{source}: {p.key} holds a {getattr(hint, '__name__', hint)}, not a number: give a list "
                        f"of choices, e.g. {p.key}: [{yaml_scalar(start)}, ...].")
    low, high = float(p.low), float(p.high)
    if p.relative:
        if not isinstance(start, (int, float)) or isinstance(start, bool) or start <= 0:
            return None, f"a range relative to the start needs a positive start value, not {start!r}"
        low, high = low * start, high * start
    is_int = hint is int
    if is_int and p.relative:
        low = max(1, round(low))
        high = max(round(high), low + 1)
    elif is_int and not (float(p.low).is_integer() and float(p.high).is_integer()):
        raise UserError(f"{source}: {p.key} takes whole numbers; low and high must be integers.")
    if p.key == "train.epochs" and epochs_high is not None:
        high = float(epochs_high)
        if low >= high:
            return None, f"the maximum of {epochs_high} epochs leaves no range below it"
    if not low < high:
        raise UserError(f"{source}: {p.key} needs low < high (got {low:g} and {high:g}).")
    if p.log and low <= 0:
        raise UserError(f"{source}: {p.key} with log: true needs low > 0 (got {low:g}).")
    step = p.step
    if step is not None:
        if p.log:
            raise UserError(f"{source}: {p.key} takes either log or step, not both.")
        if step <= 0 or (is_int and not float(step).is_integer()):
            raise UserError(f"{source}: {p.key} step must be a positive {'integer' if is_int else 'number'}.")
    kind = "int" if is_int else "float"
    if is_int:
        low, high = int(low), int(high)
    if step is not None:
        high = low + math.floor((high - low) / step + 1e-9) * step
    return Dim(p.key, kind, low, high, log=p.log, step=step), ""


def _widen(dim: Dim, start: Any) -> tuple[Dim, str]:
    """Grow the range (or the choices) so that it holds the start value: trial 0 is the recipe as given."""
    if dim.kind == "choice":
        norm = [list(c) if isinstance(c, tuple) else c for c in dim.choices]
        value = list(start) if isinstance(start, tuple) else start
        if value in norm:
            return dim, ""
        return (dataclasses.replace(dim, choices=(start, *dim.choices)),
                f"{yaml_scalar(value)} (the start) added to the choices")
    if start is None or isinstance(start, bool) or not isinstance(start, (int, float)):
        raise UserError(f"{dim.key}: the starting config holds {start!r}, which is not a number; set it in the "
                        "recipe or with --set, or search it with choices.")
    low, high, step = dim.low, dim.high, dim.step
    if dim.log and start <= 0:
        raise UserError(f"{dim.key}: the starting value {start!r} cannot lie on a log range; search it without "
                        "log: true (or start from a positive value).")
    on_grid = step is None or abs((start - low) / step - round((start - low) / step)) < 1e-9
    if low <= start <= high and on_grid:
        return dim, ""
    if step is not None:  # a grid through the start, as wide as before
        n = math.floor((max(high, start) - min(low, start)) / step + 1e-9)
        low = start - math.floor((start - min(low, start)) / step + 1e-9) * step
        high = low + n * step
    low, high = min(low, start), max(high, start)
    if dim.kind == "int":
        low, high = int(low), int(high)
    return dataclasses.replace(dim, low=low, high=high), f"widened to {low:g} .. {high:g} to hold the start {start:g}"


def _check_values(dim: Dim, base: Config, source: str) -> None:
    """Every bound / choice must be a valid value of the key (types and the config's range checks)."""
    values = list(dim.choices) if dim.kind == "choice" else [dim.low, dim.high]
    for value in values:
        what = "choice" if dim.kind == "choice" else ("low" if value == dim.low else "high")
        shown = list(value) if isinstance(value, tuple) else value
        try:
            validate(from_dict(_nest({dim.key: shown}), base, source=source))
        except UserError as e:
            reason = re.sub(r" \(got .*\)$", "", str(e).split(". Fix it in")[0].removeprefix(f"{source}: "))
            text = f"{shown:g}" if isinstance(shown, float) else yaml_scalar(shown)
            raise UserError(f"{source}: {dim.key} {what} {text} is outside the key's valid values ({reason}). "
                            "Fix the range.") from None


def apply(base: Config, values: dict[str, Any], source: str) -> Config:
    """`base` with the searched `values` (config key -> value) set, checked like any config."""
    cfg = from_dict(_nest(values), base, source=source)
    validate(cfg)
    return cfg
