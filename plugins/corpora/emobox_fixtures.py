"""Name-true EmoBox fixture trees: EmoBox's metadata as published, rebuilt from the excerpts in
``emobox_meta/`` (IEMOCAP and SAVEE whole; MELD and MSP-Podcast subsampled, see its README),
and placeholder or tiny real audio at the records' paths. For tests and demos; the ``emobox``
plugin never imports this.

Example::

    >>> recs = records("savee")                                   # doctest: +SKIP
    >>> write_metadata(tmp / "data", "savee", recs)               # doctest: +SKIP
    >>> touch_audio(tmp / "savee", "savee", recs)                 # doctest: +SKIP
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .emobox import resolve

#: The committed excerpts of EmoBox's metadata (MIT licence; see emobox_meta/README.md).
EMOBOX_META = Path(__file__).resolve().parent / "emobox_meta"


def records(corpus: str) -> list[dict[str, Any]]:
    """The committed records of ``corpus``: ``key``, ``wav``, ``sample_rate``, ``length``,
    ``emo``, ``spk`` (EmoBox's stm speaker, when it has one), ``folds`` (fold -> split file)."""
    with gzip.open(EMOBOX_META / corpus / "records.jsonl.gz", "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_metadata(data: str | Path, corpus: str, recs: Sequence[dict[str, Any]]) -> Path:
    """EmoBox's layout of ``corpus`` under ``data`` (its ``data/`` folder): ``<corpus>.jsonl``,
    ``fold_K/<corpus>_<split>_fold_K.jsonl`` (every split file a record is in, in key order),
    ``label_map.json`` and ``data.seg.wrd.stm`` (when the records name speakers). Returns
    ``data/<corpus>``. A fold's train file is written even when empty (MSP-Podcast's is not in
    the excerpt)."""
    folder = Path(data) / corpus
    folder.mkdir(parents=True, exist_ok=True)

    def line(r: dict[str, Any]) -> str:
        out = {"key": r["key"], "dataset": corpus, "wav": r["wav"], "type": "raw",
               "sample_rate": r["sample_rate"], "task": "category", "length": r["length"],
               "emo": r["emo"], "channel": 1}
        return json.dumps(out)

    (folder / f"{corpus}.jsonl").write_text("".join(line(r) + "\n" for r in recs))
    files: dict[tuple[str, str], list[str]] = {}
    for r in recs:
        for k, split in r["folds"].items():
            files.setdefault((k, split), []).append(line(r))
    folds = sorted({k for k, _ in files}, key=int)
    for k in folds:
        files.setdefault((k, "train"), [])
    for (k, split), lines in files.items():
        d = folder / f"fold_{k}"
        d.mkdir(exist_ok=True)
        (d / f"{corpus}_{split}_fold_{k}.jsonl").write_text("".join(x + "\n" for x in lines))
    (folder / "label_map.json").write_text((EMOBOX_META / corpus / "label_map.json").read_text())
    spk = [r for r in recs if r.get("spk")]
    if spk:
        (folder / "data.seg.wrd.stm").write_text("".join(
            f"{r['key']} 1 {r['spk']} 0 {r['length']} <id={r['key']},spk={r['spk']},emotion={r['emo']}> {r['emo']}\n"
            for r in spk
        ))
    return folder


def audio_paths(root: str | Path, corpus: str, recs: Iterable[dict[str, Any]]) -> dict[str, Path]:
    """key -> where the ``emobox`` plugin looks for the record's file under ``root``."""
    return {r["key"]: resolve(Path(root), corpus, r["wav"]) for r in recs}


def touch_audio(root: str | Path, corpus: str, recs: Iterable[dict[str, Any]]) -> dict[str, Path]:
    """An empty placeholder file at every record's path (enough for indexing and planning)."""
    paths = audio_paths(root, corpus, recs)
    for p in paths.values():
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")
    return paths


def write_stub_audio(paths: Iterable[Path], *, seconds: float = 0.6, rate: int = 8000) -> None:
    """A short, decodable, distinct PCM-16 wav at every path (whatever its extension: MELD's
    records are ``.mp4``; soundfile reads the bytes as wav). Each file has its own pitch and
    noise, so no two files are duplicates or near-duplicates by content. Bytes written directly."""
    import struct

    import numpy as np

    from .fixtures import tone

    n = int(round(seconds * rate))
    header = b"RIFF" + struct.pack("<I", 36 + 2 * n) + b"WAVEfmt " + struct.pack(
        "<IHHIIHH", 16, 1, 1, rate, rate * 2, 2, 16) + b"data" + struct.pack("<I", 2 * n)
    for i, p in enumerate(paths):
        x = tone(seconds, rate, 110.0 + (i * 37) % 600 + i / 97, seed=i)
        x = x + 0.05 * np.random.default_rng(i).standard_normal(n).astype(np.float32)
        samples = (np.clip(x, -1, 1) * 32767).astype("<i2")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(header + samples.tobytes())
