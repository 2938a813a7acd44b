"""Tiny, randomly initialised models of the real architectures, saved with transformers' own
``save_pretrained``: what tests, benchmarks and offline demos point ``hf_speech`` at instead of a
hub id (nothing is downloaded).

Example::

    >>> path = save_tiny_model(tmp / "tiny-wavlm")  # doctest: +SKIP
    >>> teacher = registry.build("hf_speech", model=str(path), label_space=RAVDESS8)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

#: A few thousand parameters; conv strides 10 x 8 (200 frames per second at 16 kHz).
TINY = dict(
    hidden_size=32, num_hidden_layers=3, num_attention_heads=2, intermediate_size=37,
    conv_dim=(16, 16), conv_stride=(10, 8), conv_kernel=(20, 16),
    num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
)
#: ``geometry="base"``: the real base geometry (768 hidden, 12 layers, 7 conv layers of 512:
#: 95M parameters), random weights: what ``--plan`` and cost benchmarks time instead of a download.
ARCHS = {
    "wavlm": ("WavLMConfig", dict(feat_extract_norm="layer", do_stable_layer_norm=True, num_buckets=16, max_bucket_distance=40)),
    "wav2vec2": ("Wav2Vec2Config", dict(feat_extract_norm="layer", do_stable_layer_norm=True)),
    "hubert": ("HubertConfig", dict(feat_extract_norm="layer", do_stable_layer_norm=True)),
}


def save_tiny_model(
    path: str | Path, arch: str = "wavlm", *, sample_rate: int = 16000, seed: int = 0, geometry: str = "tiny", **config
) -> Path:
    """Write a random ``arch`` encoder (and its feature extractor) to ``path``; return it.
    ``geometry``: ``tiny`` (a few thousand parameters) or ``base`` (the real base model's)."""
    import torch
    import transformers as tf
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    cls, extra = ARCHS[arch]
    base = {**TINY, **extra} if geometry == "tiny" else {}  # base: the library's defaults
    cfg = getattr(tf, cls)(**{**base, **config})  # what the caller gives overrides the geometry
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = tf.AutoModel.from_config(cfg)
    path = Path(path)
    model.save_pretrained(path)
    tf.Wav2Vec2FeatureExtractor(sampling_rate=sample_rate, do_normalize=True, return_attention_mask=True).save_pretrained(path)
    return path
