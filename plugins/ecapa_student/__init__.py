"""``ecapa_tdnn``: SpeechBrain's ECAPA-TDNN over log-mel filterbanks, an edge-sized student.

Features come from LiSER's :class:`~liser_plugins.frontend.LogMel` (log-mel filterbank plus a
learned BatchNorm), not from SpeechBrain's ``Fbank``: the frontend is part of the saved student,
so inference cannot feed it different features, and it is the frontend every first-party
student shares, with its ONNX preparation (``prepare_export``: the STFT as convolutions and matrix products).
SpeechBrain's ``Fbank`` would need a normalisation module saved alongside it; it does export
with torch 2.14 (checked: dB features within 1.2e-3 of eager), but nothing guarantees it will.

ONNX export: SpeechBrain's ``length_to_mask`` (used by ECAPA's SE blocks and attentive pooling,
even without lengths) calls ``len(lengths)``, which makes ``torch.export`` fix the batch size to
the example's; strict export, which could trace ``len``, fails on torchaudio's STFT code. So the
network is SpeechBrain's modules and weights (state-dict keys as in SpeechBrain, under
``ecapa.``) run by :func:`ecapa_forward`, a copy of the forward methods of ``ECAPA_TDNN``,
``SERes2NetBlock``, ``SEBlock`` and ``AttentiveStatisticsPooling`` that takes a frame mask
instead of relative lengths; a test checks it against SpeechBrain's own forward.

Needs SpeechBrain: ``pip install 'liser[students]'``.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from liser_core import ModelOutput, Student, hookimpl
from liser_core.errors import UsageError
from liser_core.labels import LabelSpace

from ..frontend import LogMel, time_mask


def _stats(x: torch.Tensor, w: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    mean = (w * x).sum(2)
    std = torch.sqrt((w * (x - mean.unsqueeze(2)).pow(2)).sum(2).clamp(eps))
    return mean, std


def _attentive_pooling(asp: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``AttentiveStatisticsPooling.forward`` with a (B, 1, T) 0/1 mask: (B, C, T) -> (B, 2C, 1)."""
    if asp.global_context:
        mean, std = _stats(x, mask / mask.sum(2, keepdim=True), asp.eps)
        size = (-1, -1, x.shape[-1])
        attn = torch.cat([x, mean.unsqueeze(2).expand(size), std.unsqueeze(2).expand(size)], 1)
    else:
        attn = x
    attn = asp.conv(asp.tanh(asp.tdnn(attn)))
    attn = F.softmax(attn.masked_fill(mask == 0, float("-inf")), dim=2)
    mean, std = _stats(x, attn, asp.eps)
    return torch.cat((mean, std), 1).unsqueeze(2)


def _se_res2net(block: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``SERes2NetBlock.forward`` with the SE squeeze averaged over the masked frames."""
    residual = block.shortcut(x) if block.shortcut is not None else x
    x = block.tdnn2(block.res2net_block(block.tdnn1(x)))
    se = block.se_block
    s = (x * mask).sum(2, keepdim=True) / mask.sum(2, keepdim=True)
    s = se.sigmoid(se.conv2(se.relu(se.conv1(s))))
    return s * x + residual


def _reflect_pad(conv: nn.Module, x: torch.Tensor, kernel_size: int, dilation: int, stride: int, *,
                 slices: bool = False) -> torch.Tensor:
    """``speechbrain.nnet.CNN.Conv1d._manage_padding`` (reflection) without the zero-width pads,
    and with ``slices`` as a concatenation of one-frame slices (see ``EcapaTDNN.prepare_export``)."""
    from speechbrain.nnet.CNN import get_padding_elem

    left, right = get_padding_elem(conv.in_channels, stride, kernel_size, dilation)
    if not left and not right:
        return x
    if not slices:
        return F.pad(x, (left, right), mode="reflect")
    head = [x[..., i:i + 1] for i in range(left, 0, -1)]  # x[left], ..., x[1]
    tail = [x[..., -1 - i:-i] for i in range(1, right + 1)]  # x[n-2], ..., x[n-1-right]
    return torch.cat([*head, x, *tail], -1)


def ecapa_forward(ecapa: nn.Module, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """SpeechBrain ``ECAPA_TDNN`` on features (B, F, T) with a (B, 1, T) mask -> (B, lin_neurons).

    Same computation as ``ecapa(x.transpose(1, 2), lengths)`` with relative lengths that select
    the same frames, without ``len(lengths)``, so batch and length stay dynamic in an export.
    """
    from speechbrain.lobes.models.ECAPA_TDNN import TDNNBlock

    outs = []
    for layer in ecapa.blocks:
        x = layer(x) if isinstance(layer, TDNNBlock) else _se_res2net(layer, x, mask)
        outs.append(x)
    x = ecapa.mfa(torch.cat(outs[1:], 1))
    x = ecapa.asp_bn(_attentive_pooling(ecapa.asp, x, mask))
    return ecapa.fc(x).squeeze(2)


class EcapaTDNN(Student):
    """ECAPA-TDNN (Desplanques et al. 2020, arXiv:2005.07143) on ``n_mels`` log-mel bands.

    A TDNN layer, SE-Res2Net blocks, multi-layer aggregation and attentive statistics pooling
    (``speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN``); the embedding is ECAPA's
    ``lin_neurons``-dimensional output, the classifier a linear layer on it. The defaults make
    an edge-sized ECAPA of about 0.52 M parameters (SpeechBrain's 512/1536 default: 6.1 M).

    Padding: feature frames past each clip's valid length are zeroed and the SE blocks and the
    attentive pooling average over valid frames only. The dilated convolutions still see a few
    padded frames at a clip's end (where a clip on its own sees their reflect padding), so a
    padded clip's output is close to, not equal to, its output on its own.

    In training, a batch of one clip runs the BatchNorm on the pooled statistics with its
    running statistics (it cannot normalise one value per channel).
    """

    def __init__(
        self,
        label_space: LabelSpace,
        sample_rate: int = 16000,
        n_mels: int = 40,
        channels: Sequence[int] = (128, 128, 128, 128, 384),
        kernel_sizes: Sequence[int] = (5, 3, 3, 3, 1),
        dilations: Sequence[int] = (1, 2, 3, 4, 1),
        attention_channels: int = 64,
        se_channels: int = 64,
        res2net_scale: int = 8,
        global_context: bool = True,
        lin_neurons: int = 96,
        dropout: float = 0.1,
    ):
        super().__init__()
        try:
            from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
        except ImportError:
            raise UsageError("student 'ecapa_tdnn' needs SpeechBrain: pip install 'liser[students]'") from None
        if not len(channels) == len(kernel_sizes) == len(dilations) or len(channels) < 3:
            raise ValueError(
                "ecapa_tdnn: channels, kernel_sizes and dilations need one entry per layer (at least 3);"
                f" got {len(channels)}, {len(kernel_sizes)} and {len(dilations)}"
            )
        if any(c % res2net_scale for c in channels[1:-1]):
            raise ValueError(
                f"ecapa_tdnn: the SE-Res2Net channels {list(channels[1:-1])} must be multiples of"
                f" res2net_scale={res2net_scale}"
            )
        self.label_space = label_space
        self.sample_rate = sample_rate
        self.frontend = LogMel(sample_rate, n_mels)
        self.ecapa = ECAPA_TDNN(
            n_mels,
            lin_neurons=lin_neurons,
            channels=list(channels),
            kernel_sizes=list(kernel_sizes),
            dilations=list(dilations),
            attention_channels=attention_channels,
            res2net_scale=res2net_scale,
            se_channels=se_channels,
            global_context=global_context,
            groups=[1] * len(channels),
        )
        self.embedding_dim = lin_neurons
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(lin_neurons, len(label_space))

    def prepare_export(self, target: str = "onnx") -> None:
        """SpeechBrain's ``Conv1d`` pads every convolution by reflection, with zero width where
        the kernel is 1, and an exporter turns each pad into operators: a ``Pad`` in ONNX, and in
        ExecuTorch an index gather that XNNPACK does not take (39 of them left ECAPA's program
        in 54 delegate pieces). For export, kernel-1 convolutions skip the pad; for
        ``target="executorch"`` wider ones reflect by concatenating one-frame slices (19 delegate
        pieces), elsewhere by one ``Pad`` (onnxruntime runs it faster than the slices). The same
        numbers either way (tested)."""
        from speechbrain.nnet.CNN import Conv1d

        manage = functools.partial(_reflect_pad, slices=target == "executorch")
        for module in self.ecapa.modules():
            if isinstance(module, Conv1d) and module.padding == "same" and module.padding_mode == "reflect":
                module._manage_padding = types.MethodType(manage, module)

    def forward(self, audio: torch.Tensor, lengths: torch.Tensor | None = None) -> ModelOutput:
        x, valid = self.frontend(audio, lengths)
        x = x.squeeze(1)  # (B, n_mels, T)
        mask = time_mask(x, valid)
        x = x * mask
        bn = self.ecapa.asp_bn
        lone = self.training and x.shape[0] == 1
        if lone:
            bn.eval()
        try:
            emb = ecapa_forward(self.ecapa, x, mask)
        finally:
            if lone:
                bn.train()
        return ModelOutput(self.head(self.dropout(emb)), emb)


@hookimpl
def liser_register_students(registry):
    registry.register("ecapa_tdnn", EcapaTDNN, summary="SpeechBrain ECAPA-TDNN on log-mel (~0.5M params)")
