"""Speech teacher ``hf_speech`` on a self-supervised encoder from transformers.

Any ``AutoModel``-loadable waveform encoder (wav2vec2, HuBERT, WavLM, data2vec-audio, ...) or
Whisper's encoder, from a hub id or a local directory; a frozen backbone with a small head fitted
in the run, or a checkpoint's own emotion head (``use_model_head``). See docs/teachers/speech.md.

transformers is imported only when a teacher is built (``pip install 'liser[speech]'``), so the
plugin loads, and ``liser list`` stays fast, without it.
"""

from __future__ import annotations

from liser_core import hookimpl

from ._labels import LABEL_ALIASES, id2label_space
from .teacher import HFSpeechTeacher

__all__ = ["LABEL_ALIASES", "HFSpeechTeacher", "id2label_space"]


@hookimpl
def liser_register_teachers(registry):
    registry.register(
        "hf_speech",
        HFSpeechTeacher,
        summary="speech teacher on a wav2vec2/HuBERT/WavLM/data2vec-audio/Whisper encoder (transformers)",
        modality="audio",
    )
