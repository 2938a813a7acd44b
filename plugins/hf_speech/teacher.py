"""``hf_speech``: a speech-emotion teacher on a self-supervised encoder from transformers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from liser_core import Batch, ModelOutput, Teacher, TeacherCard
from liser_core.labels import LabelSpace

from .._pin import pin_digest
from ._backbone import SpeechBackbone, by_equal_length, encoder_digest, load_pretrained
from ._labels import id2label_space
from ._pooling import AttentivePool, masked_mean


class HFSpeechTeacher(Teacher):
    """A wav2vec2 / HuBERT / WavLM / data2vec-audio / Whisper-encoder teacher.

    The frozen encoder (``model``: hub id or local directory) feeds hidden state ``layer`` (or a
    learned softmax-weighted sum of all of them, ``layer_weights``) to ``pooling`` over the real
    frames and a small classifier fitted in the run; or, with ``use_model_head``, the
    checkpoint's own classification head is used as is.

    Example (recipe)::

        teachers:
          - name: hf_speech
            options: {model: microsoft/wavlm-base-plus, layer_weights: true}
            fit: {epochs: 20, batch_size: 16}
    """

    modality = "audio"

    def __init__(
        self,
        label_space: LabelSpace,
        model: str,
        layer: int = -1,
        layer_weights: bool = False,
        pooling: Literal["mean", "attentive"] = "mean",
        head_hidden: int = 256,
        dropout: float = 0.1,
        embedding: Literal["pooled", "projected"] = "pooled",
        freeze_backbone: bool = True,
        use_model_head: bool = False,
        label_aliases: dict[str, str] | None = None,
        trained_on: Sequence[str] = (),
        licence: str = "unknown",
        local_files_only: bool = False,
        revision: str | None = None,
    ):
        super().__init__()
        if pooling not in ("mean", "attentive"):
            raise ValueError(f"pooling must be 'mean' or 'attentive', not {pooling!r}")
        if embedding not in ("pooled", "projected"):
            raise ValueError(f"embedding must be 'pooled' or 'projected', not {embedding!r}")
        if use_model_head:
            ignored = {
                "layer": layer != -1, "layer_weights": layer_weights, "pooling": pooling != "mean",
                "embedding": embedding != "pooled", "freeze_backbone": not freeze_backbone,
            }
            if any(ignored.values()):
                raise ValueError(
                    f"use_model_head runs the checkpoint's own head as is; remove "
                    f"{', '.join(k for k, v in ignored.items() if v)}"
                )
        elif label_aliases:
            raise ValueError("label_aliases maps a checkpoint's own labels: it needs use_model_head")
        if head_hidden < 0 or (embedding == "projected" and head_hidden == 0):
            raise ValueError("head_hidden must be >= 0, and > 0 for embedding 'projected'")

        net, fe = load_pretrained(
            model, with_head=use_model_head, local_files_only=local_files_only, revision=revision
        )
        digest = encoder_digest(net, fe)  # of the encoder as loaded, before layers above `layer` are dropped
        self.backbone = SpeechBackbone(net, fe, model, with_head=use_model_head)
        layers = getattr(getattr(net, "encoder", None), "layers", None)  # feature taps: transformer layers (B, T, D)
        self.taps = {f"layer{i + 1}": (f"backbone.model.encoder.layers.{i}", 1) for i in range(len(layers or []))}
        self.sample_rate = self.backbone.sample_rate
        self.use_model_head = use_model_head
        self.freeze_backbone = freeze_backbone
        self.embedding = embedding
        n_layers = self.backbone.num_layers
        num_parameters_loaded = sum(p.numel() for p in self.parameters())
        self.register_parameter("layer_weights", None)
        if use_model_head:
            self.label_space = id2label_space(net.config.id2label, model, label_aliases)
            self.embedding_dim = self.backbone.use_classifier()
            self.pretrained, self.fittable = True, False
            how = "the checkpoint's own classification head"
        else:
            if not -(n_layers + 1) <= layer <= n_layers:
                raise ValueError(
                    f"layer {layer} is out of range: {model} has hidden states 0..{n_layers} "
                    f"(or -{n_layers + 1}..-1)"
                )
            self.label_space = label_space
            dim = self.backbone.hidden_size
            if layer_weights:
                self.layer_weights = nn.Parameter(torch.zeros(n_layers + 1))
                self.backbone.record(range(n_layers + 1))
                how = f"softmax-weighted sum of its {n_layers + 1} hidden states"
            else:
                k = layer % (n_layers + 1)
                if k < n_layers:
                    self.backbone.keep_layers(max(k, 1))
                self.backbone.record([k])
                how = f"hidden state {k} of 0..{n_layers}" + (
                    f" (layers above {max(k, 1)} dropped)" if k < n_layers else ""
                )
            self.pool = AttentivePool(dim) if pooling == "attentive" else None
            if head_hidden:
                self.proj = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim, head_hidden), nn.ReLU())
                dim_out = head_hidden
            else:
                self.proj = nn.Identity()
                dim_out = dim
            self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(dim_out, len(label_space)))
            self.embedding_dim = dim_out if embedding == "projected" else dim
            how += f", {pooling} pooling"
        if freeze_backbone:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
            self.checkpoint_exclude = ("backbone.",)  # reloaded from `model`, never saved
        # a saved head reloads onto `model` as it is then: refused if its weights or settings changed
        pin_digest(self, digest, f"{model}: this encoder differs from the one the checkpoint was saved with (its "
                   "weights, config.json or preprocessor_config.json changed); restore it or fit the teacher again")
        if self.backbone.whisper:
            window = self.backbone.max_samples / self.sample_rate
            batching = f"every clip padded to Whisper's fixed {window:g} s window (longer clips are cut)"
        elif self.backbone.batch_safe:
            batching = "padded batches with an attention mask"
        else:
            batching = "one group of equal-length clips at a time (padding would change its outputs)"
        self.card = TeacherCard(
            name="hf_speech",
            modality="audio",
            backbone=f"{self.backbone.model_type}-h{self.backbone.hidden_size}-l{n_layers}",
            label_space=self.label_space.name,
            sample_rate=self.sample_rate,
            trained_on=tuple(trained_on),
            licence=licence,
            source=model + (f"@{revision}" if revision else ""),
            num_parameters=sum(p.numel() for p in self.parameters()),
            notes=f"{how}; {batching}; {num_parameters_loaded:,} parameters loaded",
        )

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()  # no dropout, no SpecAugment in a frozen encoder
        return self

    def forward(self, batch: Batch) -> ModelOutput:
        if batch.sample_rate != self.sample_rate:
            raise ValueError(
                f"hf_speech ({self.card.source}) expects {self.sample_rate} Hz audio, got "
                f"{batch.sample_rate} Hz: resample first (the engine does, via teacher.sample_rate)"
            )
        audio, lengths = self.backbone.at_least_min_length(batch.audio, batch.lengths)
        run = self.backbone.classify if self.use_model_head else self._head
        if self.backbone.batch_safe:
            logits, emb = run(audio, lengths)
        else:
            logits, emb = by_equal_length(run, audio, lengths)
        return ModelOutput(logits, emb)

    def _head(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # mean pooling is linear: pooling each state inside the hook and weighting the pooled
        # vectors equals pooling the weighted sum, and keeps (B, D) per layer instead of (B, T, D)
        reduce = masked_mean if self.pool is None else None
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_backbone):
            states, valid = self.backbone(audio, lengths, reduce=reduce)
        if self.layer_weights is None:
            h = states[0]
        else:
            w = torch.softmax(self.layer_weights, 0)
            h = sum(w[i] * s for i, s in enumerate(states))
        pooled = h if self.pool is None else self.pool(h, valid)
        z = self.proj(pooled)
        return self.classifier(z), (z if self.embedding == "projected" else pooled)
