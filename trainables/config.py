"""The trial config: one frozen, primitive-only record that fully determines a trial.

Strict on purpose: a sweep of thousands of trials must fail on a typo before it spends
cluster time, so unknown keys and wrong types are errors that name the field.
"""

from __future__ import annotations

import difflib
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DATASETS_1D = ("mnist1d",)
DATASETS_IMAGE = ("digits", "cifar10", "cifar100", "svhn", "mnist", "fashion_mnist")
AUGMENTATIONS_1D = ("none", "shift")
AUGMENTATIONS_IMAGE = ("none", "flip_crop", "flip_crop_cutout")
# Image augmentations an image set refuses, and why.
_FLIP_ON_DIGITS = "a mirrored digit is another symbol, and the crop's 4-pixel pad is half an 8x8 image"
AUGMENTATIONS_REFUSED = {"digits": {"flip_crop": _FLIP_ON_DIGITS, "flip_crop_cutout": _FLIP_ON_DIGITS}}

# Standard widths and depths per model; `width`/`depth` left unset resolve to these.
DEFAULT_WIDTH = {"mlp": 256, "cnn": 32, "resnet18": 64, "vgg11": 64, "vgg16": 64}
DEFAULT_DEPTH = {"mlp": 2, "cnn": 3}
FIXED_DEPTH = {"resnet18": 18, "vgg11": 11, "vgg16": 16}  # named architectures fix their depth
CONV_MODELS = ("cnn", "resnet18", "vgg11", "vgg16")
# How fast the training step runs, and in which rounding. Left out of `to_dict` at these
# defaults, so every config, key, checkpoint and snapshot made before they existed is unchanged.
SPEED_DEFAULTS = {"precision": "fp32", "channels_last": False, "compile": False}


class TrialConfig(BaseModel):
    """Everything one trial needs. Field names carry units; docs/sweep-file.md has the table."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    # what is trained
    dataset: Literal["mnist1d", "digits", "cifar10", "cifar100", "svhn", "mnist", "fashion_mnist"] = "mnist1d"
    model: Literal["mlp", "cnn", "resnet18", "vgg11", "vgg16"] = "mlp"
    width: int = Field(None, ge=1, description="MLP hidden units / conv base channels (64 = standard ResNet-18, VGG)")  # type: ignore[assignment]
    depth: int = Field(None, ge=1, description="MLP hidden layers / conv blocks; fixed for resnet18, vgg11, vgg16")  # type: ignore[assignment]
    seed: int = Field(0, ge=0)

    # stage 1: label-noise pretraining (the paper's adversarial initialization)
    pretrain_epochs: int = Field(0, ge=0, description="0 = start clean training from a random init")
    label_noise: float = Field(1.0, ge=0.0, le=1.0, description="fraction of pretraining labels replaced by uniform random labels")
    pretrain_copies: int = Field(1, ge=1, description="k copies of the training inputs, each with its own random labels")
    pretrain_zero_out: float = Field(0.0, ge=0.0, lt=1.0, description="fraction of each copy's input values set to 0")
    pretrain_lr: float = Field(0.05, gt=0.0)
    pretrain_momentum: float = Field(0.9, ge=0.0, lt=1.0)

    # stage 2: clean training on the true labels
    lr: float = Field(0.1, gt=0.0)
    momentum: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0, description="L2 coefficient in SGD")
    augmentation: Literal["none", "shift", "flip_crop", "flip_crop_cutout"] = "none"
    aug_noise: float = Field(0.0, ge=0.0, description="std of additive Gaussian input noise during clean training")
    clip_norm: float | None = Field(None, gt=0.0, description="global gradient L2-norm threshold; null = no clipping")
    batch_size: int = Field(64, ge=1)
    epochs: int = Field(100, ge=1, description="cap on clean-training epochs")
    lr_schedule: Literal["constant", "cosine", "step"] = "constant"
    stop_at_train_acc: float | None = Field(1.0, gt=0.0, le=1.0, description="stop clean training at this train accuracy; null = run all epochs")

    # measurement
    flatness_samples: int = Field(5, ge=0, description="weight-noise draws per scale for local energy; 0 = skip")

    # execution (part of the config because results depend on them)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    torch_threads: int = Field(1, ge=1, description="pinned: results differ between thread counts")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16 = the training step under bfloat16 autocast (GPU conv nets: faster; rounds differently)")
    channels_last: bool = Field(False, description="conv nets on images: train in NHWC memory layout (with bf16 on GPUs)")
    compile: bool = Field(False, description="torch.compile the training forward (pays off for long GPU trials)")

    @model_validator(mode="before")
    @classmethod
    def _resolve_model_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        model = data.get("model", "mlp")
        if data.get("depth") is None:
            data["depth"] = FIXED_DEPTH.get(model, DEFAULT_DEPTH.get(model))
        if data.get("width") is None:
            data["width"] = DEFAULT_WIDTH.get(model)
        return data

    @model_validator(mode="after")
    def _check_combinations(self) -> "TrialConfig":
        fixed = FIXED_DEPTH.get(self.model)
        if fixed is not None and self.depth != fixed:
            raise ValueError(
                f"depth: {self.model} has a fixed depth of {fixed}; "
                f"leave depth unset, or use model mlp/cnn to vary depth"
            )
        if self.channels_last and (self.model not in CONV_MODELS or self.dataset in DATASETS_1D):
            raise ValueError(
                f"channels_last: applies to conv nets ({', '.join(CONV_MODELS)}) on image datasets, not "
                f"{self.model} on {self.dataset}; set channels_last: false"
            )
        refused = AUGMENTATIONS_REFUSED.get(self.dataset, {})
        allowed = [a for a in (AUGMENTATIONS_1D if self.dataset in DATASETS_1D else AUGMENTATIONS_IMAGE) if a not in refused]
        why = refused.get(self.augmentation)
        if self.augmentation not in allowed:
            raise ValueError(
                f"augmentation: {self.augmentation!r} does not apply to {self.dataset}"
                f"{f' ({why})' if why else ''}; allowed for it: {', '.join(allowed)}"
            )
        return self

    @classmethod
    def field_names(cls) -> list[str]:
        return list(cls.model_fields)

    def to_dict(self) -> dict[str, Any]:
        """The config's identity: every field, less the speed options at their defaults."""
        values = self.model_dump()
        for name, default in SPEED_DEFAULTS.items():
            if values[name] == default:
                del values[name]
        return values

    @property
    def speed_options(self) -> dict[str, Any]:
        """The speed options set away from their defaults (packs run only the defaults)."""
        return {name: getattr(self, name) for name, default in SPEED_DEFAULTS.items() if getattr(self, name) != default}


INT_FIELDS = frozenset(name for name, f in TrialConfig.model_fields.items() if f.annotation is int)  # ranges round to these

# Trials that agree on these can be trained together as one stacked model (trainables.packed).
PACK_FIELDS = ("dataset", "model", "width", "depth", "batch_size", "device", "torch_threads")


def pack_signature(cfg: TrialConfig) -> tuple:
    values = cfg.model_dump()
    return tuple(values[name] for name in PACK_FIELDS)


def can_pack(cfg: TrialConfig) -> bool:
    """Whether this trial can train in a pack (`packed.run_pack`): packs train with the default
    speed options (fp32, default layout, uncompiled)."""
    return not cfg.speed_options


def can_pack_pretraining(cfg: TrialConfig) -> bool:
    """Whether this trial's pretraining can train in a pack (`packed.run_pretraining_pack`): a
    packable trial pretraining on the train set's own inputs."""
    return can_pack(cfg) and cfg.pretrain_copies == 1 and cfg.pretrain_zero_out == 0


def architecture(cfg: TrialConfig) -> str:
    """The stacked model a trial can share, by name (`pack_signature` spelled out): the keys of
    a sweep's `pack_plan`."""
    return " ".join(f"{name}={value}" for name, value in zip(PACK_FIELDS, pack_signature(cfg)))


class ConfigError(ValueError):
    """A config that cannot run; the message names each bad field and what is allowed."""


def describe_validation_error(err: ValidationError, where: str = "config") -> str:
    """Turn pydantic's report into one line per field a user can act on."""
    lines = [f"invalid {where}:"]
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or None
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(e["loc"][-1]), TrialConfig.field_names(), n=1)
            known = f"did you mean {close[0]!r}?" if close else "known keys: " + ", ".join(TrialConfig.field_names())
            msg = f"unknown key; {known}"
        elif e["type"] == "literal_error":
            msg = msg.replace("Input should be", "must be one of")
        shown = f" (got {e['input']!r})" if "input" in e and e["type"] != "extra_forbidden" and not isinstance(e["input"], dict) else ""
        lines.append(f"  {field + ': ' if field else ''}{msg}{shown}")
    return "\n".join(lines)


def make_config(values: dict[str, Any] | None = None, where: str = "config") -> TrialConfig:
    """Validate `values` into a TrialConfig, raising ConfigError with a readable message."""
    try:
        return TrialConfig(**(values or {}))
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, where)) from None
