import hashlib

import numpy as np
import pytest

from liser_core.data import SPLITS, Corpus
from liser_plugins.synth_av import generator, synth_av

SMALL = dict(teacher_speakers=2, labeled_speakers=1, unlabeled_speakers=2, test_speakers=2,
             teacher_clips=1, labeled_clips=1, unlabeled_clips=1, test_clips=1, seconds=0.5, frames=3)


def digest(corpus) -> str:
    h = hashlib.sha256()
    for split in SPLITS:
        for c in corpus.split(split):
            h.update(c.clip_id.encode() + c.speaker.encode() + str(c.label).encode())
            h.update(c.audio.tobytes())
            h.update(c.frames.tobytes())
    return h.hexdigest()


def fresh(**kw):
    # bypass the in-process cache so determinism is tested on two real generations
    space, splits = generator.generate(
        seed=kw.get("seed", 0), seconds=0.5, frames=3,
        speakers={"teacher": 2, "labeled": 1, "unlabeled": 2, "test": 2},
        clips_per_emotion={"teacher": 1, "labeled": 1, "unlabeled": 1, "test": 1},
    )
    from liser_plugins.synth_av import SynthAV

    return SynthAV(space, splits, {})


def test_same_seed_same_bytes_other_seed_other_bytes():
    assert digest(fresh(seed=3)) == digest(fresh(seed=3))
    assert digest(fresh(seed=3)) != digest(fresh(seed=4))


def test_clips_do_not_depend_on_how_many_others_are_generated():
    none = {"teacher": 0, "labeled": 0, "unlabeled": 0}
    _, a = generator.generate(seed=1, seconds=0.5, frames=3, speakers={**none, "test": 1}, clips_per_emotion={"test": 1})
    _, b = generator.generate(seed=1, seconds=0.5, frames=3, speakers={**none, "test": 2}, clips_per_emotion={"test": 2})
    first = {c.clip_id: c for c in b["test"]}
    for c in a["test"]:
        assert np.array_equal(c.audio, first[c.clip_id].audio)
        assert np.array_equal(c.frames, first[c.clip_id].frames)


@pytest.mark.parametrize("classes, n", [("ravdess8", 8), ("cremad6", 6)])
def test_counts_labels_and_disjoint_speakers(classes, n):
    corpus = synth_av(classes=classes, **SMALL)
    assert isinstance(corpus, Corpus) and corpus.name == "synth_av"
    assert len(corpus.label_space) == n
    expected = {"teacher": 2 * n, "labeled": n, "unlabeled": 2 * n, "test": 2 * n}
    assert {s: len(corpus.split(s)) for s in SPLITS} == expected
    speakers = {s: {c.speaker for c in corpus.split(s)} for s in SPLITS}
    for a in SPLITS:
        for b in SPLITS:
            if a != b:
                assert not speakers[a] & speakers[b], (a, b)
    for s in SPLITS:
        labels = [c.label for c in corpus.split(s)]
        assert sorted(set(labels)) == sorted(corpus.label_space.classes)
    ids = [c.clip_id for s in SPLITS for c in corpus.split(s)]
    assert len(ids) == len(set(ids))


def test_signal_properties():
    corpus = synth_av(**SMALL)
    for c in corpus.split("test"):
        assert c.audio.dtype == np.float32 and c.audio.shape == (8000,) and c.sample_rate == 16000
        assert np.isfinite(c.audio).all() and np.abs(c.audio).max() <= 1.0
        assert 0.005 < float(np.sqrt(np.mean(c.audio**2))) < 0.6
        assert c.frames.dtype == np.uint8 and c.frames.shape == (3, 48, 48)
        assert c.frames.std() > 10  # a face, not a blank frame


def test_emotion_cues_reach_the_signal():
    # pitch: a happy voice is higher than a sad one for the same speaker (autocorrelation F0)
    sp = generator.make_speaker(0, "test", 0)

    def f0(emotion, rep):
        y = generator.synth_audio(sp, emotion, generator._rng("cue", emotion, rep), 16000, 1.0)
        y = y - y.mean()
        ac = np.correlate(y[2000:6000], y[2000:6000], "full")[3999:]
        lo, hi = 16000 // 500, 16000 // 60
        return 16000 / (lo + np.argmax(ac[lo:hi]))

    happy = np.median([f0("happy", r) for r in range(5)])
    sad = np.median([f0("sad", r) for r in range(5)])
    assert happy > sad * 1.1
    # face: a surprised mouth is open (darker lower face) compared with a calm one
    def lower_face(emotion):
        fr = generator.synth_frames(sp, emotion, generator._rng("face", emotion), 4)
        return fr[-1, 30:40, 16:32].mean()

    assert lower_face("surprised") < lower_face("calm") - 5


def test_label_fraction_carves_one_training_set_like_the_labeled_corpora():
    from liser_plugins.synth_av import synth_av

    sizes = dict(seconds=0.3, frames=2, teacher_speakers=1, labeled_speakers=2, unlabeled_speakers=6, test_speakers=1,
                 teacher_clips=1, unlabeled_clips=2, test_clips=1)
    full = synth_av(label_fraction=1.0, **sizes)
    assert len(full.split("labeled")) == 8 * 8 * 2 and not full.split("unlabeled")  # every training clip labeled
    part = synth_av(label_fraction=0.25, **sizes)
    labeled, pool = part.split("labeled"), part.split("unlabeled")
    lab_spk, pool_spk = {c.speaker for c in labeled}, {c.speaker for c in pool}
    assert len(lab_spk) == 2 and not lab_spk & pool_spk and len(lab_spk | pool_spk) == 8  # ceil(0.25 x 8) speakers
    assert {c.label for c in labeled} == set(part.label_space.classes)  # stratified: every class
    assert len(labeled) == 8 * round(0.25 * 16)  # 25 % of each class's 16 training clips
    assert len(labeled) + len(pool) + len(part.unused) == 128
    assert synth_av(**sizes).split("labeled")[0].speaker.startswith("lab")  # without it: as before
