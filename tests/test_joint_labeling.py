"""One labeling pass for every teacher: each clip decoded once (JointDataset), each teacher fed
the batches its own loader would give, and the same outputs as labeling teacher by teacher."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from liser_cache.store import TeacherStore
from liser_core.data import BadClipError, Clip, ClipDataset, JointDataset
from liser_core.labels import RAVDESS8

BAD_VIDEO, BAD_FILE = "c03", "c05"


def unloaded_clips(n=11):
    return [Clip(f"c{i:02d}", None, 48000, f"s{i % 3}", RAVDESS8.classes[i % 8]) for i in range(n)]


class CountingCorpus:
    """Decodes clips from their ids (audio of 0.2-0.35 s at 48 kHz, 4 frames), counting calls."""

    def __init__(self):
        self.calls: list[tuple[str, bool]] = []

    def load(self, clip: Clip, frames: bool = True) -> Clip:
        self.calls.append((clip.clip_id, frames))
        i = int(clip.clip_id[1:])
        if clip.clip_id == BAD_FILE or (frames and clip.clip_id == BAD_VIDEO):
            raise BadClipError(clip.clip_id, f"/data/{clip.clip_id}.mp4", "unreadable")
        rng = np.random.default_rng(i)
        audio = rng.standard_normal(int(48000 * (0.2 + 0.05 * (i % 4)))).astype(np.float32)
        images = rng.integers(0, 255, (4, 8, 8), dtype=np.uint8) if frames else None
        return dataclasses.replace(clip, audio=audio, frames=images, fps=4.0)


SPECS = [(16000, False), (8000, True), (48000, False)]


def parts(clips, corpus, workers=0):
    return [ClipDataset(clips, RAVDESS8, rate, with_frames=fr, with_labels=False, loader=corpus.load, workers=workers)
            for rate, fr in SPECS]


@pytest.mark.parametrize("workers", [0, 2])
def test_each_part_gets_the_batches_its_own_loader_gives(workers):
    clips = unloaded_clips()
    alone = []
    for ds in parts(clips, CountingCorpus()):
        alone.append((list(ds.loader(4)), ds.skipped))
    joint_parts = parts(clips, CountingCorpus(), workers)
    joint = list(JointDataset(joint_parts).loader(4))
    assert len(joint) == len(alone[0][0])
    for k, (batches, skipped) in enumerate(alone):
        assert joint_parts[k].skipped == skipped
        for a, b in zip(batches, (row[k] for row in joint)):
            assert a.clip_ids == b.clip_ids and a.sample_rate == b.sample_rate
            for name in ("audio", "lengths", "labels", "index", "frames"):
                x, y = getattr(a, name), getattr(b, name)
                assert (x is None and y is None) or torch.equal(x, y), (k, name)
    assert set(joint_parts[1].skipped) == {BAD_VIDEO, BAD_FILE}  # the part with frames
    assert set(joint_parts[0].skipped) == {BAD_FILE}  # a failing video leaves the audio usable


def test_each_clip_is_decoded_once_for_all_parts():
    clips = unloaded_clips()
    corpus = CountingCorpus()
    list(JointDataset(parts(clips, corpus)).loader(4))
    # once each, with frames (the part that needs them goes first and the others reuse its audio);
    # again without frames only where the video failed and the audio may still serve
    expected = [(c.clip_id, True) for c in clips] + [(BAD_VIDEO, False), (BAD_FILE, False)]
    assert sorted(corpus.calls) == sorted(expected)
    separately = CountingCorpus()
    for ds in parts(clips, separately):
        list(ds.loader(4))
    assert len(separately.calls) == 3 * len(clips)


def test_a_part_decodes_only_the_clips_it_needs():
    clips = unloaded_clips()
    corpus = CountingCorpus()
    needs = [set(range(len(clips))), {0, 1, 2}, set()]  # the frames part: three clips; the last: none
    joint_parts = parts(clips, corpus)
    rows = list(JointDataset(joint_parts, needs).loader(4))
    served = [[cid for row in rows if row[k] is not None for cid in row[k].clip_ids] for k in range(3)]
    assert served[1] == ["c00", "c01", "c02"] and served[2] == []
    assert served[0] == [c.clip_id for c in clips if c.clip_id != BAD_FILE]
    assert sorted(c for c, fr in corpus.calls if fr) == ["c00", "c01", "c02"]  # no other video decoded
    assert joint_parts[1].skipped == {} and joint_parts[2].skipped == {}


def test_a_batch_keeps_the_rows_asked_for():
    clips = [c for c in unloaded_clips(8) if c.clip_id not in (BAD_VIDEO, BAD_FILE)]
    batch = next(iter(ClipDataset(clips, RAVDESS8, 16000, loader=CountingCorpus().load, with_frames=True).loader(6)))
    sub = batch.select([1, 4])
    assert sub.clip_ids == [batch.clip_ids[1], batch.clip_ids[4]]
    assert torch.equal(sub.index, batch.index[[1, 4]]) and torch.equal(sub.frames, batch.frames[[1, 4]])
    assert sub.audio.shape[1] == int(sub.lengths.max()) <= batch.audio.shape[1]
    for r, row in enumerate((1, 4)):
        n = int(batch.lengths[row])
        assert torch.equal(sub.audio[r, :n], batch.audio[row, :n])
    assert batch.select(list(range(len(batch)))) is batch


TWO_TEACHERS = """\
name: joint
data: {name: synth_av}
teachers:
  - {name: face_cnn, options: {channels: [4, 8], hidden: 16}}
  - {name: audio_cnn, options: {channels: [4, 8], hidden: 16}}
student: {name: logmel_cnn, options: {channels: [4, 8]}}
distil: {losses: [{name: kl}]}
"""


def test_labeling_teachers_together_gives_what_labeling_each_alone_does(tmp_path, liser_host):
    from liser_core.engine import Engine, prepare_config
    from liser_core.stages import label
    from liser_tools.testing import TINY_OVERRIDES

    recipe = tmp_path / "r.yaml"
    recipe.write_text(TWO_TEACHERS)
    cfg = prepare_config(recipe, [*TINY_OVERRIDES, f"run_dir={tmp_path / 'run'}"], liser_host)
    engine = Engine(cfg, liser_host)
    engine.validate()
    clips = label.distil_clips(engine)[0]
    models = [(k, t, None) for k, t in engine.run.teachers.items()]
    alone = {}
    for m in models:  # no store: each teacher on its own
        alone.update(label.label_clips(engine, clips, [m], None))
    # a store holding the first teacher's outputs for half the clips: together, the first labels
    # only the rest, the second all, and both read everything back
    first = models[0][0]
    store = TeacherStore(tmp_path / "store")
    label.label_clips(engine, clips[: len(clips) // 2], [models[0]], store)
    together = label.label_clips(engine, clips, models, store)
    assert engine.run.diagnostics["store"][first]["labeled"] == len(clips) - len(clips) // 2
    assert engine.run.diagnostics["store"][models[1][0]]["labeled"] == len(clips)
    for name in alone:
        lo, em, idx = together[name]
        assert torch.equal(idx, alone[name][2])
        assert torch.allclose(lo, alone[name][0], atol=1e-5) and torch.allclose(em, alone[name][1], atol=1e-5)


def _priority_clip(clip: Clip, frames: bool = True) -> Clip:
    import os

    return dataclasses.replace(clip, audio=np.full(800, os.getpriority(os.PRIO_PROCESS, 0), np.float32), sample_rate=8000)


def test_decoding_workers_yield_the_cpu_to_the_model_process():
    import os

    clips = unloaded_clips(4)
    ds = ClipDataset(clips, RAVDESS8, 8000, loader=_priority_clip)
    here = os.getpriority(os.PRIO_PROCESS, 0)
    (in_process,) = list(ds.loader(4, workers=0))
    (from_workers,) = list(ds.loader(4, workers=1))
    assert torch.all(in_process.audio == here)
    assert torch.all(from_workers.audio == min(19, here + 10))
    assert os.getpriority(os.PRIO_PROCESS, 0) == here  # the main process keeps its own


def test_one_teacher_under_two_names_labels_once(tmp_path, liser_host):
    from liser_core.engine import Engine, prepare_config
    from liser_core.stages import label
    from liser_tools.testing import TINY_OVERRIDES

    recipe = tmp_path / "r.yaml"
    recipe.write_text(TWO_TEACHERS)
    engine = Engine(prepare_config(recipe, [*TINY_OVERRIDES, f"run_dir={tmp_path / 'run'}"], liser_host), liser_host)
    engine.validate()
    clips = label.distil_clips(engine)[0]
    teacher = engine.run.teachers["audio_cnn"]
    out = label.label_clips(engine, clips, [("a", teacher, None), ("b", teacher, None)], TeacherStore(tmp_path / "s"))
    counts = {k: v["labeled"] for k, v in engine.run.diagnostics["store"].items()}
    assert counts == {"a": len(clips), "b": 0}
    assert all(torch.equal(x, y) for x, y in zip(out["a"], out["b"]))
