"""`liser bench --plan` for the RAVDESS and CREMA-D paper grids, on this machine, without the data.

The real corpora cannot be downloaded here, so this builds trees with their real file names
(every speech clip in the reference metadata shipped in liser_plugins/corpora/reference, as audio-video mp4s), where some clips are real
videos of the real clip's duration (a tone and a moving gradient: the probes the plan times) and
the others distinct stub files (counted, hashed, never decoded). The hub's WavLM-Base+ is replaced
by a randomly initialised WavLM of the *base* geometry (same size and cost). The counts are the
real grids'; the wall time is this machine's compute estimate for those models and durations.

    python benchmarks/paper/plan_on_fixtures.py [--root /tmp/liser-plan] [--grid ravdess|cremad]
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
META = REPO / "plugins" / "corpora" / "reference"  # shipped as liser_plugins.corpora.fixtures.REFERENCE


def rows(name: str) -> list[dict]:
    with open(META / name, newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def build(tree: Path, items: list[tuple[str, str, float, int]], real: set[str]) -> None:
    from liser_plugins.corpora import fixtures

    for i, (rel, _speaker, seconds, rate) in enumerate(items):
        path = tree / rel
        if path.exists():
            continue
        if rel in real:
            fixtures.write_video(path, seconds=seconds, size=(160, 120), rate=rate, freq=90 + (i % 97) * 5)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"stub: not decoded by --plan\n" + rel.encode())


def chosen(items, speakers_in_full: int = 3, per_speaker: int = 8) -> set[str]:
    """Real files: every clip of the first speakers, and each speaker's first clips by name."""
    by: dict[str, list[str]] = {}
    for rel, speaker, _, _ in sorted(items):
        by.setdefault(speaker, []).append(rel)
    keep = set()
    for k, (_, rels) in enumerate(sorted(by.items())):
        keep |= set(rels if k < speakers_in_full else rels[:per_speaker])
    return keep


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("/tmp/liser-plan"))
    ap.add_argument("--grid", choices=["ravdess", "cremad"], action="append")
    args = ap.parse_args()
    grids = args.grid or ["ravdess", "cremad"]
    root = args.root
    root.mkdir(parents=True, exist_ok=True)
    wavlm = root / "wavlm-base-geometry"
    if not (wavlm / "config.json").exists():
        from liser_plugins.hf_speech.tiny import save_tiny_model

        save_tiny_model(wavlm, geometry="base")
    trees = {
        "ravdess": (root / "RAVDESS", [
            (r["file"].replace("/03-", "/01-").replace(".wav", ".mp4"), r["actor"], float(r["seconds"]), int(r["sample_rate"]))
            for r in rows("ravdess_speech_audio.tsv")
        ]),
        "cremad": (root / "CREMA-D", [
            ("VideoFlash/" + Path(r["file"]).with_suffix(".mp4").name, r["actor"], float(r["seconds"]), int(r["sample_rate"]))
            for r in rows("cremad_audio.tsv")
        ]),
    }
    for grid in grids:
        tree, items = trees[grid]
        build(tree, items, chosen(items))
        text = (REPO / "benchmarks" / "paper" / f"{grid}.yaml").read_text()
        text = text.replace("microsoft/wavlm-base-plus", str(wavlm)).replace("recipe: ../../recipes/", f"recipe: {REPO / 'recipes'}/")
        (root / f"{grid}.yaml").write_text(text)
        print(f"== {grid}: {len(items)} clips in {tree} ==", flush=True)
        cmd = [sys.executable, "-m", "liser_tools.cli", "bench", str(root / f"{grid}.yaml"), "-o", str(root / f"out-{grid}"),
               f"data.options.root={tree}", "--plan"]
        rc = subprocess.call(cmd)
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
