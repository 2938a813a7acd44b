"""A checkpoint's own label names (``config.id2label``) as a LiSER label space."""

from __future__ import annotations

from collections.abc import Mapping

from liser_core.labels import (
    CANONICAL_EMOTIONS,
    EMOTION_ALIASES,
    LabelSpace,
    canonical_emotion,
    emotion_key,
)

#: Label names seen in emotion checkpoints -> canonical names (one table for checkpoints and
#: corpora: :data:`liser_core.labels.EMOTION_ALIASES`).
LABEL_ALIASES = EMOTION_ALIASES


def id2label_space(
    id2label: Mapping[int, str], source: str, aliases: Mapping[str, str] | None = None
) -> LabelSpace:
    """The label space of a classification checkpoint, classes in the order of its class ids.

    ``aliases`` (label name -> canonical name) extends :data:`LABEL_ALIASES` and wins over it.
    An unknown name is a :class:`ValueError` that says how to map it.

    Example::

        >>> id2label_space({0: "ang", 1: "Happiness", 2: "neu"}, "demo").classes
        ('angry', 'happy', 'neutral')
    """
    table: dict[str, str] = {}  # the option's names, looked up before LiSER's table
    for name, canonical in (aliases or {}).items():
        if canonical not in CANONICAL_EMOTIONS:
            raise ValueError(
                f"label_aliases maps {name!r} to {canonical!r}, which is not a canonical emotion "
                f"name ({', '.join(CANONICAL_EMOTIONS)})"
            )
        table[emotion_key(name)] = canonical
    ids = sorted(int(i) for i in id2label)
    if ids != list(range(len(ids))):
        raise ValueError(f"{source}: config.id2label ids {ids} are not 0..{len(ids) - 1}")
    classes = []
    for i in ids:
        name = id2label[i] if i in id2label else id2label[str(i)]
        canonical = canonical_emotion(name, table)
        if canonical is None:
            hint = (
                " (the checkpoint has placeholder label names: it was not saved with real ones)"
                if emotion_key(name).startswith("label")
                else ""
            )
            raise ValueError(
                f"{source}: class {i} is labelled {name!r}, which is no emotion name LiSER knows{hint}; "
                f"map it with the option label_aliases: {{{name}: <one of {', '.join(CANONICAL_EMOTIONS)}>}}"
            )
        classes.append(canonical)
    if len(set(classes)) != len(classes):
        dup = sorted({c for c in classes if classes.count(c) > 1})
        raise ValueError(
            f"{source}: several classes of config.id2label {dict(id2label)} map to {dup}; "
            "a teacher's classes must be distinct"
        )
    return LabelSpace(f"id2label:{source}", tuple(classes))
