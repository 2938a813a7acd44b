"""Rebuild this folder's metadata excerpts from a copy of EmoBox's ``data/`` folder.

    python plugins/corpora/emobox_meta/extract.py /path/to/EmoBox/data

Per corpus it writes ``<corpus>/records.jsonl.gz`` (one line per EmoBox record kept: its
``key``, ``wav``, ``sample_rate``, ``length``, ``emo``, the speaker of EmoBox's
``data.seg.wrd.stm`` when it has one, and per fold the split file the record is in) and copies
``label_map.json``. IEMOCAP and SAVEE are kept whole; MELD and MSP-Podcast are subsampled (whole
dialogues / podcasts, every split), see README.md. Not imported by LiSER.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from pathlib import Path

KEEP = {
    "iemocap": None,
    "savee": None,
    # MELD: dialogues 0-39 of train, 0-11 of valid and test (whole dialogues, every speaker in them)
    "meld": lambda k: int(re.match(r"meld-dia(\d+)_", k)[1]) < (40 if k.endswith("-train") else 12),
    # MSP-Podcast: every record of 12 podcasts with 5-15 records each (the podcast id is the
    # 2nd field of the file name): 6 of the test partition, 6 of the validation partition
    "msppodcast": lambda k: k.split("_")[1] in {"0037", "0071", "0113", "0115", "0120", "0181",
                                                 "0002", "0006", "0008", "0016", "0155", "0276"},
}


def main(data: Path, out: Path) -> None:
    for corpus, keep in KEEP.items():
        src = data / corpus
        spk = {}
        stm = src / "data.seg.wrd.stm"
        if stm.is_file():
            for line in stm.read_text().splitlines():
                parts = line.split()
                if len(parts) > 2:
                    spk[parts[0]] = parts[2]
        recs: dict[str, dict] = {}
        for fold_dir in sorted(src.glob("fold_*"), key=lambda p: int(p.name.split("_")[1])):
            k = int(fold_dir.name.split("_")[1])
            for f in sorted(fold_dir.glob(f"{corpus}_*_fold_{k}.jsonl")):
                split = f.name[len(corpus) + 1:].rsplit("_fold_", 1)[0]
                for line in f.read_text().splitlines():
                    if not line.strip():
                        continue
                    r = json.loads(line)
                    if keep is not None and not keep(r["key"]):
                        continue
                    rec = recs.setdefault(r["key"], {
                        "key": r["key"], "wav": r["wav"], "sample_rate": r.get("sample_rate"),
                        "length": round(float(r["length"]), 4), "emo": r["emo"], "folds": {},
                    })
                    if r["key"] in spk:
                        rec["spk"] = spk[r["key"]]
                    rec["folds"][str(k)] = split
        (out / corpus).mkdir(parents=True, exist_ok=True)
        with gzip.open(out / corpus / "records.jsonl.gz", "wt") as g:
            for key in sorted(recs):
                g.write(json.dumps(recs[key], sort_keys=True) + "\n")
        (out / corpus / "label_map.json").write_text((src / "label_map.json").read_text())
        print(corpus, len(recs))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).resolve().parent)
