"""Protocols shared by RAVDESS and CREMA-D: folds, speaker disjointness, label fractions, pool
choice, teacher split, split files, mean ± std over folds."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from liser_common.metrics import mean_std
from liser_core.data import SPLITS, Clip
from liser_core.labels import RAVDESS8
from liser_plugins.corpora import cremad, fixtures, protocols
from liser_plugins.corpora.ravdess import ravdess

DATA = fixtures.REFERENCE
FRACTIONS = (0.01, 0.05, 0.1, 0.25, 1.0)


def _metadata(name: str) -> list[dict[str, str]]:
    path = DATA / name
    return fixtures.read_metadata(path)


@pytest.fixture(scope="module")
def ravdess_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ravdess")
    fixtures.touch_tree(root, [r["file"] for r in _metadata("ravdess_speech_audio.tsv")])
    return root


@pytest.fixture(scope="module")
def cremad_clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("cremad")
    fixtures.touch_tree(root, [r["file"] for r in _metadata("cremad_audio.tsv")])
    items, problems = cremad.index(root, "audio", cremad.DecodeSpec())
    assert not problems
    return [c for c, _ in items]


def _speakers(splits) -> dict[str, set[str]]:
    return {s: {c.speaker for c in splits[s]} for s in SPLITS}


def _assert_disjoint(splits, where: str) -> None:
    spk = _speakers(splits)
    for i, a in enumerate(SPLITS):
        for b in SPLITS[i + 1 :]:
            assert not spk[a] & spk[b], f"{where}: speakers {sorted(spk[a] & spk[b])} in {a} and {b}"


def test_fold_tables_match_the_published_lists():
    assert protocols.RAVDESS_FOLDS[1] == (1, 11, 20, 21)
    assert protocols.RAVDESS_FOLDS[6] == (6, 13, 17, 22)
    assert sorted(a for f in protocols.RAVDESS_FOLDS.values() for a in f) == list(range(1, 25))
    assert sorted(a for f in protocols.CREMAD_FOLDS.values() for a in f) == list(range(1001, 1092))
    assert [len(protocols.CREMAD_FOLDS[f]) for f in range(1, 6)] == [19, 18, 18, 18, 18]
    assert protocols.CREMAD_FOLDS[1][:3] == (1001, 1006, 1011) and protocols.cremad_fold(1091) == 1
    assert protocols.cremad_fold(1002) == 2 and protocols.ravdess_fold(24) == 4
    with pytest.raises(ValueError):
        protocols.cremad_fold(1092)


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_ravdess_every_fold_is_speaker_disjoint(ravdess_root, fraction):
    for fold in range(1, 7):
        corpus = ravdess(str(ravdess_root), fold=fold, label_fraction=fraction, teacher_fraction=0.2, seed=3)
        splits = {s: corpus.split(s) for s in SPLITS}
        _assert_disjoint(splits, f"fold {fold}, fraction {fraction}")
        assert {int(s) for s in _speakers(splits)["test"]} == set(protocols.RAVDESS_FOLDS[fold])
        assert all(splits[s] for s in ("teacher", "labeled", "test"))
        assert bool(splits["unlabeled"]) == (fraction < 1.0)


@pytest.mark.parametrize("fraction", FRACTIONS)
def test_cremad_every_fold_is_speaker_disjoint(cremad_clips, fraction):
    for fold in range(1, 6):
        opts = protocols.ProtocolOptions(fold=fold, label_fraction=fraction, teacher_fraction=0.2, seed=1)
        plan = protocols.fold_plan(
            cremad_clips, [str(a) for a in protocols.CREMAD_FOLDS[fold]], opts, description="t"
        )
        _assert_disjoint(plan.splits, f"fold {fold}, fraction {fraction}")
        assert {int(s) for s in _speakers(plan.splits)["test"]} == set(protocols.CREMAD_FOLDS[fold])
        total = sum(len(plan.splits[s]) for s in SPLITS)
        assert total + len(plan.unused) == len(cremad_clips)  # every clip in one split, or unused
        assert not {c.clip_id for c in plan.unused} & {c.clip_id for s in SPLITS for c in plan.splits[s]}
        if fraction == 1.0:
            assert total == len(cremad_clips)


def test_label_fraction_is_stratified_by_class(ravdess_root):
    train = Counter(c.label for c in ravdess(str(ravdess_root)).split("labeled"))  # fraction 1: all
    assert sum(train.values()) == 1200 and train["neutral"] == 80 and train["angry"] == 160
    for fraction in (0.05, 0.1, 0.25):
        for pool in protocols.POOL_CHOICES:
            corpus = ravdess(str(ravdess_root), label_fraction=fraction, pool=pool)
            labeled = Counter(c.label for c in corpus.split("labeled"))
            assert labeled == {k: round(fraction * n) for k, n in train.items()}, (fraction, pool, labeled)
    tiny = Counter(c.label for c in ravdess(str(ravdess_root), label_fraction=0.01).split("labeled"))
    assert set(tiny) == set(RAVDESS8.classes) and tiny["neutral"] == 1  # every class at least once


def test_label_fraction_draw_is_seeded(ravdess_root):
    def draw(seed, **kw):
        c = ravdess(str(ravdess_root), label_fraction=0.05, seed=seed, **kw)
        return [x.clip_id for x in c.split("labeled")], [x.clip_id for x in c.split("unlabeled")]

    assert draw(0) == draw(0)
    assert draw(0) != draw(1)
    assert draw(0, pool="remaining_clips") == draw(0, pool="remaining_clips")
    assert draw(0, pool="remaining_clips")[0] != draw(1, pool="remaining_clips")[0]


def test_disjoint_pool_uses_whole_speakers(ravdess_root):
    corpus = ravdess(str(ravdess_root), label_fraction=0.1)
    lab, unl = _speakers({s: corpus.split(s) for s in SPLITS})["labeled"], {c.speaker for c in corpus.split("unlabeled")}
    assert len(lab) == math.ceil(0.1 * 20) == 2
    assert len(unl) == 18 and len(corpus.split("unlabeled")) == 18 * 60
    sexes = {"male" if int(s) % 2 else "female" for s in lab}
    assert sexes == {"male", "female"}  # labeled speakers are drawn balanced by sex


def test_remaining_clips_pool_shares_speakers_and_says_so(ravdess_root, caplog):
    corpus = ravdess(str(ravdess_root), label_fraction=0.1, pool="remaining_clips")
    labeled, pool = corpus.split("labeled"), corpus.split("unlabeled")
    assert len(labeled) + len(pool) == 1200
    assert not {c.clip_id for c in labeled} & {c.clip_id for c in pool}
    assert {c.speaker for c in labeled} & {c.speaker for c in pool}
    assert any("same speakers" in n for n in corpus.protocol.notes)
    assert "same speakers" in caplog.text
    assert not {c.speaker for c in pool} & {c.speaker for c in corpus.split("test")}


def test_teacher_speakers_explicit_and_checked(ravdess_root):
    corpus = ravdess(str(ravdess_root), teacher_speakers=[2, "Actor_04", "06"], label_fraction=0.25)
    assert {c.speaker for c in corpus.split("teacher")} == {"02", "04", "06"}
    assert len(corpus.split("teacher")) == 180
    _assert_disjoint({s: corpus.split(s) for s in SPLITS}, "explicit teacher speakers")
    with pytest.raises(ValueError, match="not training speakers"):
        ravdess(str(ravdess_root), teacher_speakers=[1])  # actor 1 is a test speaker of fold 1
    with pytest.raises(ValueError, match="not both"):
        ravdess(str(ravdess_root), teacher_speakers=[2], teacher_fraction=0.1)


@pytest.mark.parametrize(
    "opts, match",
    [
        ({"fold": 7}, "fold must be 1-6"),
        ({"label_fraction": 0.0}, "label_fraction"),
        ({"label_fraction": 1.5}, "label_fraction"),
        ({"teacher_fraction": 1.0}, "teacher_fraction"),
        ({"pool": "sometimes"}, "pool must be"),
    ],
)
def test_bad_protocol_options_are_refused(ravdess_root, opts, match):
    with pytest.raises(ValueError, match=match):
        ravdess(str(ravdess_root), **opts)


def test_protocol_options_fail_as_config_errors_with_the_key(ravdess_root, liser_host):
    from liser_core import ConfigError
    from liser_core.engine import build_component

    with pytest.raises(ConfigError) as e:
        build_component(liser_host.registries.dataset, "ravdess", {"root": str(ravdess_root), "fold": 9},
                        "data.options", seed=0)
    assert e.value.key == "data.options" and "fold must be 1-6" in str(e.value)


def test_split_file_assigns_by_id_path_or_stem_and_carves_train(ravdess_root, tmp_path):
    rows = ["clip,split"]
    rows += [f"Actor_01/03-01-0{e}-01-01-01-01.wav,test" for e in range(1, 9)]  # by relative path
    rows += [f"03-01-0{e}-01-01-01-02,labeled" for e in range(1, 9)]  # by clip id
    rows += [f"03-01-0{e}-01-01-02-03.wav,TRAIN" for e in range(1, 9)]  # by file name
    rows += [f"03-01-0{e}-01-01-02-04,train" for e in range(1, 9)]
    rows += ["99-99-99-99-99-99-99,test"]  # matches nothing
    f = tmp_path / "split.csv"
    f.write_text("\n".join(rows) + "\n")
    corpus = ravdess(str(ravdess_root), split_file=str(f), label_fraction=0.5, pool="remaining_clips")
    assert {c.speaker for c in corpus.split("test")} == {"01"} and len(corpus.split("test")) == 8
    labeled = corpus.split("labeled")
    assert {c.clip_id for c in labeled} >= {f"03-01-0{e}-01-01-01-02" for e in range(1, 9)}
    assert len(labeled) == 8 + 8 and len(corpus.split("unlabeled")) == 8  # 16 train clips, half labeled
    assert any("match no clip" in n for n in corpus.protocol.notes)
    tsv = tmp_path / "split.tsv"
    tsv.write_text("03-01-01-01-01-01-01\ttest\n03-01-01-01-01-01-02\tlabeled\n")
    assert len(ravdess(str(ravdess_root), split_file=str(tsv)).split("test")) == 1
    bad = tmp_path / "bad.csv"
    bad.write_text("03-01-01-01-01-01-01,holdout\n")
    with pytest.raises(ValueError, match="unknown split 'holdout'"):
        ravdess(str(ravdess_root), split_file=str(bad))
    # valid/dev rows were trained on as labeled clips, silently: refused, naming how LiSER validates
    bad.write_text("03-01-01-01-01-01-01,test\n03-01-02-01-01-01-02,valid\n")
    with pytest.raises(ValueError, match=r"row 2: split 'valid' is a validation split, .* \(validation.source"):
        ravdess(str(ravdess_root), split_file=str(bad))
    # train rows that match no clip are missing training clips (only test and labeled rows were)
    bad.write_text("03-01-01-01-01-01-01,test\n99-99-99-99-99-99-99,train\n")
    assert ravdess(str(ravdess_root), split_file=str(bad)).missing() == {
        "train": {"speakers": [], "clips": ["99-99-99-99-99-99-99"]}}


def test_summarise_folds_reuses_mean_std():
    folds = [{"accuracy": 0.5, "uar": 0.4, "num_clips": 240, "card": {}}, {"accuracy": 0.7, "uar": 0.6, "num_clips": 240}]
    s = protocols.summarise_folds(folds)
    assert set(s) == {"accuracy", "uar", "num_clips"}
    assert (s["uar"]["mean"], s["uar"]["std"]) == mean_std([0.4, 0.6])
    assert s["accuracy"]["n"] == 2 and s["num_clips"]["std"] == 0.0
    assert protocols.format_summary(s) == "accuracy 0.600 ± 0.141  uar 0.500 ± 0.141"
    assert protocols.summarise_folds([]) == {}


def test_carve_refuses_a_disjoint_pool_without_enough_speakers():
    clips = [Clip(f"c{i}", None, 16000, "a", "happy") for i in range(4)]
    with pytest.raises(ValueError, match="at least 2 training speakers"):
        protocols.carve(clips, protocols.ProtocolOptions(label_fraction=0.5), fold_salt=1)
    parts, notes = protocols.carve(
        clips, protocols.ProtocolOptions(label_fraction=0.5, pool="remaining_clips"), fold_salt=1
    )
    assert len(parts["labeled"]) == 2 and len(parts["unlabeled"]) == 2 and notes
