"""Real corpora: ``ravdess``, ``cremad`` (published layouts and file naming), ``video_folder``
(any folder of videos with sound, as an unlabeled pool), ``emobox`` (any of EmoBox's 32 corpora
from its metadata and folds) and ``cross_corpus`` (each split from another corpus).

Indexing reads file names only (and, for video folders, container headers cached in a
manifest); audio and frames are decoded on demand by each corpus's ``load``. PyAV is imported
only when a video is opened. Protocols (speaker folds, label fractions, the pool) are in
:mod:`liser_plugins.corpora.protocols`; see docs/datasets.md.
"""

from __future__ import annotations

from liser_core import hookimpl

from . import cremad, cross, emobox, ravdess, video_folder

__all__ = ["cremad", "cross", "emobox", "ravdess", "video_folder"]  # modules; each holds its factory of the same name


@hookimpl
def liser_register_datasets(registry):
    registry.register("ravdess", ravdess.ravdess, summary="RAVDESS (8 emotions, 24 actors): published layout, EmoBox speaker folds")
    registry.register("cremad", cremad.cremad, summary="CREMA-D (6 emotions, 91 actors): published layout, 5 actor folds")
    registry.register("video_folder", video_folder.video_folder, summary="any folder of videos with sound, as an unlabeled pool")
    registry.register("emobox", emobox.emobox, summary="any of EmoBox's 32 corpora (corpus: iemocap, ...): its metadata, folds and label maps")
    registry.register("cross_corpus", cross.cross_corpus, summary="each split from another corpus (ravdess, cremad, emobox, video_folder), classes aligned by name")
