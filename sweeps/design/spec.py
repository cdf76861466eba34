"""Sweep files: what a sweep is, validated before any trial is scheduled.

A sweep file names a base trial config, the axes to vary, the seeds, the search, resources per
trial and where results go. Every trial config the sweep can produce is validated here, so a
typo fails in a second with the file, the field and what is allowed, never after an hour on a
cluster.
"""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any, Literal, Optional, Union

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainables.config import INT_FIELDS, SPEED_DEFAULTS, TrialConfig, architecture, can_pack, describe_validation_error
from trainables.uri import password_problem

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)


class SweepLoader(yaml.SafeLoader):
    """The safe loader (no tags that build objects), reading `5e-4` and `1e6` as floats.

    PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent, so `5e-4` would
    silently be a string; every scientist writes it that way.
    """


SweepLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def read_yaml(text: str) -> Any:
    return yaml.load(text, Loader=SweepLoader)  # noqa: S506 - SweepLoader is a SafeLoader


class SweepError(ValueError):
    """A sweep file that cannot run; the message names the file, the field and the fix."""


class RangeAxis(BaseModel):
    """`{low, high, count, scale}`: `count` grid points (or a distribution for random/optuna)."""

    model_config = _STRICT
    low: float
    high: float
    count: int = Field(5, ge=1, description="grid points; ignored by random and optuna search")
    scale: Literal["linear", "log"] = "linear"

    @model_validator(mode="after")
    def _check_bounds(self) -> "RangeAxis":
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.scale == "log" and self.low <= 0:
            raise ValueError(f"a log range needs low > 0 (got {self.low}); use scale: linear or a list with 0")
        return self


Axis = Union[RangeAxis, list[Any]]


BOUNDARY_FIELDS = ("x", "max_trials", "ci_width", "delta", "per_round")


class SearchSpec(BaseModel):
    model_config = _STRICT
    kind: Literal["grid", "random", "optuna", "boundary"] = "grid"
    num_samples: int | None = Field(None, ge=1, description="random/optuna: configs to draw (each runs every seed)")
    metric: str | None = Field(None, description="optuna: a final metric, e.g. test_acc")
    mode: Literal["max", "min"] | None = None
    seed: int = Field(0, ge=0, description="seed of the search itself (random draws, Optuna's sampler, the boundary fits' posterior draws)")
    # boundary: refine a coarse grid where the fitted phase boundary is uncertain (sweeps.search.boundary)
    x: str = Field("pretrain_epochs", description="boundary: the axis along which each slice's x_critical is located")
    max_trials: int | None = Field(None, ge=1, description="boundary: trial budget, coarse grid included (each seed counts)")
    ci_width: float | None = Field(None, gt=0, description="boundary: stop once every slice's x_critical 90% "
                                                            "interval is narrower than this (in x units)")
    delta: float = Field(0.05, gt=0, lt=1, description="boundary: test-accuracy drop that makes a minimum bad "
                                                        "(as minima phase --delta)")
    per_round: int = Field(1, ge=1, description="boundary: the most cells proposed in one slice in a round")

    @model_validator(mode="after")
    def _check_kind(self) -> "SearchSpec":
        if self.kind in ("random", "optuna") and self.num_samples is None:
            raise ValueError(f"search kind {self.kind!r} needs num_samples (configs to draw)")
        if self.kind == "optuna" and (self.metric is None or self.mode is None):
            raise ValueError("search kind 'optuna' needs metric (e.g. test_acc) and mode (max or min)")
        if self.kind == "boundary":
            if self.max_trials is None:
                raise ValueError("search kind 'boundary' needs max_trials (the trial budget, coarse grid included)")
            if self.num_samples is not None:
                raise ValueError("num_samples is for random/optuna search; boundary search stops at max_trials "
                                 "or ci_width")
        else:
            # a stored spec lists every field: only a value other than the default is misplaced
            misplaced = [f for f in BOUNDARY_FIELDS if getattr(self, f) != SearchSpec.model_fields[f].default]
            if misplaced:
                raise ValueError(f"{', '.join(misplaced)}: only for search kind 'boundary' (this is {self.kind!r})")
        return self


class ResourcesSpec(BaseModel):
    model_config = _STRICT
    cpu: float = Field(1.0, gt=0, description="CPUs per trial (fractions allowed)")
    gpu: float = Field(0.0, ge=0, description="GPUs per trial; 0.25 packs 4 trials on one GPU")

    @field_validator("gpu")
    @classmethod
    def _whole_or_fraction(cls, v: float) -> float:
        if v > 1 and v != int(v):
            raise ValueError("more than one GPU per trial must be a whole number")
        return v


class SweepSpec(BaseModel):
    model_config = _STRICT
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="sweep name: letters, digits, _ . -")
    description: str = ""
    base: dict[str, Any] = Field(default_factory=dict, description="trial config fields shared by every trial")
    axes: dict[str, Axis] = Field(default_factory=dict, description="trial config fields to vary")
    seeds: list[int] | int = Field([0], description="a list of seeds, or a count n meaning 0..n-1")
    search: SearchSpec = SearchSpec()
    resources: ResourcesSpec = ResourcesSpec()
    max_concurrent: int | None = Field(None, ge=1, description="trials at once; null = as many as resources allow")
    max_failures: int = Field(0, ge=0, description="retries of a trial that raises (node loss, OOM)")
    checkpoint_every: int = Field(5, ge=1, description="epochs between trial checkpoints (and at each stage end)")
    share_pretraining: bool = Field(True, description="grid: run each distinct pretraining once, trials start from its snapshots")
    pack: int | Literal["auto"] = Field("auto", description="grid: trials per Ray trial, trained as one stacked model; "
                                                        "auto = by device and model, 1 = no packing")
    pack_plan: dict[str, int] | None = Field(None, description="pack: auto as resolved when the sweep starts: members "
                                              "per pack for each architecture (1 = alone); stored so a resume agrees")
    storage: str = Field("minima_results", description="local folder or s3:// / gs:// URI for Ray results")
    tracking_uri: str = Field("sqlite:///mlflow.db", description="MLflow tracking URI")

    @field_validator("storage", "tracking_uri")
    @classmethod
    def _no_password(cls, v: str) -> str:
        if (why := password_problem(v)) is not None:
            raise ValueError(why)
        return v

    @field_validator("search", mode="before")
    @classmethod
    def _search_shorthand(cls, v: Any) -> Any:
        return {"kind": v} if isinstance(v, str) else v

    @field_validator("seeds")
    @classmethod
    def _seeds_list(cls, v: list[int] | int) -> list[int]:
        seeds = list(range(v)) if isinstance(v, int) else v
        if not seeds:
            raise ValueError("at least one seed is needed")
        if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
            raise ValueError("seeds must be distinct and >= 0")
        return seeds

    @field_validator("base")
    @classmethod
    def _base_fields(cls, base: dict[str, Any]) -> dict[str, Any]:
        if "seed" in base:
            raise ValueError("seed: list the seeds under `seeds:` instead")
        try:
            TrialConfig(**base)
        except ValidationError as err:
            lines = [line.strip() for line in describe_validation_error(err).splitlines()[1:]]
            raise ValueError("\n  ".join(f"base.{line}" for line in lines)) from None
        return base

    @field_validator("axes")
    @classmethod
    def _axis_names(cls, axes: dict[str, Axis]) -> dict[str, Axis]:
        known = set(TrialConfig.field_names())
        for name, axis in axes.items():
            if name == "seed":
                raise ValueError("seed is not an axis: list the seeds under `seeds:`")
            if name not in known:
                raise ValueError(f"unknown axis {name!r}: axes must be trial config fields "
                                 f"({', '.join(sorted(known - {'seed'}))})")
            if isinstance(axis, list) and not axis:
                raise ValueError(f"axis {name!r} is empty: give at least one value")
            if isinstance(axis, list) and len(set(map(repr, axis))) != len(axis):
                raise ValueError(f"axis {name!r} repeats a value")
        return axes

    @field_validator("pack")
    @classmethod
    def _pack_size(cls, v: int | str) -> int | str:
        if isinstance(v, int) and v < 1:
            raise ValueError("pack must be >= 1 (1 = one trial per Ray trial) or auto")
        return v

    @field_validator("pack_plan")
    @classmethod
    def _pack_plan_sizes(cls, v: dict[str, int] | None) -> dict[str, int] | None:
        if v is not None and any(size < 1 for size in v.values()):
            raise ValueError("pack_plan: every size must be >= 1 (1 = alone)")
        return v

    @model_validator(mode="after")
    def _check_pack(self) -> "SweepSpec":
        if self.pack_plan is not None and (self.pack != "auto" or self.search.kind != "grid"):
            raise ValueError("pack_plan is how a grid sweep's pack: auto was resolved; remove it (or set pack: auto)")
        if isinstance(self.pack, int) and self.pack > 1 and self.search.kind != "grid":
            raise ValueError(f"pack: {self.pack} needs search: grid (packs are formed from the whole grid "
                             f"before it runs); use pack: 1 or auto with {self.search.kind} search")
        if isinstance(self.pack, int) and self.pack > 1:
            for cell in self.grid_cells():
                try:
                    cfg = TrialConfig(**{**self.base, **cell, "seed": self.seeds[0]})
                except ValidationError:
                    continue  # _check_trials names what is wrong with it
                if not can_pack(cfg):
                    name = next(iter(cfg.speed_options))
                    raise ValueError(f"{'axes' if name in cell else 'base'}.{name}: packed trials (pack: {self.pack}) "
                                     f"train with {name}: {SPEED_DEFAULTS[name]}; use pack: 1 (or auto) to set it")
        return self

    @model_validator(mode="after")
    def _check_boundary(self) -> "SweepSpec":
        if self.search.kind != "boundary":
            return self
        x = self.search.x
        if not isinstance(self.axes.get(x), RangeAxis):
            got = "a list" if x in self.axes else "not an axis"
            raise ValueError(f"search.x: {x} must be an axis given as a range {{low, high, count}} ({got}): count "
                             f"is the coarse grid, the search refines between its points")
        if self.axes[x].count < 2:
            raise ValueError(f"axes.{x}.count: the coarse grid needs at least 2 points (got {self.axes[x].count})")
        from .boundary_grid import coarse_trials  # it reads the fields validated above

        coarse = coarse_trials(self)
        if coarse > self.search.max_trials:
            raise ValueError(f"search.max_trials: {self.search.max_trials} is below the {coarse} trials of the "
                             f"coarse grid and its baselines; raise it, or lower axes.{x}.count or the seeds")
        return self

    @model_validator(mode="after")
    def _check_trials(self) -> "SweepSpec":
        overlap = sorted(set(self.base) & set(self.axes))
        if overlap:
            raise ValueError(f"{', '.join(overlap)} in both base and axes: keep each in one place")
        problems = list(_config_problems(self))
        if problems:
            more = f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else ""
            raise ValueError("some trials would be invalid:\n" + "\n".join(problems[:12]) + more)
        if self.pack_plan is not None:
            names = {architecture(TrialConfig(**values)) for values in self.trial_values()}
            unknown = sorted(set(self.pack_plan) - names)
            if unknown:
                raise ValueError(f"pack_plan names architectures not in the grid: {'; '.join(unknown)}; remove "
                                 f"pack_plan (it is filled in when the sweep starts; the grid's: {'; '.join(sorted(names))})")
        return self

    # --- derived views -------------------------------------------------------------------
    def axis_values(self, name: str) -> list[Any]:
        """Grid values of one axis (ranges expanded to `count` points, ints rounded and deduplicated)."""
        axis = self.axes[name]
        if isinstance(axis, list):
            return list(axis)
        points = (np.geomspace if axis.scale == "log" else np.linspace)(axis.low, axis.high, axis.count)
        if name in INT_FIELDS:
            return sorted({int(round(p)) for p in points})
        return [float(f"{p:.6g}") for p in points]

    def grid_cells(self) -> list[dict[str, Any]]:
        """Every combination of axis values (without seeds), as overrides of `base`."""
        names = list(self.axes)
        return [dict(zip(names, combo)) for combo in itertools.product(*(self.axis_values(n) for n in names))]

    def trial_values(self) -> list[dict[str, Any]]:
        """Every trial config of a grid sweep (cells x seeds, seeds innermost), as plain values."""
        return [{**self.base, **cell, "seed": seed} for cell in self.grid_cells() for seed in self.seeds]

    def num_trials(self) -> int:
        """Trials the sweep runs; for boundary search, at most (its budget)."""
        if self.search.kind == "boundary":
            return self.search.max_trials
        per_seed = len(self.grid_cells()) if self.search.kind == "grid" else self.search.num_samples
        return per_seed * len(self.seeds)

    def summary(self) -> dict[str, Any]:
        axes = {n: (self.axis_values(n) if self.search.kind == "grid" or isinstance(a, list) else a.model_dump())
                for n, a in self.axes.items()}
        return {"name": self.name, "search": self.search.kind, "trials": self.num_trials(), "axes": axes,
                "seeds": self.seeds, "resources": self.resources.model_dump(), "storage": self.storage,
                "tracking_uri": self.tracking_uri}


def _config_problems(spec: SweepSpec):
    """Yield one line per invalid trial config the sweep could produce (grid points, range ends)."""
    if spec.search.kind == "grid":
        candidates = spec.grid_cells()
    else:  # ranges are sampled: check both ends, lists every value
        names = list(spec.axes)
        options = [a if isinstance(a, list) else [a.low, a.high] for a in spec.axes.values()]
        candidates = [dict(zip(names, combo)) for combo in itertools.product(*options)]
        candidates = [{k: (round(v) if k in INT_FIELDS and isinstance(v, float) else v) for k, v in c.items()}
                      for c in candidates]
    seen: set[str] = set()
    for overrides in candidates:
        try:
            TrialConfig(**{**spec.base, **overrides, "seed": spec.seeds[0]})
        except ValidationError as err:
            for line in describe_validation_error(err).splitlines()[1:]:
                field, _, msg = line.strip().partition(": ")
                if field in overrides:  # one axis value is bad on its own
                    line = f"  axes.{field} = {overrides[field]!r}: {msg}"
                else:
                    combo = ", ".join(f"{k}={v!r}" for k, v in overrides.items())
                    line = f"  trial with {combo}: {field}: {msg}"
                if line not in seen:
                    seen.add(line)
                    yield line


def _format_error(err: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid sweep file"]
    for e in err.errors():
        if e["type"] == "list_type" and isinstance(e.get("input"), dict):
            continue  # a range axis was meant; its own error is reported
        loc = ".".join(str(p) for p in e["loc"] if not str(p).startswith(("list[", "RangeAxis", "function-")))
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key; allowed here: " + ", ".join(_allowed_keys(e["loc"]))
        got = f" (got {e['input']!r})" if e["type"] not in ("extra_forbidden", "value_error") and not isinstance(e.get("input"), (dict, list)) else ""
        prefix = f"{loc}: " if loc and not msg.startswith(f"{loc}.") else ""
        lines.append(f"  {prefix}{msg}{got}")
    return "\n".join(dict.fromkeys(lines))


def _allowed_keys(loc: tuple) -> list[str]:
    models = {"search": SearchSpec, "resources": ResourcesSpec}
    model = models.get(str(loc[0]), RangeAxis if loc and loc[0] == "axes" else SweepSpec) if len(loc) > 1 else SweepSpec
    return list(model.model_fields)


def declared_type(model: type[BaseModel], name: str) -> Any:
    """A field's declared type; one that defaults to null also takes null (width: unset). None if no such field."""
    field = model.model_fields.get(name)
    if field is None:
        return None
    return Optional[field.annotation] if field.default is None else field.annotation


def trial_value_type(path: tuple) -> Any:
    """The declared type of the trial config value at `path` (("clip_norm",)); None if open."""
    return declared_type(TrialConfig, path[0]) if len(path) == 1 else None


def sweep_value_type(path: tuple) -> Any:
    """The declared type of the value at `path` in a sweep file (("base", "lr"), ("axes", "clip_norm", 0),
    ("axes", "lr", "low"), ("resources", "gpu")), so `--set` text is read as that field; None if open."""
    head, rest = path[0], path[1:]
    if head == "base":
        return trial_value_type(rest)
    if head == "axes" and len(rest) == 2:  # a list item has the field's type; a range has its own fields
        name, item = rest
        return declared_type(TrialConfig, name) if isinstance(item, int) else declared_type(RangeAxis, item)
    if head in ("search", "resources") and len(rest) == 1:
        return declared_type(SearchSpec if head == "search" else ResourcesSpec, rest[0])
    return declared_type(SweepSpec, head) if not rest else None


def parse_sweep(data: Any, source: str = "sweep") -> SweepSpec:
    if not isinstance(data, dict):
        raise SweepError(f"{source}: a sweep file is a YAML mapping (name:, base:, axes:, ...), got {type(data).__name__}")
    try:
        return SweepSpec(**data)
    except ValidationError as err:
        raise SweepError(_format_error(err, source)) from None


def load_sweep_args(path: str | Path, sets: list[str], name: str | None = None) -> SweepSpec:
    """A sweep file with the command line's `--set PATH=VALUE` texts, each read as its field's type."""
    from .assignments import parse_assignments

    return load_sweep(path, parse_assignments(sets, sweep_value_type), name)


def load_sweep(path: str | Path, overrides: dict[str, Any] | None = None, name: str | None = None) -> SweepSpec:
    """Read a sweep file with the safe YAML loader (a sweep file cannot run code) and validate it.

    `overrides` maps dotted paths (`base.epochs`, `resources.gpu`) to values, as `--set` gives.
    """
    path = Path(path)
    try:
        data = read_yaml(path.read_text())
    except FileNotFoundError:
        raise SweepError(f"{path}: no such sweep file") from None
    except yaml.YAMLError as err:
        raise SweepError(f"{path}: not valid YAML: {err}") from None
    if isinstance(data, dict):
        for dotted, value in (overrides or {}).items():
            _set_dotted(data, dotted, value, str(path))
            axis = dotted.removeprefix("axes.")
            if axis != dotted and isinstance(data.get("base"), dict):
                data["base"].pop(axis, None)  # sweeping a field on the command line replaces its base value
        if name:
            data["name"] = name
    return parse_sweep(data, str(path))


def _set_dotted(data: dict, dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise SweepError(f"{source}: --set {dotted}: {key} is not a mapping")
    node[keys[-1]] = value
