"""``cross_corpus``: teacher, labeled, pool and test splits from different EmoBox corpora (name-true
fixture trees), classes aligned by name on the emobox4 preset, namespaced speakers, the duplicate
guard across corpora, and a tiny run end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from liser_plugins.corpora import emobox_fixtures as ef
from liser_plugins.corpora.cross import EMOBOX4, cross_corpus

# every k-th record: small trees that still have every fold split and class
EVERY = {"iemocap": 60, "savee": 8, "meld": 6}


def tree(base: Path) -> dict[str, dict]:
    parts = {}
    for c, k in EVERY.items():
        recs = ef.records(c)[::k]
        ef.write_metadata(base / "data", c, recs)
        ef.write_stub_audio(ef.audio_paths(base / c, c, recs).values())
        parts[c] = {"corpus": c, "metadata": str(base / "data"), "root": str(base / c), "min_seconds": 0.2}
    return parts


def recipe_parts(opts: dict[str, dict]) -> dict[str, dict]:
    iemocap = {"name": "emobox", "options": {**opts["iemocap"], "label_fraction": 0.5}}
    return {
        "teacher": {"name": "emobox", "split": "train", "options": opts["savee"]},
        "unlabeled": {"name": "emobox", "split": "train", "options": opts["meld"]},
        "labeled": iemocap,
        "test": iemocap,
    }


def test_splits_come_from_their_corpora_with_classes_by_name(tmp_path):
    parts = recipe_parts(tree(tmp_path))
    c = cross_corpus(parts)
    assert c.label_space == EMOBOX4
    assert {x.speaker.split("/")[0] for x in c.split("teacher")} == {"savee"}
    assert {x.speaker.split("/")[0] for x in c.split("unlabeled")} == {"meld"}
    assert {x.speaker for x in c.split("test")} == {"iemocap/Ses01F", "iemocap/Ses01M"}
    assert {x.label for s in ("teacher", "labeled", "test") for x in c.split(s)} <= set(EMOBOX4.classes)
    # SAVEE's fearful/disgust/surprised clips are left out of the teacher split, with a note
    savee = [r for r in ef.records("savee")[::8] if r["folds"]["1"] == "train"]
    kept = [r for r in savee if r["emo"] in ("a", "h", "n", "sa")]
    assert len(c.split("teacher")) == len(kept) and any("parts.teacher (savee)" in n for n in c.notes)
    x = c.split("test")[0]
    assert c.load(x).audio.size > 0 and c.source_files(x)[0].startswith(str(tmp_path / "iemocap"))
    # labeled and test are the same IEMOCAP fold: speaker-disjoint
    assert not {x.speaker for x in c.split("labeled")} & {x.speaker for x in c.split("test")}


def test_usage_errors(tmp_path):
    opts = tree(tmp_path)
    parts = recipe_parts(opts)
    with pytest.raises(ValueError, match="parts.test is required"):
        cross_corpus({k: v for k, v in parts.items() if k != "test"})
    with pytest.raises(ValueError, match="takes split 'all' of the corpus that gives the test split"):
        cross_corpus({**parts, "teacher": {**parts["test"], "split": "all"}})
    with pytest.raises(ValueError, match="merge"):
        cross_corpus(parts, merge={"calm": "contempt"})


@pytest.mark.slow
def test_a_copy_of_a_test_clip_in_another_corpus_is_found_and_a_tiny_run_ends(tmp_path):
    from liser_core import run

    opts = tree(tmp_path)
    parts = recipe_parts(opts)
    c = cross_corpus(parts)
    test_file = Path(c.source_files(c.split("test")[0])[0])
    pool_file = Path(c.source_files(c.split("unlabeled")[0])[0])
    shutil.copyfile(test_file, pool_file)  # a MELD pool record with an IEMOCAP test clip's bytes
    recipe = tmp_path / "cross.yaml"
    recipe.write_text(json.dumps({
        "name": "cross", "threads": 1,
        "data": {"name": "cross_corpus", "options": {"classes": "emobox4", "parts": parts}},
        "teachers": [{"name": "audio_cnn", "weight": 1.0, "fit": {"epochs": 1, "batch_size": 8},
                      "options": {"channels": [4, 8], "hidden": 16}}],
        "student": {"name": "logmel_cnn", "options": {"channels": [4, 8]}},
        "distil": {"epochs": 1, "batch_size": 8, "losses": [{"name": "kl"}, {"name": "ce", "weight": 0.5}]},
        "baseline": {"enabled": False},
        "loggers": {"run_dir": {"confusion_png": False}},
    }))
    ctx = run(recipe, [f"run_dir={tmp_path / 'run'}"])
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert "duplicates_dropped" in metrics["flags"]
    splits = json.loads((ctx.run_dir / "splits.json").read_text())
    assert any(str(pool_file.stem) in json.dumps(d) for d in splits["dropped_duplicates"])
