"""The catalogue of module types a search space may use, and their hyperparameters.

This file describes modules without importing torch; ``arborseg.nn.blocks`` registers one
builder per type named here (a test checks both lists agree). To add a module type, add a
:class:`ModuleSpec` with :func:`register_module_spec` and a builder with
``arborseg.nn.blocks.register_builder``.

A hyperparameter is *structural* when it changes the tree (which module, depth, number of
blocks, layers or branches, dimensionality) and *refinable* when it does not (widths, kernel
z, norms, activations, dropout, learning rate, ...). Optuna refines only refinable ones.

*Inherited* hyperparameters may be set on any node: they apply to all descendants unless a
descendant overrides them (or adjusts them with ``{times: f}``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DIMS = ("2d", "thin3d", "3d")
NORMS = ("instance", "batch", "group", "none")
ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu")


@dataclass(frozen=True)
class ParamSpec:
    """One hyperparameter: its type, default, allowed values and whether it is structural."""

    name: str
    kind: type  # int, float, str or bool
    default: Any
    structural: bool = False
    options: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    doc: str = ""

    def check(self, value: Any) -> str | None:
        """Return why ``value`` is not allowed, or None when it is."""
        if self.kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, self.kind) or (self.kind is not bool and isinstance(value, bool)):
            return f"expected {self.kind.__name__}, got {type(value).__name__} {value!r}"
        if self.options is not None and value not in self.options:
            return f"{value!r} is not one of {list(self.options)}"
        number: Any = value  # int or float when low/high are set (isinstance above narrowed it to object)
        if self.low is not None and number < self.low:
            return f"{value!r} is below the minimum {self.low}"
        if self.high is not None and number > self.high:
            return f"{value!r} is above the maximum {self.high}"
        return None

    def limit(self, value: Any) -> Any:
        """``value`` moved into the allowed values: the nearest option, or clipped to [low, high]. Used for
        values adjusted with ``{times: f}``, whose product can leave the range the parameter allows."""
        if self.options is not None and value not in self.options:
            numeric = [o for o in self.options if isinstance(o, (int, float)) and not isinstance(o, bool)]
            if numeric and isinstance(value, (int, float)):
                return min(numeric, key=lambda o: (abs(o - value), o))
            return value
        if self.low is not None and value < self.low:
            value = self.kind(self.low) if self.kind in (int, float) else value
        if self.high is not None and value > self.high:
            value = self.kind(self.high) if self.kind in (int, float) else value
        return value

    def coerce(self, value: Any) -> Any:
        if self.kind is float and not isinstance(value, bool):
            return float(value)
        if self.kind is int and isinstance(value, float):
            return int(round(value))
        return value


INHERITED: dict[str, ParamSpec] = {
    p.name: p
    for p in [
        ParamSpec("dims", str, "2d", structural=True, options=DIMS,
                  doc="2d: per slice; thin3d: kernel z of kernel_z, never pools z; 3d: k x k x k"),
        ParamSpec("kernel_z", int, 3, options=(1, 3), doc="z extent of thin-3D kernels"),
        ParamSpec("kernel_size", int, 3, options=(1, 3, 5, 7), doc="xy (and 3d z) kernel extent"),
        ParamSpec("width", int, 16, low=1, high=1024, doc="output channels"),
        ParamSpec("norm", str, "instance", options=NORMS),
        ParamSpec("activation", str, "leaky_relu", options=ACTIVATIONS),
        ParamSpec("separable", bool, False, structural=True, doc="depthwise-separable convolutions"),
        ParamSpec("dropout", float, 0.0, low=0.0, high=0.9),
    ]
}

CONV_INHERITED = ("dims", "kernel_z", "kernel_size", "width", "norm", "activation", "separable", "dropout")


@dataclass(frozen=True)
class ModuleSpec:
    """A module type: its own hyperparameters, the inherited ones it uses, and its children."""

    name: str
    doc: str
    params: tuple[ParamSpec, ...] = ()
    inherited: tuple[str, ...] = ()
    children: str | None = None  # None, "children" (list), "branches" (list) or "body" (one node)
    produces_classes: bool = False  # the output has one channel per class
    needs_classes: bool = False  # the input must have one channel per class
    param_index: dict[str, ParamSpec] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        index = {p.name: p for p in self.params}
        index.update({name: INHERITED[name] for name in self.inherited})
        object.__setattr__(self, "param_index", index)

    def param(self, name: str) -> ParamSpec:
        return self.param_index[name]


MODULE_SPECS: dict[str, ModuleSpec] = {}


def register_module_spec(spec: ModuleSpec) -> ModuleSpec:
    """Add a module type to the catalogue (names must be unique)."""
    if spec.name in MODULE_SPECS:
        raise ValueError(f"module type {spec.name!r} is already registered")
    MODULE_SPECS[spec.name] = spec
    return spec


def _p(name: str, kind: type, default: Any, **kw: Any) -> ParamSpec:
    return ParamSpec(name, kind, default, **kw)


for _spec in [
    ModuleSpec("sequence", "children applied one after another", children="children"),
    ModuleSpec("parallel", "branches applied to the same input, merged",
               params=(_p("merge", str, "concat", structural=True, options=("concat", "add")),),
               children="branches"),
    ModuleSpec("residual", "body(x) + x (1x1 projection when widths differ)", inherited=("dims",),
               children="body"),
    ModuleSpec("repeat", "the body repeated `times` times (each copy sampled on its own)",
               params=(_p("times", int, 2, structural=True, low=1, high=16),), children="body"),
    ModuleSpec("identity", "passes its input through (e.g. a skip branch in `parallel`)"),
    ModuleSpec("conv_block", "convolution -> norm -> activation (-> dropout), `layers` times",
               params=(_p("layers", int, 2, structural=True, low=1, high=8),),
               inherited=CONV_INHERITED),
    ModuleSpec("dilated_block", "convolutions whose xy dilation grows per layer (1, g, g^2, ...)",
               params=(_p("layers", int, 3, structural=True, low=1, high=8),
                       _p("dilation_growth", int, 2, low=1, high=4)),
               inherited=CONV_INHERITED),
    ModuleSpec("encoder_decoder", "a U-Net: `depth` resolution levels, xy pooling, skip connections",
               params=(_p("depth", int, 4, structural=True, low=1, high=6),
                       _p("blocks_per_level", int, 1, structural=True, low=1, high=4),
                       _p("layers_per_block", int, 2, structural=True, low=1, high=4),
                       _p("width_growth", float, 2.0, low=1.0, high=3.0),
                       _p("pooling", str, "max", structural=True, options=("max", "strided")),
                       _p("upsampling", str, "transposed", structural=True,
                          options=("transposed", "interpolate")),
                       _p("skip_merge", str, "concat", structural=True, options=("concat", "add")),
                       _p("init", str, "random", structural=True,
                          doc="where the encoder starts: random, or a pre-trained encoder (`arborseg pretrain` run "
                              "or checkpoint; its structure is taken from the checkpoint)")),
               inherited=CONV_INHERITED),
    ModuleSpec("resnet_unet", "a ResNet-50 encoder (torchvision's layout, one input channel) in a U-Net decoder, "
               "per slice; takes CEM500K's MoCo v2 weights",
               params=(_p("encoder", str, "resnet50", structural=True, options=("resnet50",)),
                       _p("decoder_width", int, 16, low=4, high=64,
                          doc="width of the last decoder level (levels above: 2, 4, 8, 16 times it)"),
                       _p("init", str, "random", structural=True,
                          doc="random, or a ResNet-50 checkpoint (CEM500K's MoCo v2 file, `arborseg pretrain`)"))),
    ModuleSpec("spatial_pyramid", "parallel dilated branches (rates 1, base, base^2, ...) merged",
               params=(_p("branches", int, 4, structural=True, low=1, high=6),
                       _p("dilation_base", int, 2, low=2, high=6),
                       _p("image_pooling", bool, False, structural=True),
                       _p("merge", str, "concat", structural=True, options=("concat", "add"))),
               inherited=CONV_INHERITED),
    ModuleSpec("predictor", "1x1 convolution to one channel per class",
               produces_classes=True),
    ModuleSpec("crf3d", "CRF-as-RNN refinement (Zheng et al. 2015): mean-field iterations with a learnable spatial "
               "kernel, optionally an appearance (bilateral) kernel on the input image, and a learnable "
               "compatibility transform",
               params=(_p("iterations", int, 5, low=1, high=10),
                       _p("spatial_kernel", int, 5, options=(3, 5, 7)),
                       _p("spatial_sigma", float, 1.0, low=0.25, high=4.0),
                       _p("kernels", str, "spatial", options=("spatial", "spatial+appearance"),
                          doc="spatial only, or spatial + appearance (exact bilateral over 3 x k x k)"),
                       _p("appearance_kernel", int, 5, options=(3, 5, 7),
                          doc="xy extent k of the appearance kernel's 3 x k x k neighbourhood"),
                       _p("appearance_sigma", float, 2.0, low=0.5, high=8.0,
                          doc="initial xy (and z) position bandwidth of the appearance kernel, xy voxels")),
               produces_classes=True, needs_classes=True),
]:
    register_module_spec(_spec)

TRAINING_PARAMS: dict[str, ParamSpec] = {
    p.name: p
    for p in [
        _p("lr", float, 1e-3, low=1e-6, high=1.0),
        _p("weight_decay", float, 1e-5, low=0.0, high=1.0),
        _p("optimizer", str, "adamw", options=("adam", "adamw", "sgd"),
           doc="sgd: momentum 0.99, Nesterov (nnU-Net)"),
        _p("schedule", str, "cosine", options=("cosine", "constant", "onecycle", "poly"),
           doc="poly: lr (1 - step/horizon)^0.9 (nnU-Net); horizon: schedule_steps"),
        _p("batch_size", int, 4, low=1, high=256),
        _p("dice_weight", float, 0.0, low=0.0, high=10.0),
        _p("foreground_bias", float, 0.3, low=0.0, high=1.0),
        _p("class_weighting", str, "inverse_sqrt", options=("none", "inverse", "inverse_sqrt")),
        _p("deep_supervision", bool, False,
           doc="losses at the first encoder_decoder's decoder levels too, weights 1/2^i (nnU-Net); training only"),
        _p("encoder_lr_scale", float, 1.0, low=1e-3, high=1.0,
           doc="learning rate of pre-trained encoders relative to lr (fine-tuning; random starts ignore it)"),
        _p("freeze_encoder_steps", int, 0, low=0, high=100_000,
           doc="steps during which pre-trained encoders stay frozen (only the rest of the net trains)"),
        _p("warmup_steps", int, 0, low=0, high=100_000,
           doc="LR rises linearly to lr over the first N steps, then the schedule runs over the rest of the horizon "
               "(nnU-Net/nnssl fine-tuning); not with onecycle, which warms up itself"),
    ]
}

WINDOW_PARAMS: dict[str, ParamSpec] = {
    "z": _p("z", int, 1, low=1, high=64),
    "xy": _p("xy", int, 64, low=8, high=1024),
}
