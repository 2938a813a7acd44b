"""``ravdess``: the Ryerson Audio-Visual Database of Emotional Speech and Song (Livingstone &
Russo 2018), from its published layout.

Files are found recursively under ``root`` (``Actor_01/ ... Actor_24/`` as the archives unpack,
or any flat or nested folders) by their 7-field names ``MM-VV-EE-II-SS-RR-AA.ext``:

======  =====================================================================================
MM      modality: 01 audio-video (mp4), 02 video only (mp4), 03 audio only (wav, 48 kHz)
VV      vocal channel: 01 speech, 02 song
EE      emotion: 01 neutral, 02 calm, 03 happy, 04 sad, 05 angry, 06 fearful, 07 disgust,
        08 surprised
II      intensity: 01 normal, 02 strong (no strong neutral)
SS      statement: 01 "Kids are talking by the door", 02 "Dogs are sitting by the door"
RR      repetition: 01, 02
AA      actor: 01-24; odd = male, even = female
======  =====================================================================================

One clip per *take* (the fields without MM). Its audio comes from the audio-only wav, or else
from the audio-video mp4; with ``modality: audiovisual`` its frames come from the audio-video
mp4, or else from the video-only mp4 (paired with the take's wav). The speech audio subset is
1,440 clips: 24 actors x 60 (neutral 96, each other emotion 192).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from liser_core.data import Clip
from liser_core.labels import RAVDESS8

from . import protocols
from ._base import IndexedCorpus, IndexProblem, assemble, check_root, walk_files
from .decode import DecodeSpec, Source

_NAME = re.compile(r"^(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)-(\d\d)$")
MODALITIES = {1: "audio-video", 2: "video-only", 3: "audio-only"}
CHANNELS = {1: "speech", 2: "song"}
FILE_RATE = 48000  # the published wavs; the mp4s' audio is 48 kHz too


@dataclass(frozen=True)
class RavdessName:
    """The seven fields of a RAVDESS file name, decoded."""

    modality: int  # 1 audio-video, 2 video-only, 3 audio-only
    channel: int  # 1 speech, 2 song
    emotion: int  # 1-8, RAVDESS8 order
    intensity: int  # 1 normal, 2 strong
    statement: int  # 1 or 2
    repetition: int  # 1 or 2
    actor: int  # 1-24

    @property
    def label(self) -> str:
        return RAVDESS8.classes[self.emotion - 1]

    @property
    def sex(self) -> str:
        return "male" if self.actor % 2 else "female"

    @property
    def speaker(self) -> str:
        return f"{self.actor:02d}"

    @property
    def take(self) -> tuple[int, ...]:
        return (self.channel, self.emotion, self.intensity, self.statement, self.repetition, self.actor)

    def stem(self, modality: int | None = None) -> str:
        m = self.modality if modality is None else modality
        return "-".join(f"{v:02d}" for v in (m, *self.take))


def parse_name(stem: str) -> RavdessName:
    """Decode ``"03-01-05-02-01-02-12"``; ValueError naming the bad field otherwise.

    Example::

        >>> n = parse_name("03-01-05-02-01-02-12")
        >>> n.label, n.speaker, n.sex, n.intensity
        ('angry', '12', 'female', 2)
    """
    m = _NAME.match(stem)
    if not m:
        raise ValueError(f"{stem!r} is not a RAVDESS name MM-VV-EE-II-SS-RR-AA")
    n = RavdessName(*(int(g) for g in m.groups()))
    for field_, ok in (
        ("modality", n.modality in MODALITIES),
        ("vocal channel", n.channel in CHANNELS),
        ("emotion", 1 <= n.emotion <= 8),
        ("intensity", n.intensity in (1, 2)),
        ("statement", n.statement in (1, 2)),
        ("repetition", n.repetition in (1, 2)),
        ("actor", 1 <= n.actor <= 24),
    ):
        if not ok:
            raise ValueError(f"{stem!r}: {field_} code out of range")
    return n


def speaker_id(value: Any) -> str:
    """``1``, ``"1"``, ``"01"`` or ``"Actor_01"`` -> ``"01"``."""
    text = str(value).strip()
    text = text[len("Actor_"):] if text.startswith("Actor_") else text
    if not text.isdigit() or not 1 <= int(text) <= 24:
        raise ValueError(f"{value!r} is not a RAVDESS actor (1-24)")
    return f"{int(text):02d}"


def index(root: Path, channel: str, modality: str, spec: DecodeSpec):
    """Clips (unloaded) with their sources, and the files that gave none."""
    problems: list[IndexProblem] = []
    takes: dict[tuple[int, ...], dict[int, tuple[Path, RavdessName]]] = {}
    for path in walk_files(root, (".wav", ".mp4")):
        try:
            n = parse_name(path.stem)
        except ValueError as exc:
            kind = "mislabeled" if "emotion code" in str(exc) else "unparsed"
            problems.append(IndexProblem(str(path), kind, f"file name does not parse: {exc}"))
            continue
        want = ".wav" if n.modality == 3 else ".mp4"
        if path.suffix.lower() != want:
            problems.append(
                IndexProblem(str(path), "mislabeled", f"{MODALITIES[n.modality]} file should be {want}")
            )
            continue
        if n.channel == 2 and n.emotion in (7, 8):
            problems.append(IndexProblem(str(path), "mislabeled", f"song has no {n.label} takes"))
            continue
        slot = takes.setdefault(n.take, {})
        if n.modality in slot:
            problems.append(IndexProblem(str(path), "duplicate", f"duplicate of {slot[n.modality][0]}"))
            continue
        slot[n.modality] = (path, n)
    wanted = {"speech": (1,), "song": (2,), "both": (1, 2)}[channel]
    found = {ch: sum(1 for t in takes if t[0] == ch) for ch in CHANNELS}
    if takes and not any(found[ch] for ch in wanted):
        other = ", ".join(f"{n} {CHANNELS[ch]}" for ch, n in found.items() if n)
        raise ValueError(
            f"no {channel} takes under {str(root)!r} (it holds {other} takes; channel: "
            f"{'speech' if found[1] else 'song'} reads them)"
        )
    notes = []
    if channel == "both":
        for ch in (1, 2):
            if not found[ch]:
                notes.append(f"channel both: {str(root)!r} holds no {CHANNELS[ch]} takes; every clip is {CHANNELS[3 - ch]}")
    items = []
    for take in sorted(takes):
        files = takes[take]
        n = next(iter(files.values()))[1]
        if n.channel not in wanted:
            continue
        audio = files.get(3) or files.get(1)
        video = files.get(1) or files.get(2)
        if audio is None:
            problems.append(
                IndexProblem(str(video[0]), "missing_audio", "video-only take without its audio-only wav")
            )
            continue
        if modality == "audiovisual" and video is None:
            problems.append(
                IndexProblem(str(audio[0]), "missing_video", "modality audiovisual: no mp4 of this take")
            )
            continue
        apath, aname = audio
        clip = Clip(
            clip_id=apath.stem,
            audio=None,
            sample_rate=spec.sample_rate or FILE_RATE,
            speaker=aname.speaker,
            label=aname.label,
            path=str(apath),
        )
        source = Source(str(apath), str(video[0]) if modality == "audiovisual" else None, spec)
        items.append((clip, source))
    return items, problems, notes


#: Emotions each vocal channel has (song has no disgust or surprised), and actors without song
#: (actor 18's song files were never published).
CHANNEL_EMOTIONS = {1: range(1, 9), 2: range(1, 7)}
NO_SONG = {18}


def take_name(clip: Clip) -> str:
    """A clip's take, its file name without the modality field: ``"01-05-02-01-02-12"``."""
    return clip.clip_id.split("-", 1)[1]


def expected_takes(speaker: str, channel: str) -> list[str]:
    """Every take the published corpus has of an actor in ``channel`` (speech: 60; song: 44,
    none for actor 18): emotions x intensities (neutral has no strong one) x 2 statements x
    2 repetitions.

    Example::

        >>> len(expected_takes("05", "speech")), len(expected_takes("05", "song")), expected_takes("18", "song")
        (60, 44, [])
    """
    actor = int(speaker)
    out = []
    for ch in {"speech": (1,), "song": (2,), "both": (1, 2)}[channel]:
        if ch == 2 and actor in NO_SONG:
            continue
        for e in CHANNEL_EMOTIONS[ch]:
            for i in (1,) if e == 1 else (1, 2):
                for st in (1, 2):
                    for r in (1, 2):
                        out.append(f"{ch:02d}-{e:02d}-{i:02d}-{st:02d}-{r:02d}-{actor:02d}")
    return out


def ravdess(
    root: str,
    seed: int = 0,
    channel: Literal["speech", "song", "both"] = "speech",
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
    """RAVDESS (8 emotions, 24 actors) from its published layout; EmoBox's 6 speaker folds.

    ``expect_complete``: the tree is the whole corpus, so a fold's test actor or take that is
    not there is reported (``liser data check`` fails, a run warns); false for a deliberate subset
    (the fold's test speakers that have no clip are still named, once: ``corpus.subset()``).
    """
    if channel not in ("speech", "song", "both"):
        raise ValueError(f"channel must be speech, song or both, not {channel!r}")
    if modality not in ("audio", "audiovisual"):
        raise ValueError(f"modality must be audio or audiovisual, not {modality!r}")
    path = check_root(root, "ravdess")
    spec = DecodeSpec(sample_rate, min_seconds, max_seconds, min_rms, fps, num_frames, frame_size)
    items, problems, notes = index(path, channel, modality, spec)
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
        name="ravdess",
        label_space=RAVDESS8,
        root=path,
        items=items,
        problems=problems,
        opts=opts,
        num_folds=len(protocols.RAVDESS_FOLDS),
        test_speakers=lambda f: [f"{a:02d}" for a in protocols.RAVDESS_FOLDS[f]],
        fold_name="fold {fold} of {folds} (EmoBox speaker folds)",
        normalise_speaker=speaker_id,
        group=lambda s: "male" if int(s) % 2 else "female",
        spec=spec,
        with_frames=modality == "audiovisual",
        unlabeled_from=unlabeled_from,
        unlabeled_options=unlabeled_options,
        speaker_info={s: {"sex": "male" if int(s) % 2 else "female"} for s in speakers},
        options={"channel": channel, "modality": modality},
        expected_takes=(lambda s: expected_takes(s, channel)) if expect_complete else None,
        take=take_name,
        notes=notes,
    )
