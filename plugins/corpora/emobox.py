"""``emobox``: any of the 32 corpora of EmoBox (Ma et al., Interspeech 2024) from EmoBox's
published metadata, with EmoBox's folds.

EmoBox's ``data/`` folder holds, per corpus::

    <corpus>/<corpus>.jsonl                          every record (optional here)
    <corpus>/fold_K/<corpus>_{train,test}_fold_K.jsonl   its folds (MELD, MSP-Podcast, M3ED: also _valid_)
    <corpus>/label_map.json                          EmoBox's code -> class ("exc": "Happy")
    <corpus>/data.seg.wrd.stm                        speakers (3rd column), where EmoBox has them

Each record is a JSON line ``{"key", "wav", "sample_rate", "length", "emo", ...}``; ``wav`` is
relative to EmoBox's working folder (``downloads/<corpus>/...``). ``metadata`` is the ``data/``
folder (or its ``<corpus>/`` folder), ``root`` the folder EmoBox calls ``downloads/<corpus>``:
a record's audio is ``root / wav`` less its ``downloads/<corpus>/`` prefix.

* **Folds**: fold K's test file is the test split; its train file is carved into teacher /
  labeled / unlabeled by speaker exactly as ``ravdess`` and ``cremad`` do
  (:func:`liser_plugins.corpora.protocols.carve`); its valid file is left unused, or joins the
  training records with ``valid: train``.
* **Labels by name**: a record's code goes through EmoBox's ``label_map.json`` (IEMOCAP ``exc``
  -> ``Happy``) and then to LiSER's canonical name (``Happy`` -> ``happy``, ``Fear`` ->
  ``fearful``, ``Surprise`` -> ``surprised``). Classes with no canonical name (EmoDB's
  ``Boredom``, MSP-Podcast's ``Other`` and ``No-agreement``) are left out with a note giving
  their counts; a code the label map does not know is a ``mislabeled`` problem.
* **Speakers**: per corpus, from the metadata's ``data.seg.wrd.stm`` or from a naming rule
  (:data:`SPEAKER_RULES`; :func:`speaker_source` says which). IEMOCAP always uses the rule
  (session + the *utterance's* speaker, ``Ses01M``): EmoBox's stm names the dialogue's first
  speaker (``Ses01F`` for ``Ses01F_impro04_M000``), which would put one actor in two splits.
* **Durations** come from the metadata's ``length`` (``Clip.seconds_hint``): a plan decodes
  nothing.
* **Video** (``modality: audiovisual``): for the audio-visual corpora, :data:`VIDEO_RULES` maps a
  record's wav path to its video under ``video_root`` (default ``root``); a record whose video
  is not there is a ``missing_video`` problem and left out; a corpus without video refuses
  ``audiovisual`` (it serves audio-only teachers).

Every file a fold's test split names and the tree lacks is a ``missing_clip`` (its speakers, if
none of their files is there, ``missing_speaker``), unless ``expect_complete: false``.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Literal

from liser_core.data import SPLITS, Clip
from liser_core.labels import CANONICAL_EMOTIONS, LabelSpace, canonical_emotion

from . import protocols
from ._base import IndexedCorpus, IndexProblem, check_root
from .decode import DecodeSpec, Source

log = logging.getLogger("liser.corpora")

#: EmoBox's class names (values of its label maps) -> LiSER's canonical names, read-only. Label
#: maps are read by :func:`liser_core.labels.canonical_emotion`, which gives these and the
#: spellings other metadata uses ("Anger", "surprised", "happiness").
CLASS_NAMES = MappingProxyType({
    "Angry": "angry", "Happy": "happy", "Sad": "sad", "Neutral": "neutral", "Fear": "fearful",
    "Disgust": "disgust", "Surprise": "surprised", "Calm": "calm", "Contempt": "contempt",
})


@dataclass(frozen=True)
class CorpusInfo:
    """What LiSER knows of one EmoBox corpus besides its metadata (for docs and rules)."""

    title: str
    language: str
    folds: int  # EmoBox's number of folds
    video: bool = False  # the published corpus has video of the faces


#: The 32 corpora of EmoBox (names as EmoBox spells its folders).
CORPORA: dict[str, CorpusInfo] = {
    "aesdd": CorpusInfo("AESDD", "Greek", 1),
    "ased": CorpusInfo("ASED", "Amharic", 1),
    "asvpesd": CorpusInfo("ASVP-ESD", "mixed", 1),
    "cafe": CorpusInfo("CaFE", "French", 3),
    "casia": CorpusInfo("CASIA", "Mandarin", 4),
    "cremad": CorpusInfo("CREMA-D", "English", 1, video=True),
    "emns": CorpusInfo("EMNS", "English", 1),
    "emodb": CorpusInfo("EmoDB", "German", 5),
    "emovdb": CorpusInfo("EmoV-DB", "English", 1),
    "emovo": CorpusInfo("EMOVO", "Italian", 6),
    "emozionalmente": CorpusInfo("Emozionalmente", "Italian", 1),
    "enterface": CorpusInfo("eNTERFACE", "English", 1, video=True),
    "esd": CorpusInfo("ESD", "English, Mandarin", 5),
    "iemocap": CorpusInfo("IEMOCAP", "English", 5),
    "jlcorpus": CorpusInfo("JL-Corpus", "English", 4),
    "m3ed": CorpusInfo("M3ED", "Mandarin", 1),
    "mead": CorpusInfo("MEAD", "English", 1, video=True),
    "meld": CorpusInfo("MELD", "English", 1, video=True),
    "mer2023": CorpusInfo("MER2023", "Mandarin", 1),
    "mesd": CorpusInfo("MESD", "Spanish", 1),
    "msppodcast": CorpusInfo("MSP-Podcast", "English", 1),
    "oreau": CorpusInfo("Oreau", "French", 1),
    "pavoque": CorpusInfo("PAVOQUE", "German", 1),
    "polish": CorpusInfo("Polish", "Polish", 5),
    "ravdess": CorpusInfo("RAVDESS", "English", 6, video=True),
    "resd": CorpusInfo("RESD", "Russian", 1),
    "savee": CorpusInfo("SAVEE", "English", 4, video=True),
    "shemo": CorpusInfo("ShEMO", "Persian", 1),
    "subesco": CorpusInfo("SUBESCO", "Bangla", 5),
    "tess": CorpusInfo("TESS", "English", 1),
    "turevdb": CorpusInfo("TurEV-DB", "Turkish", 1),
    "urdu": CorpusInfo("URDU", "Urdu", 1),
}


def _stem(wav: str) -> str:
    return PurePosixPath(wav).stem


def _iemocap(key: str, wav: str) -> str | None:
    m = re.match(r"^(Ses\d\d)[FM]_.*_([FM])\d+$", _stem(wav))
    return f"{m[1]}{m[2]}" if m else None


#: Naming rules: (key, wav) -> speaker, or None when the name does not follow the rule.
SPEAKER_RULES: dict[str, Callable[[str, str], str | None]] = {
    "iemocap": _iemocap,
    "savee": lambda k, w: _stem(w).split("_")[0] if "_" in _stem(w) else None,
    "ravdess": lambda k, w: _stem(w).split("-")[-1] if _stem(w).count("-") == 6 else None,
    "cremad": lambda k, w: _stem(w).split("_")[0] if re.match(r"^\d{4}_", _stem(w)) else None,
    "tess": lambda k, w: _stem(w).split("_")[0] if "_" in _stem(w) else None,
    "emodb": lambda k, w: _stem(w)[:2] if re.match(r"^\d\d", _stem(w)) else None,
    "enterface": lambda k, w: _stem(w).split("_")[0] if re.match(r"^s\d+_", _stem(w)) else None,
    "esd": lambda k, w: _stem(w).split("_")[0] if re.match(r"^\d{4}_", _stem(w)) else None,
    # MSP-Podcast's metadata names no speakers: the podcast (2nd field) stands in for them
    "msppodcast": lambda k, w: ("podcast_" + _stem(w).split("_")[1]) if _stem(w).count("_") == 2 else None,
}
#: Corpora whose naming rule is used even where EmoBox's stm names a speaker (see module doc).
RULE_FIRST = frozenset({"iemocap"})


def speaker_source(corpus: str, has_stm: bool) -> str:
    """Where ``corpus``'s speakers come from: ``"naming rule"``, ``"metadata (stm)"``, or
    ``"podcast id (proxy)"`` for MSP-Podcast without an stm."""
    if corpus in RULE_FIRST or (not has_stm and corpus in SPEAKER_RULES):
        return "podcast id (proxy)" if corpus == "msppodcast" else "naming rule"
    return "metadata (stm)" if has_stm else "none"


def _ravdess_video(rel: str) -> list[str]:
    p = PurePosixPath(rel)
    if not p.name.startswith("03-"):
        return []
    rest = p.stem[3:]
    actor = "Actor_" + p.stem.split("-")[-1]
    return [f"{actor}/{m}-{rest}.mp4" for m in ("01", "02")] + [f"{m}-{rest}.mp4" for m in ("01", "02")]


def _cremad_video(rel: str) -> list[str]:
    s = PurePosixPath(rel).stem
    return [f"VideoFlash/{s}.flv", f"VideoFlash/{s}.mp4", f"{s}.flv", f"{s}.mp4"]


def _savee_video(rel: str) -> list[str]:
    spk, _, code = PurePosixPath(rel).stem.partition("_")
    return [f"AudioVisualClip/{spk}/{code}.avi", f"{spk}/{code}.avi"]


def _mead_video(rel: str) -> list[str]:
    p = PurePosixPath(rel)
    if "audio" not in p.parts:
        return []
    parts = ["video/front" if x == "audio" else x for x in p.parts]
    return [str(PurePosixPath(*parts).with_suffix(".mp4"))]


#: Per audio-visual corpus: the record's path (relative to ``root``) -> candidate video paths
#: (relative to ``video_root``), first found wins. MELD's and eNTERFACE's records are the
#: videos themselves (their ``wav`` is an mp4 / avi).
VIDEO_RULES: dict[str, Callable[[str], list[str]]] = {
    "ravdess": _ravdess_video,
    "cremad": _cremad_video,
    "savee": _savee_video,
    "mead": _mead_video,
    "meld": lambda rel: [rel],
    "enterface": lambda rel: [rel],
}


@dataclass
class Record:
    """One EmoBox metadata line, as LiSER needs it."""

    key: str
    wav: str
    emo: str
    length: float | None
    sample_rate: int | None


def read_jsonl(path: Path) -> list[Record]:
    """The records of one EmoBox jsonl file; ValueError naming the file and line otherwise."""
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{i}: not a JSON line ({exc.msg})") from None
        missing = [k for k in ("key", "wav", "emo") if k not in r] if isinstance(r, dict) else ["key"]
        if missing:
            raise ValueError(f"{path}:{i}: record lacks {', '.join(missing)}")
        length = r.get("length")
        rate = r.get("sample_rate")
        out.append(Record(str(r["key"]), str(r["wav"]), str(r["emo"]),
                          float(length) if length is not None else None, int(rate) if rate else None))
    return out


def read_stm(path: Path) -> dict[str, str]:
    """key -> speaker from EmoBox's ``data.seg.wrd.stm`` (3rd column); {} if absent."""
    if not path.is_file():
        return {}
    out = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) > 2:
            out[parts[0]] = parts[2]
    return out


def corpus_folder(metadata: str, corpus: str) -> Path:
    """The folder holding ``corpus``'s metadata: ``metadata/<corpus>`` or ``metadata`` itself."""
    base = Path(metadata).expanduser()
    for cand in (base / corpus, base):
        if (cand / "label_map.json").is_file() and (cand / "fold_1").is_dir():
            return cand
    raise ValueError(
        f"metadata {metadata!r}: no EmoBox metadata of {corpus!r} (expected {corpus}/label_map.json and "
        f"{corpus}/fold_1/ under it: EmoBox's data/ folder)"
    )


def fold_files(folder: Path, corpus: str) -> dict[int, dict[str, Path]]:
    """fold -> {"train"|"test"|"valid": file} as EmoBox names them (``<corpus>_test_fold_K.jsonl``)."""
    out: dict[int, dict[str, Path]] = {}
    for d in folder.glob("fold_*"):
        m = re.fullmatch(r"fold_(\d+)", d.name)
        if not m or not d.is_dir():
            continue
        k = int(m[1])
        for part in ("train", "test", "valid"):
            f = d / f"{corpus}_{part}_fold_{k}.jsonl"
            if f.is_file():
                out.setdefault(k, {})[part] = f
    return dict(sorted(out.items()))


def resolve(root: Path, corpus: str, wav: str) -> Path:
    """A record's file under ``root``: its ``wav`` less EmoBox's ``downloads/<corpus>/`` prefix."""
    rel = wav.replace("\\", "/")
    for prefix in (f"downloads/{corpus}/", f"{corpus}/"):
        if rel.startswith(prefix):
            rel = rel[len(prefix):]
            break
    return root / rel


def _refuse_misspelt(path: Path, label_map: dict, canonical: dict) -> None:
    """A class the label map names that has no LiSER name but is one letter or two from one
    (``Angri``): its records would be left out as a class LiSER does not know, and the corpus
    would lose that emotion with a note only. Refused, naming the likely name; a class that is
    truly another emotion (EmoDB's ``Boredom``) is far from every name and left out as before."""
    import difflib

    from liser_core.labels import EMOTION_ALIASES, emotion_key

    names = [k for k in EMOTION_ALIASES if len(k) > 3]
    for code, name in label_map.items():
        if canonical.get(code) is None:
            close = difflib.get_close_matches(emotion_key(str(name)), names, n=1, cutoff=0.8)
            if close:
                raise ValueError(f"{path}: class {name!r} (code {code!r}) has no LiSER name, but is close to "
                                 f"{close[0]!r} ({EMOTION_ALIASES[close[0]]}): a misspelling would leave its records "
                                 "out as a class LiSER does not know; correct it (a class that is another emotion "
                                 "needs a name far from these)")


def emobox(
    corpus: str,
    metadata: str,
    root: str,
    seed: int = 0,
    modality: Literal["audio", "audiovisual"] = "audio",
    video_root: str | None = None,
    fold: int = 1,
    valid: Literal["unused", "train"] = "unused",
    label_fraction: float = 1.0,
    pool: Literal["disjoint_speakers", "remaining_clips"] = "disjoint_speakers",
    teacher_speakers: list[int | str] | None = None,
    teacher_fraction: float = 0.0,
    sample_rate: int | None = None,
    min_seconds: float = 0.5,
    max_seconds: float | None = 20.0,
    min_rms: float = 1e-4,
    fps: float = 5.0,
    num_frames: int | None = 8,
    frame_size: int | None = 160,
    expect_complete: bool = True,
) -> IndexedCorpus:
    """One EmoBox corpus (``corpus: iemocap``) from EmoBox's metadata (``metadata``: its
    ``data/`` folder) and the audio under ``root``; EmoBox's fold ``fold`` (see the module doc)."""
    if corpus not in CORPORA:
        from liser_core.errors import close_matches

        raise ValueError(f"corpus {corpus!r} is not an EmoBox corpus (close: {close_matches(corpus, CORPORA)})")
    if modality not in ("audio", "audiovisual"):
        raise ValueError(f"modality must be audio or audiovisual, not {modality!r}")
    if valid not in ("unused", "train"):
        raise ValueError(f"valid must be unused or train, not {valid!r}")
    if modality == "audiovisual" and corpus not in VIDEO_RULES:
        raise ValueError(
            f"modality audiovisual: LiSER knows no video of {corpus!r} (audio-visual EmoBox corpora: "
            f"{', '.join(sorted(VIDEO_RULES))}); use modality: audio (audio-only teachers)"
        )
    folder = corpus_folder(metadata, corpus)
    path = check_root(root, f"emobox {corpus}")
    vroot = check_root(video_root, f"emobox {corpus} video") if video_root else path
    folds = fold_files(folder, corpus)
    if fold not in folds:
        raise ValueError(f"fold must be one of {sorted(folds)} for {corpus} (EmoBox's folds under {folder}), got {fold}")
    files = folds[fold]
    for part in ("train", "test"):
        if part not in files:
            raise ValueError(f"{folder}/fold_{fold}: {corpus}_{part}_fold_{fold}.jsonl is missing")
    label_map_path = folder / "label_map.json"
    try:
        label_map = json.loads(label_map_path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{label_map_path}: not JSON ({exc.msg})") from None
    if not isinstance(label_map, dict):
        raise ValueError(f"{label_map_path}: expected an object code -> class")
    canonical = {code: canonical_emotion(str(name)) for code, name in label_map.items()}
    _refuse_misspelt(label_map_path, label_map, canonical)
    classes = {c for c in canonical.values() if c}
    space = LabelSpace(f"emobox_{corpus}", tuple(c for c in CANONICAL_EMOTIONS if c in classes))
    stm = read_stm(folder / "data.seg.wrd.stm")
    source = speaker_source(corpus, bool(stm))
    if source == "none":
        raise ValueError(
            f"{folder}: no data.seg.wrd.stm and no naming rule for {corpus}'s speakers: copy EmoBox's "
            "data.seg.wrd.stm next to its label_map.json"
        )
    rule = SPEAKER_RULES.get(corpus)
    spec = DecodeSpec(sample_rate, min_seconds, max_seconds, min_rms, fps, num_frames, frame_size)
    with_frames = modality == "audiovisual"

    parts: dict[str, list[Record]] = {p: read_jsonl(f) for p, f in files.items()}
    if valid == "train":
        parts["train"] = parts["train"] + parts.pop("valid", [])
    listed = {r.key for rs in parts.values() for r in rs}
    whole = folder / f"{corpus}.jsonl"
    parts["other"] = [r for r in read_jsonl(whole) if r.key not in listed] if whole.is_file() else []

    problems: list[IndexProblem] = []
    dropped: Counter[str] = Counter()
    seen: dict[str, str] = {}
    sources: dict[str, Source] = {}
    clips: dict[str, list[Clip]] = {}
    expected_test: list[tuple[str, str]] = []  # (key, speaker) of every test record
    unindexed_test: list[str] = []  # test records the metadata leaves unusable: missing from the scores, said
    notes: list[str] = []
    for part, records in parts.items():
        out = clips.setdefault(part, [])
        for r in records:
            spk = None
            if corpus in RULE_FIRST or not stm:
                spk = rule(r.key, r.wav) if rule else None
            spk = spk or stm.get(r.key)
            audio = resolve(path, corpus, r.wav)
            if spk is None:
                problems.append(IndexProblem(str(audio), "unparsed", f"record {r.key}: no speaker (stm or naming rule)"))
                unindexed_test += [r.key] if part == "test" else []
                continue
            spk = str(spk)
            if r.emo not in canonical:
                problems.append(IndexProblem(str(audio), "mislabeled",
                                             f"record {r.key}: emotion code {r.emo!r} not in {label_map_path.name}"))
                unindexed_test += [r.key] if part == "test" else []
                continue
            label = canonical[r.emo]
            if label is None:
                dropped[str(label_map[r.emo])] += 1
                continue
            if r.key in seen:
                if seen[r.key] != part:
                    raise ValueError(f"{folder}: record {r.key} is in both the {seen[r.key]} and the {part} file of fold {fold}")
                problems.append(IndexProblem(str(audio), "duplicate", f"record {r.key} is listed twice"))
                continue
            seen[r.key] = part
            if part == "test":
                expected_test.append((r.key, spk))
            if not audio.is_file():
                if part != "test":
                    problems.append(IndexProblem(str(audio), "missing_audio", f"record {r.key}: file not found"))
                continue
            video = None
            if with_frames:
                rel = audio.relative_to(path).as_posix()
                video = next((vroot / c for c in VIDEO_RULES[corpus](rel) if (vroot / c).is_file()), None)
                if video is None:
                    problems.append(IndexProblem(str(audio), "missing_video",
                                                 f"modality audiovisual: no video of {r.key} under {vroot}"))
                    continue
            clip = Clip(clip_id=r.key, audio=None, sample_rate=spec.sample_rate or r.sample_rate or 16000,
                        speaker=spk, label=label, path=str(audio), seconds_hint=r.length)
            out.append(clip)
            sources[r.key] = Source(str(audio), str(video) if video else None, spec)
    if dropped:
        notes.append(
            f"emobox {corpus}: classes with no LiSER name left out: "
            + ", ".join(f"{c} ({n} records)" for c, n in sorted(dropped.items()))
        )
    present = clips["train"] + clips["test"]
    if not present:
        raise ValueError(
            f"no {corpus} clips found under {str(path)!r}: none of fold {fold}'s {len(parts['train']) + len(parts['test'])} "
            f"records' files is there (a record's file is root / its wav less 'downloads/{corpus}/')"
        )
    opts = protocols.ProtocolOptions(
        fold=fold, label_fraction=label_fraction, pool=pool,
        teacher_speakers=None if teacher_speakers is None else tuple(str(s) for s in teacher_speakers),
        teacher_fraction=teacher_fraction, seed=seed,
    )
    opts.check(max(folds))
    carved, more = protocols.carve(clips["train"], opts, fold_salt=fold)
    notes += more
    test_spk = {c.speaker for c in clips["test"]} | {s for _, s in expected_test}
    shared = sorted(test_spk & {c.speaker for c in clips["train"]})
    if shared:
        notes.append(
            f"emobox {corpus} fold {fold}: EmoBox's test and train files share {len(shared)} speaker(s) "
            f"({', '.join(shared[:5])}{', ...' if len(shared) > 5 else ''}): this fold is not speaker-independent"
        )
    unused = carved.get("unused", []) + clips.get("valid", []) + clips.get("other", [])
    splits = {s: sorted(carved.get(s, []) if s != "test" else clips["test"], key=lambda c: c.clip_id) for s in SPLITS}
    description = (
        f"EmoBox {CORPORA[corpus].title} fold {fold} of {len(folds)}, label_fraction {label_fraction:g}, pool {pool}"
        f"; speakers from {source}"
    )
    plan = protocols.SplitPlan(
        splits=splits, description=description,
        speakers={s: sorted({c.speaker for c in cl}) for s, cl in splits.items()},
        notes=notes, unused=sorted(unused, key=lambda c: c.clip_id), fold=int(fold), folds=len(folds),
    )
    have = {c.clip_id for c in clips["test"]}
    have_spk = {c.speaker for c in clips["test"]}
    absent_spk = sorted({s for _, s in expected_test} - have_spk)
    gone = sorted(k for k, _ in expected_test if k not in have)
    if expect_complete and (absent_spk or gone):
        plan.missing["test"] = {"speakers": absent_spk, "clips": sorted({*gone, *unindexed_test})}
    else:
        if absent_spk:
            plan.subset["test"] = {"speakers": absent_spk, "expected": sorted({s for _, s in expected_test})}
        if unindexed_test:  # not a subset by choice: records its own metadata leaves unusable
            plan.missing["test"] = {"speakers": [], "clips": sorted(unindexed_test)}
    for n in notes:
        log.warning(n)
    speakers = sorted({c.speaker for cl in splits.values() for c in cl})
    result = IndexedCorpus(
        f"emobox_{corpus}", space, path, plan, sources, problems,
        speaker_info={s: {} for s in speakers},
        options={"corpus": corpus, "modality": modality, "speakers_from": source, "metadata": str(folder)},
    )
    log.log(logging.WARNING if problems else logging.INFO, "emobox %s: %s (%s)%s", corpus,
            ", ".join(f"{s} {len(splits[s])}" for s in SPLITS), description,
            f"; {len(problems)} records not indexed (liser data check lists them)" if problems else "")
    return result
