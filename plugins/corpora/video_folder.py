"""``video_folder``: any folder of videos with sound as an unlabeled audio-visual pool
(VoxCeleb2's ``dev/mp4``, a user's own recordings, ...).

Every ``.mp4 .flv .mkv .webm .avi .mov .m4v`` file under ``root`` (recursively) is one clip
of the ``unlabeled`` split (the only one). Its speaker comes from the folder structure
(``speaker_from``): ``top_folder`` (default) is the first folder under ``root`` (VoxCeleb2:
``idXXXXX/<video>/00001.mp4``), ``parent_folder`` the folder holding the file, ``file`` makes
each file its own speaker.

Indexing opens each container once (no decoding) for its streams and duration and keeps the
result in a manifest (CSV) under ``cache_dir`` (default ``$LISER_CACHE_DIR``, else
``$XDG_CACHE_HOME/liser`` or ``~/.cache/liser``), named after the folder's resolved path:
the next construction reads the manifest and only probes files that are new or whose size or
modification time changed, so a folder of a million clips is indexed once. Nothing is written
inside ``root``.

``load`` decodes with PyAV: audio resampled to ``sample_rate`` (mono), frames at ``fps``, made
``num_frames`` long and ``frame_size`` square. Files without an audio stream, without a video
stream (when frames are wanted), unreadable, outside ``min_seconds``/``max_seconds``, silent or
with NaN/Inf samples raise :class:`~liser_core.data.BadClipError` naming the file and reason.

To use such a folder as the pool of RAVDESS or CREMA-D, give those corpora
``unlabeled_from: <folder>`` rather than using this dataset alone (see docs/datasets.md).
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from liser_cache.identity import RACY_NS, stat_signature
from liser_cache.identity import cache_dir as default_cache_dir
from liser_core.data import Clip
from liser_core.labels import label_space as get_label_space

from . import decode, protocols
from ._base import IndexedCorpus, IndexProblem, check_root, walk_files
from .decode import DecodeSpec, Probe, Source

log = logging.getLogger("liser.corpora")

MANIFEST_VERSION = "2"  # 2: rows keyed by the whole stat signature (1: size and mtime only)
_FIELDS = ("path", "stat", "seconds", "audio", "video", "sample_rate", "fps", "error")
SPEAKER_FROM = ("top_folder", "parent_folder", "file")


def manifest_path(root: Path, cache_dir: str | Path | None) -> Path:
    """The manifest of ``root``: keyed by the folder's resolved path."""
    key = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    base = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    return base / "video_folder" / f"{root.resolve().name}-{key}.csv"


def _read_manifest(path: Path, root: Path) -> dict[str, tuple[tuple[int, ...], Probe]]:
    if not path.is_file():
        return {}
    try:
        with open(path, newline="") as f:
            head = f.readline().rstrip("\n").split("\t")
            if head[:2] != ["# liser video_folder manifest", MANIFEST_VERSION] or head[2:3] != [str(root.resolve())]:
                log.warning("video_folder: manifest %s is for another folder or version; re-indexing", path)
                return {}
            out = {}
            for r in csv.DictReader(f):
                probe = Probe(
                    seconds=float(r["seconds"]) if r["seconds"] else None,
                    audio=r["audio"] == "1",
                    video=r["video"] == "1",
                    sample_rate=int(r["sample_rate"]) if r["sample_rate"] else None,
                    fps=float(r["fps"]) if r["fps"] else None,
                    error=r["error"],
                )
                out[r["path"]] = (tuple(int(x) for x in r["stat"].split(":")), probe)
            return out
    except (OSError, ValueError, KeyError, csv.Error) as exc:
        log.warning("video_folder: manifest %s is unreadable (%s); re-indexing", path, exc)
        return {}


def _write_manifest(path: Path, root: Path, entries: dict[str, tuple[tuple[int, ...], Probe]]) -> None:
    buf = io.StringIO()
    buf.write(f"# liser video_folder manifest\t{MANIFEST_VERSION}\t{root.resolve()}\n")
    w = csv.writer(buf)
    w.writerow(_FIELDS)
    for rel in sorted(entries):
        sig, p = entries[rel]
        w.writerow([
            rel, ":".join(map(str, sig)), "" if p.seconds is None else f"{p.seconds:.4f}", int(p.audio), int(p.video),
            p.sample_rate or "", "" if p.fps is None else f"{p.fps:.4f}", p.error,
        ])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(buf.getvalue())
    tmp.replace(path)


def index_files(
    root: Path,
    *,
    extensions: Sequence[str] = decode.VIDEO_EXTS,
    cache_dir: str | Path | None = None,
    workers: int = 8,
) -> tuple[list[tuple[Path, Probe]], dict[str, Any]]:
    """Every video under ``root`` with its probe, from the manifest where the file is unchanged:
    the same stat signature (device, inode, size, mtime, ctime: an edit that puts the old mtime
    back still changes the ctime), as the digest cache keys files; a file changed within the
    last two seconds is probed and not remembered (its stat cannot vouch for it yet)."""
    t0 = time.perf_counter()
    mpath = manifest_path(root, cache_dir)
    cached = _read_manifest(mpath, root)
    files = walk_files(root, extensions)
    entries: dict[str, tuple[tuple[int, ...], Probe]] = {}
    todo: list[tuple[str, Path, tuple[int, ...]]] = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        sig = stat_signature(path.stat())
        hit = cached.get(rel)
        if hit is not None and hit[0] == sig:
            entries[rel] = hit
        else:
            todo.append((rel, path, sig))
    racy = set()
    if todo:
        with ThreadPoolExecutor(max(1, workers)) as ex:
            probes = list(ex.map(lambda t: decode.probe(t[1]), todo))
        now = time.time_ns()
        for (rel, _, sig), p in zip(todo, probes):
            entries[rel] = (sig, p)
            if now - max(sig[3], sig[4]) < RACY_NS:
                racy.add(rel)
    removed = len(set(cached) - set(entries))
    if todo or removed or not mpath.is_file():
        _write_manifest(mpath, root, {k: v for k, v in entries.items() if k not in racy})
    stats = {
        "files": len(files),
        "probed": len(todo),
        "cached": len(files) - len(todo),
        "removed": removed,
        "manifest": str(mpath),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    log.info("video_folder %s: %d files (%d probed, %d from the manifest %s)", root, len(files), len(todo), stats["cached"], mpath)
    return [(root / rel, entries[rel][1]) for rel in sorted(entries)], stats


def _speaker(rel: Path, speaker_from: str) -> str:
    parts = rel.parts
    if speaker_from == "file" or len(parts) == 1:
        return rel.with_suffix("").as_posix()
    return parts[0] if speaker_from == "top_folder" else rel.parent.as_posix()


def _known_problem(p: Probe, spec: DecodeSpec, with_frames: bool) -> str:
    if p.error:
        return p.error
    if not p.audio:
        return "no audio stream"
    if with_frames and not p.video:
        return "no video stream"
    if p.seconds is not None:
        if spec.max_seconds is not None and p.seconds > spec.max_seconds:
            return f"too long ({p.seconds:.1f} s > max_seconds {spec.max_seconds:g})"
        if p.seconds < spec.min_seconds:
            return f"too short ({p.seconds:.2f} s < min_seconds {spec.min_seconds:g})"
    return ""


def index_pool(
    root: str | Path,
    *,
    spec: DecodeSpec,
    with_frames: bool,
    id_prefix: str = "",
    speaker_from: str = "top_folder",
    extensions: Sequence[str] = decode.VIDEO_EXTS,
    cache_dir: str | None = None,
    workers: int = 8,
    **limits: Any,
) -> tuple[list[Clip], dict[str, Source], list[IndexProblem], dict[str, Any]]:
    """Unlabeled clips of a video folder (also what ``unlabeled_from`` uses)."""
    if speaker_from not in SPEAKER_FROM:
        raise ValueError(f"speaker_from must be one of {SPEAKER_FROM}, not {speaker_from!r}")
    if limits:  # min_seconds, max_seconds, min_rms, sample_rate given for the pool alone
        spec = DecodeSpec(**{**spec.__dict__, **limits})
    if spec.sample_rate is None:
        spec = DecodeSpec(**{**spec.__dict__, "sample_rate": 16000})
    path = check_root(str(root), "video_folder")
    probed, stats = index_files(path, extensions=extensions, cache_dir=cache_dir, workers=workers)
    clips, sources = [], {}
    for file, p in probed:
        rel = file.relative_to(path)
        clip_id = id_prefix + rel.with_suffix("").as_posix()
        clips.append(
            Clip(
                clip_id=clip_id,
                audio=None,
                sample_rate=spec.sample_rate,
                speaker=id_prefix + _speaker(rel, speaker_from),
                label=None,
                path=str(file),
                seconds_hint=p.seconds,
            )
        )
        sources[clip_id] = Source(
            str(file), str(file) if with_frames else None, spec, _known_problem(p, spec, with_frames)
        )
    stats["known_bad"] = sum(1 for s in sources.values() if s.known_problem)
    return clips, sources, [], stats


def video_folder(
    root: str,
    seed: int = 0,
    classes: str = "ravdess8",
    sample_rate: int = 16000,
    frames: bool = True,
    fps: float = 5.0,
    num_frames: int | None = 8,
    frame_size: int | None = 160,
    grey: bool = False,
    min_seconds: float = 1.0,
    max_seconds: float | None = 20.0,
    min_rms: float = 1e-4,
    speaker_from: Literal["top_folder", "parent_folder", "file"] = "top_folder",
    extensions: list[str] | None = None,
    cache_dir: str | None = None,
    workers: int = 8,
) -> IndexedCorpus:
    """Any folder of videos with sound, as an unlabeled audio-visual pool (unlabeled split only)."""
    del seed  # nothing is drawn
    spec = DecodeSpec(sample_rate, min_seconds, max_seconds, min_rms, fps, num_frames, frame_size, grey)
    path = check_root(root, "video_folder")
    clips, sources, problems, stats = index_pool(
        path, spec=spec, with_frames=frames, speaker_from=speaker_from,
        extensions=decode.VIDEO_EXTS if extensions is None else extensions,
        cache_dir=cache_dir, workers=workers,
    )
    plan = protocols.SplitPlan(
        splits={"teacher": [], "labeled": [], "unlabeled": clips, "test": []},
        description=f"unlabeled videos of {path}",
        speakers={"unlabeled": sorted({c.speaker for c in clips})},
    )
    corpus = IndexedCorpus("video_folder", get_label_space(classes), path, plan, sources, problems,
                           options={"frames": frames})
    corpus.pool_stats = stats
    return corpus
