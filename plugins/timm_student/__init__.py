"""``timm_mobile``: a timm mobile CNN (MobileNetV3/V4, EfficientNet-Lite, LCNet...) over log-mel.

The log-mel features (:class:`~liser_plugins.frontend.LogMel`, learned normalisation included)
are a one-channel image (frequency x time) for any timm CNN built with ``in_chans=1`` and no
classifier; LiSER adds its own linear head. Weights are never downloaded (``pretrained=False``).

Needs timm: ``pip install 'liser[students]'``.
"""

from __future__ import annotations

import torch
from torch import nn

from liser_core import ModelOutput, Student, hookimpl
from liser_core.errors import UsageError
from liser_core.labels import LabelSpace

from .._timm import create_model
from ..frontend import LogMel, masked_mean, time_mask


class TimmMobile(Student):
    """``timm.create_model(model, in_chans=1, num_classes=0, **model_kwargs)`` on log-mel.

    Frames past each clip's valid length are zeroed before the network. The network's last
    feature map is averaged over frequency and over the time steps that cover valid frames
    (``ceil(valid * T_out / T_in)``), then goes through timm's own head (``forward_head``: for
    MobileNetV3 the 1x1 ``conv_head`` and activation), whose output is the embedding: timm's
    pooled features, with the padding left out of the pooling. The SE blocks inside MobileNetV3
    still average over the zeroed padding, so padding changes the output a little.

    The model must be a CNN whose head starts with global pooling (all of timm's mobile CNNs);
    ``mobilenetv3_small_050`` (the default) has about 0.57 M parameters.
    """

    def __init__(
        self,
        label_space: LabelSpace,
        sample_rate: int = 16000,
        n_mels: int = 64,
        model: str = "mobilenetv3_small_050",
        model_kwargs: dict | None = None,
        dropout: float = 0.1,
    ):
        super().__init__()
        try:
            import timm
        except ImportError:
            raise UsageError("student 'timm_mobile' needs timm: pip install 'liser[students]'") from None
        kwargs = dict(model_kwargs or {})
        clash = {"pretrained", "in_chans", "num_classes"} & set(kwargs)
        if clash:
            raise ValueError(f"timm_mobile: model_kwargs may not set {sorted(clash)} (the student sets them)")
        try:
            net = create_model(timm, model, in_chans=1, num_classes=0, **kwargs)
        except ValueError as exc:
            raise ValueError(f"timm_mobile: {exc}") from None
        if not (hasattr(net, "forward_features") and hasattr(net, "forward_head")):
            raise ValueError(f"timm_mobile: {model!r} has no forward_features/forward_head")
        self.label_space = label_space
        self.sample_rate = sample_rate
        self.frontend = LogMel(sample_rate, n_mels)
        self.net = net
        self.model_name = model
        self.embedding_dim = int(getattr(net, "head_hidden_size", None) or net.num_features)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.embedding_dim, len(label_space))

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> ModelOutput:
        x, valid = self.frontend(audio, lengths)
        frames = x.shape[-1]
        x = self.net.forward_features(x * time_mask(x, valid))
        if x.ndim != 4 or x.shape[1] != self.net.num_features:
            raise ValueError(
                f"timm_mobile: {self.model_name!r} does not return a (batch, channels, height, width)"
                f" feature map (got {tuple(x.shape)}); choose a CNN"
            )
        x = x.mean(2)  # (B, C, T')
        steps = ((valid * x.shape[-1] + frames - 1) // frames).clamp(1, x.shape[-1])
        pooled = masked_mean(x, steps)[:, :, None, None]
        emb = self.net.forward_head(pooled, pre_logits=True)
        return ModelOutput(self.head(self.dropout(emb)), emb)


@hookimpl
def liser_register_students(registry):
    registry.register("timm_mobile", TimmMobile, summary="timm mobile CNN on log-mel (~0.6M params)")
