"""A transformers audio encoder behind one call: padded waveforms in, hidden states out.

transformers is imported here only inside functions, so that importing the plugin (``liser
list``) stays fast and works without it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

import torch
from torch import nn

from liser_core.errors import UsageError

log = logging.getLogger("liser.hf_speech")

INSTALL_HINT = "pip install 'liser[speech]'"

#: Architectures whose outputs on the real frames of a zero-padded clip do not depend on the
#: padding once ``attention_mask`` is passed, provided the conv feature encoder normalises per
#: frame (``feat_extract_norm == "layer"``). Checked by tests/test_hf_speech.py. Everything else
#: (``"group"`` norm, which normalises over time; data2vec-audio, whose stacked positional convs
#: carry the padding into the real frames; unknown types) runs one group of equal-length clips at
#: a time, without padding.
MASK_SAFE_MODEL_TYPES = frozenset({"wav2vec2", "hubert", "wavlm"})

#: Reduces one recorded hidden state (B, T, D) with its valid frame counts, e.g. a masked mean.
Reduce = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def import_transformers():
    try:
        import transformers
    except ImportError as exc:
        raise UsageError(
            f"teacher 'hf_speech' needs the transformers package: {INSTALL_HINT}"
        ) from exc
    return transformers


def load_pretrained(
    model: str, *, with_head: bool, local_files_only: bool = False, revision: str | None = None
):
    """(model, feature extractor) from a hub id or a directory written by ``save_pretrained``."""
    tf = import_transformers()
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # transformers' "Loading weights" bar stays out of logs
    try:
        return _load(tf, model, with_head=with_head, local_files_only=local_files_only, revision=revision)
    finally:
        if bar:
            hf_logging.enable_progress_bar()


def _load(tf, model: str, *, with_head: bool, local_files_only: bool, revision: str | None):
    kw: dict = {"local_files_only": local_files_only}
    if revision:
        kw["revision"] = revision
    try:
        fe = tf.AutoFeatureExtractor.from_pretrained(model, **kw)
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"hf_speech: cannot read the feature extractor of {model!r} (preprocessor_config.json), "
            f"which gives the sampling rate and normalisation: {_first_line(exc)}. "
            "Offline, `model` must be a local directory holding it (save_pretrained of the model "
            "and of its feature extractor) or a hub id already in the cache."
        ) from None
    cls = tf.AutoModelForAudioClassification if with_head else tf.AutoModel
    try:
        net = cls.from_pretrained(model, **kw)
    except OSError as exc:
        raise UsageError(f"hf_speech: cannot load model {model!r}: {_first_line(exc)}") from None
    if not with_head and getattr(net.config, "model_type", "") == "whisper":
        net = net.get_encoder()  # the decoder is never used: let it be freed
    return net, fe


def encoder_digest(net: nn.Module, feature_extractor) -> bytes:
    """SHA-256 of what an encoder's outputs are a function of: its weights, its config (activation,
    layer norm, ...) and its feature extractor's settings (normalisation, rate), less what names
    where or by which version it was saved (``_name_or_path``, ``transformers_version``, ...)."""
    import hashlib
    import json

    from liser_cache.store import weights_digest

    # what differs from the class's defaults (to_diff_dict): attributes a transformers release adds
    # or drops with their defaults leave it; dtype is in the weights' digest, under either name
    volatile = ("transformers_version", "processor_class", "architectures", "dtype", "torch_dtype")

    def settings(obj) -> dict:
        d = obj.to_diff_dict() if hasattr(obj, "to_diff_dict") else obj.to_dict()
        return {k: v for k, v in d.items() if not k.startswith("_") and k not in volatile}

    body = {"config": settings(net.config), "feature_extractor": settings(feature_extractor), "weights": weights_digest(net)}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).digest()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _find_layers(net: nn.Module, n: int) -> nn.ModuleList:
    found = {
        name: m
        for name, m in net.named_modules()
        if isinstance(m, nn.ModuleList) and name.rsplit(".", 1)[-1] == "layers" and len(m) == n
    }
    for name in ("encoder.layers", "layers"):
        if name in found:
            return found[name]
    ends = [m for name, m in found.items() if name.endswith("encoder.layers")]
    if len(ends) == 1:
        return ends[0]
    raise ValueError(
        f"cannot find the {n} transformer layers of this {type(net).__name__} "
        "(hf_speech supports wav2vec2-style encoders and Whisper's encoder)"
    )


def zero_mean_unit_var(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per-clip normalisation over the valid samples only; the padding stays 0.

    The same arithmetic as ``Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm``.
    """
    mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]).to(x.dtype)
    n = lengths.clamp_min(1).to(x.dtype)[:, None]
    mean = (x * mask).sum(1, keepdim=True) / n
    var = (((x - mean) * mask) ** 2).sum(1, keepdim=True) / n
    return (x - mean) / torch.sqrt(var + 1e-7) * mask


def by_equal_length(
    fn: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]],
    audio: torch.Tensor,
    lengths: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """Apply ``fn`` to each group of equal-length rows, unpadded, and put the rows back in order."""
    parts, order = [], []
    for n in torch.unique(lengths).tolist():
        idx = (lengths == n).nonzero(as_tuple=True)[0]
        parts.append(fn(audio[idx, : int(n)], lengths[idx]))
        order.append(idx)
    inverse = torch.argsort(torch.cat(order))
    return tuple(torch.cat([p[j] for p in parts])[inverse] for j in range(len(parts[0])))


class SpeechBackbone(nn.Module):
    """One loaded encoder (``self.model``) and what it needs to see a LiSER batch.

    Hidden state ``i`` (0..L) follows transformers' ``hidden_states`` convention: ``i < L`` is
    the input of transformer layer ``i`` (the output of layer ``i - 1``), ``L`` is the model's
    ``last_hidden_state`` (after the final layer norm of pre-LN models). They are recorded with
    hooks on the layers, which is independent of the transformers version and lets the layers
    above a chosen one be dropped.
    """

    def __init__(self, net: nn.Module, feature_extractor, source: str, *, with_head: bool = False):
        super().__init__()
        self.model = net
        self.feature_extractor = feature_extractor
        self.source = source
        cfg = net.config
        self.model_type = str(getattr(cfg, "model_type", type(net).__name__))
        self.whisper = self.model_type == "whisper"
        self.input_name = getattr(net, "main_input_name", "input_values")
        if not self.whisper and self.input_name != "input_values":
            raise ValueError(
                f"{source}: {type(net).__name__} takes {self.input_name!r}, not raw waveforms; "
                "hf_speech supports waveform encoders (wav2vec2, HuBERT, WavLM, data2vec-audio, ...) "
                "and Whisper's encoder"
            )
        if getattr(cfg, "add_adapter", False):
            raise ValueError(f"{source}: encoders with an adapter (config.add_adapter) are not supported")
        rate = getattr(feature_extractor, "sampling_rate", None)
        if not rate:
            raise ValueError(f"{source}: its feature extractor states no sampling_rate")
        self.sample_rate = int(rate)
        self.do_normalize = bool(getattr(feature_extractor, "do_normalize", False)) and not self.whisper
        self.hidden_size = int(cfg.hidden_size)  # Whisper maps it to d_model
        self.num_layers = int(cfg.num_hidden_layers)
        self.feat_extract_norm = getattr(cfg, "feat_extract_norm", None)
        #: True when a zero-padded batch with an attention mask gives every clip its own result
        self.batch_safe = self.whisper or (
            self.model_type in MASK_SAFE_MODEL_TYPES and self.feat_extract_norm == "layer"
        )
        if hasattr(cfg, "layerdrop"):
            cfg.layerdrop = 0.0  # a skipped layer would make "hidden state i" ill-defined
        # not a registered submodule: the same weights must not appear twice in the state dict
        object.__setattr__(self, "layers", None if with_head else _find_layers(net, self.num_layers))
        self.kept_layers = self.num_layers
        probe = torch.arange(1, 16001)
        self.min_samples = int(probe[self.frames(probe) >= 1][0])
        self.max_samples = int(feature_extractor.n_samples) if self.whisper else None
        self._record: dict | None = None
        self._reduce: Reduce | None = None
        self._valid: torch.Tensor | None = None
        self._state_ids: tuple[int, ...] = ()
        self._warned_long = False

    def extra_repr(self) -> str:
        return f"source={self.source!r}, sample_rate={self.sample_rate}, batch_safe={self.batch_safe}"

    # -- geometry -------------------------------------------------------------------------------
    def frames(self, lengths: torch.Tensor) -> torch.Tensor:
        """Valid encoder frames of clips of ``lengths`` samples."""
        if self.whisper:
            mel = lengths.clamp(max=self.feature_extractor.n_samples) // self.feature_extractor.hop_length
            return self.model._get_feat_extract_output_lengths(mel)
        return self.model._get_feat_extract_output_lengths(lengths)

    def at_least_min_length(self, audio: torch.Tensor, lengths: torch.Tensor):
        """Clips shorter than the conv encoder's receptive field are zero-padded up to it."""
        if bool((lengths >= self.min_samples).all()):
            return audio, lengths
        if audio.shape[1] < self.min_samples:
            audio = nn.functional.pad(audio, (0, self.min_samples - audio.shape[1]))
        return audio, lengths.clamp_min(self.min_samples)

    # -- configuration --------------------------------------------------------------------------
    def keep_layers(self, n: int) -> None:
        """Drop the transformer layers above the first ``n``: they cannot change state ``n``."""
        if not 1 <= n <= len(self.layers):
            raise ValueError(f"cannot keep {n} of {len(self.layers)} layers")
        del self.layers[n:]
        self.kept_layers = n

    def record(self, state_ids: Sequence[int]) -> None:
        """Hook the layers so that :meth:`forward` returns hidden states ``state_ids`` (0..L)."""
        self._state_ids = tuple(state_ids)
        for i in self._state_ids:
            if i == self.num_layers:
                continue  # last_hidden_state, from the model's output
            if i > self.kept_layers:
                raise ValueError(f"hidden state {i} needs layers that were dropped")
            if i == 0:
                self.layers[0].register_forward_pre_hook(self._hook(0, pre=True), with_kwargs=True)
            else:
                self.layers[i - 1].register_forward_hook(self._hook(i, pre=False), with_kwargs=True)

    def _hook(self, i: int, *, pre: bool):
        def pre_hook(module, args, kwargs):
            self._store(i, args[0] if args else kwargs["hidden_states"])

        def post_hook(module, args, kwargs, output):
            self._store(i, output[0] if isinstance(output, (tuple, list)) else output)

        return pre_hook if pre else post_hook

    def _store(self, i: int, h: torch.Tensor) -> None:
        if self._record is not None:
            self._record[i] = self._reduce(h, self._valid) if self._reduce else h

    def use_classifier(self) -> int:
        """Record the input of the checkpoint's ``classifier`` (its pooled clip vector)."""
        clf = getattr(self.model, "classifier", None)
        if not isinstance(clf, nn.Linear):
            raise ValueError(
                f"{self.source}: {type(self.model).__name__} has no `classifier` layer to take "
                "the clip embedding from"
            )
        clf.register_forward_pre_hook(lambda m, args: self._store(-1, args[0]))
        return clf.in_features

    # -- running --------------------------------------------------------------------------------
    def inputs(self, audio: torch.Tensor, lengths: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's keyword inputs for a zero-padded batch (rows of equal length unless
        :attr:`batch_safe`)."""
        if self.whisper:
            if not self._warned_long and bool((lengths > self.max_samples).any()):
                log.warning(
                    "hf_speech: Whisper's encoder sees at most %.0f s; longer clips are cut",
                    self.max_samples / self.sample_rate,
                )
                self._warned_long = True
            clips = [a[: int(n)].detach().float().cpu().numpy() for a, n in zip(audio, lengths)]
            feats = self.feature_extractor(
                clips, sampling_rate=self.sample_rate, return_tensors="pt"
            ).input_features
            return {self.input_name: feats.to(audio.device, audio.dtype)}
        x = audio[:, : int(lengths.max())]
        if self.do_normalize:
            x = zero_mean_unit_var(x, lengths)
        if self.batch_safe:
            mask = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
            return {"input_values": x, "attention_mask": mask.long()}
        if bool((lengths != x.shape[1]).any()):
            raise RuntimeError(
                f"{self.model_type} (feat_extract_norm={self.feat_extract_norm!r}) cannot take a padded "
                "batch without changing its outputs; run it through by_equal_length"
            )
        return {"input_values": x}

    def forward(
        self, audio: torch.Tensor, lengths: torch.Tensor, reduce: Reduce | None = None
    ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The recorded hidden states (each (B, T, D), or ``reduce``'s result) and valid frames."""
        inputs = self.inputs(audio, lengths)
        self._valid, self._reduce, self._record = self.frames(lengths), reduce, {}
        try:
            out = self.model(**inputs)
            rec = self._record
            if self.num_layers in self._state_ids:
                self._store(self.num_layers, out.last_hidden_state)
        finally:
            self._record, self._reduce = None, None
        return [rec[i] for i in self._state_ids], self._valid

    def classify(self, audio: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The checkpoint's own (logits, pooled clip vector)."""
        inputs = self.inputs(audio, lengths)
        self._record = {}
        try:
            logits = self.model(**inputs).logits
            pooled = self._record[-1]
        finally:
            self._record = None
        return logits, pooled
