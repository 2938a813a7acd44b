"""``cremad``: CREMA-D, the Crowd-sourced Emotional Multimodal Actors Dataset (Cao et al. 2014),
from its published layout.

Files are found recursively under ``root``: ``AudioWAV/*.wav`` (16 kHz), ``VideoFlash/*.flv``
(audio + video) or mp4 conversions of them, named ``ActorID_Sentence_Emotion_Level``:

* ActorID 1001-1091 (91 actors; their sex is read from ``VideoDemographics.csv`` when the root
  holds it);
* Sentence: one of the 12 sentence codes (IEO, TIE, IOM, IWW, TAI, MTI, IWL, ITH, DFA, ITS, TSI,
  WSI);
* Emotion: ANG DIS FEA HAP NEU SAD -> angry disgust fearful happy neutral sad;
* Level: LO MD HI (only for IEO) or XX (unspecified).

7,442 clips: 1,271 per emotion, neutral 1,087. A few published files are broken and are
reported by ``load`` (so the run's bad-clip policy and ``liser data check`` name them):
1076_MTI_NEU_XX (unreadable), 1076_MTI_SAD_XX (silent), 1064_TIE_SAD_XX (zero length),
1064_IEO_DIS_MD (61 s, over ``max_seconds``), and in clones made without git-lfs, pointer
text files instead of audio.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any, Literal

from liser_core.data import Clip
from liser_core.labels import CREMAD6

from . import protocols
from ._base import IndexedCorpus, IndexProblem, assemble, check_root, walk_files
from .decode import DecodeSpec, Source

_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
EMOTIONS = {"ANG": "angry", "DIS": "disgust", "FEA": "fearful", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
LEVELS = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified"}
SENTENCES = ("IEO", "TIE", "IOM", "IWW", "TAI", "MTI", "IWL", "ITH", "DFA", "ITS", "TSI", "WSI")
#: Files of the published corpus known to be broken, and how (for docs and reports).
KNOWN_BAD = {
    "1076_MTI_NEU_XX": "unreadable",
    "1076_MTI_SAD_XX": "silent",
    "1064_TIE_SAD_XX": "zero length",
    "1064_IEO_DIS_MD": "61 s long",
}
#: Names the published corpus lacks (7,462 by the naming rule, 7,442 published).
ABSENT = frozenset({
    "1002_TIE_NEU_XX", "1076_ITS_NEU_XX",
    *(f"1008_WSI_{e}_XX" for e in ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")),
    *(f"1009_MTI_{e}_XX" for e in ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")),
    *(f"1019_ITH_{e}_XX" for e in ("ANG", "DIS", "FEA", "HAP", "NEU", "SAD")),
})
FILE_RATE = 16000
_VIDEO = (".flv", ".mp4")


def parse_name(stem: str) -> tuple[int, str, str, str]:
    """``"1001_DFA_ANG_XX"`` -> ``(1001, "DFA", "angry", "XX")``; ValueError otherwise.

    Example::

        >>> parse_name("1064_IEO_DIS_MD")
        (1064, 'IEO', 'disgust', 'MD')
    """
    m = _NAME.match(stem)
    if not m:
        raise ValueError(f"{stem!r} is not a CREMA-D name ActorID_Sentence_Emotion_Level")
    actor, sentence, emotion, level = int(m[1]), m[2], m[3], m[4]
    if actor not in protocols.CREMAD_ACTORS:
        raise ValueError(f"{stem!r}: actor {actor} is not in 1001-1091")
    if sentence not in SENTENCES:
        raise ValueError(f"{stem!r}: unknown sentence code {sentence!r}")
    if emotion not in EMOTIONS:
        raise ValueError(f"{stem!r}: unknown emotion code {emotion!r} (codes: {', '.join(EMOTIONS)})")
    if level not in LEVELS:
        raise ValueError(f"{stem!r}: unknown level code {level!r}")
    return actor, sentence, EMOTIONS[emotion], level


def expected_takes(speaker: str) -> list[str]:
    """Every clip the published corpus has of an actor: 11 sentences x 6 emotions at level XX,
    and IEO as neutral XX plus 5 emotions x LO/MD/HI (82 per actor), less :data:`ABSENT`.

    Example::

        >>> len(expected_takes("1001")), len(expected_takes("1008"))
        (82, 76)
    """
    out = []
    for sentence in SENTENCES:
        if sentence == "IEO":
            names = [f"{speaker}_IEO_NEU_XX"] + [
                f"{speaker}_IEO_{e}_{lv}" for e in EMOTIONS if e != "NEU" for lv in ("LO", "MD", "HI")
            ]
        else:
            names = [f"{speaker}_{sentence}_{e}_XX" for e in EMOTIONS]
        out += [n for n in names if n not in ABSENT]
    return out


def speaker_id(value: Any) -> str:
    text = str(value).strip()
    if not text.isdigit() or int(text) not in protocols.CREMAD_ACTORS:
        raise ValueError(f"{value!r} is not a CREMA-D actor id (1001-1091)")
    return text


def read_demographics(root: Path) -> dict[str, dict[str, Any]]:
    """Actor -> {sex, age, ...} from ``VideoDemographics.csv`` (root or one level down), if any."""
    for candidate in (root / "VideoDemographics.csv", *root.glob("*/VideoDemographics.csv")):
        if candidate.is_file():
            with open(candidate, newline="") as f:
                rows = list(csv.DictReader(f))
            out = {}
            for r in rows:
                actor = (r.get("ActorID") or "").strip()
                if actor:
                    info = {k.lower(): v.strip() for k, v in r.items() if k and k != "ActorID" and v is not None}
                    if "sex" in info:
                        info["sex"] = info["sex"].lower()
                    out[actor] = info
            return out
    return {}


def index(root: Path, modality: str, spec: DecodeSpec):
    problems: list[IndexProblem] = []
    files: dict[str, dict[str, Path]] = {}
    for path in walk_files(root, (".wav", *_VIDEO)):
        try:
            parse_name(path.stem)
        except ValueError as exc:
            kind = "mislabeled" if "emotion code" in str(exc) else "unparsed"
            problems.append(IndexProblem(str(path), kind, f"file name does not parse: {exc}"))
            continue
        kind = "audio" if path.suffix.lower() == ".wav" else path.suffix.lower()
        slot = files.setdefault(path.stem, {})
        if kind in slot:
            problems.append(IndexProblem(str(path), "duplicate", f"duplicate of {slot[kind]}"))
            continue
        slot[kind] = path
    items = []
    for stem in sorted(files):
        slot = files[stem]
        actor, _, label, _ = parse_name(stem)
        video = slot.get(".mp4") or slot.get(".flv")
        audio = slot.get("audio") or video
        if modality == "audiovisual" and video is None:
            problems.append(IndexProblem(str(audio), "missing_video", "modality audiovisual: no flv/mp4 of this clip"))
            continue
        clip = Clip(
            clip_id=stem,
            audio=None,
            sample_rate=spec.sample_rate or FILE_RATE,
            speaker=str(actor),
            label=label,
            path=str(audio),
        )
        items.append((clip, Source(str(audio), str(video) if modality == "audiovisual" else None, spec)))
    return items, problems


def cremad(
    root: str,
    seed: int = 0,
    modality: Literal["audio", "audiovisual"] = "audio",
    fold: int = 1,
    split_file: str | None = None,
    label_fraction: float = 1.0,
    pool: Literal["disjoint_speakers", "remaining_clips"] = "disjoint_speakers",
    teacher_speakers: list[int | str] | None = None,
    teacher_fraction: float = 0.0,
    unlabeled_from: str | None = None,
    unlabeled_options: dict[str, Any] | None = None,
    sample_rate: int | None = None,
    min_seconds: float = 0.5,
    max_seconds: float | None = 20.0,
    min_rms: float = 1e-4,
    fps: float = 5.0,
    num_frames: int | None = 8,
    frame_size: int | None = 160,
    expect_complete: bool = True,
) -> IndexedCorpus:
    """CREMA-D (6 emotions, 91 actors) from its published layout; 5 folds by actor id.

    ``expect_complete``: the tree is the whole corpus, so a fold's test actor or clip that is
    not there is reported (``liser data check`` fails, a run warns); false for a deliberate subset
    (the fold's test speakers that have no clip are still named, once: ``corpus.subset()``).
    """
    if modality not in ("audio", "audiovisual"):
        raise ValueError(f"modality must be audio or audiovisual, not {modality!r}")
    path = check_root(root, "cremad")
    spec = DecodeSpec(sample_rate, min_seconds, max_seconds, min_rms, fps, num_frames, frame_size)
    items, problems = index(path, modality, spec)
    demo = read_demographics(path)
    opts = protocols.ProtocolOptions(
        fold=fold,
        split_file=split_file,
        label_fraction=label_fraction,
        pool=pool,
        teacher_speakers=None if teacher_speakers is None else tuple(map(speaker_id, teacher_speakers)),
        teacher_fraction=teacher_fraction,
        seed=seed,
    )
    speakers = sorted({c.speaker for c, _ in items})
    return assemble(
        name="cremad",
        label_space=CREMAD6,
        root=path,
        items=items,
        problems=problems,
        opts=opts,
        num_folds=protocols.CREMAD_NUM_FOLDS,
        test_speakers=lambda f: [str(a) for a in protocols.CREMAD_FOLDS[f]],
        fold_name="fold {fold} of {folds} (actor ids dealt round-robin)",
        normalise_speaker=speaker_id,
        group=lambda s: demo.get(s, {}).get("sex"),
        spec=spec,
        with_frames=modality == "audiovisual",
        unlabeled_from=unlabeled_from,
        unlabeled_options=unlabeled_options,
        speaker_info={s: demo.get(s, {}) for s in speakers},
        options={"modality": modality},
        expected_takes=expected_takes if expect_complete else None,
    )
