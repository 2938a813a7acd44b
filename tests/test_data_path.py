"""Fast on real files: decode once (the decoded-clip cache), decode in parallel (workers), label
once per teacher and clip content, fit once per fit set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import liser_core
from liser_cache.clipcache import ClipCache
from liser_core.data import BadClipError, Clip, ClipDataset
from liser_core.labels import RAVDESS8
from liser_plugins.corpora import fixtures
from liser_plugins.corpora.ravdess import ravdess


def write_tree(root: Path, actors=(1, 2, 3, 4, 9), seconds=0.4, rate=48000) -> Path:
    for a in actors:
        for e in range(1, 9):
            fixtures.write_wav(root / f"Actor_{a:02d}/03-01-{e:02d}-01-01-01-{a:02d}.wav", rate=rate, seconds=seconds,
                               freq=110 + 23 * e + 3 * a, seed=100 * a + e)
    return root


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = write_tree(tmp_path_factory.mktemp("data") / "RAVDESS")
    (root / "Actor_02/03-01-03-01-01-01-02.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEjunk")  # a broken file
    return root


# -- the cache ------------------------------------------------------------------------------------


def test_cache_round_trip_hits_and_misses(tmp_path):
    cache = ClipCache(tmp_path / "c")
    key = ClipCache.key(["ab" * 32], {"rate": 16000})
    assert key != ClipCache.key(["ab" * 32], {"rate": 8000}) and key != ClipCache.key(["cd" * 32], {"rate": 16000})
    assert cache.get_audio(key, 16000) is None and cache.misses == 1
    audio = np.random.default_rng(0).standard_normal(1234).astype(np.float32)
    cache.put_audio(key, 16000, audio)
    assert np.array_equal(cache.get_audio(key, 16000), audio) and cache.hits == 1
    assert cache.get_audio(key, 8000) is None  # another rate is another entry
    frames = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    cache.put_frames(key, frames, 5.0)
    got, fps = cache.get_frames(key)
    assert np.array_equal(got, frames) and fps == 5.0
    cache.put_bad(key, False, "silent (RMS 0)", "/x.wav")
    bad = cache.get_bad(key, False)
    assert (bad.reason, bad.path) == ("silent (RMS 0)", "/x.wav") and cache.get_bad(key, True) is None


@pytest.mark.parametrize("damage", ["flip", "truncate", "empty", "garbage"])
def test_a_damaged_entry_is_never_used(tmp_path, damage, caplog):
    cache = ClipCache(tmp_path / "c")
    key = ClipCache.key(["ef" * 32], {})
    audio = np.linspace(-1, 1, 4000, dtype=np.float32)
    cache.put_audio(key, 16000, audio)
    (path,) = (tmp_path / "c").rglob("*.safetensors")
    data = bytearray(path.read_bytes())
    if damage == "flip":
        data[-100] ^= 0x40  # one bit of one sample
    elif damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "empty":
        data = b""
    else:
        data = b"\x80\x04not safetensors at all" * 10
    path.write_bytes(bytes(data))
    assert cache.get_audio(key, 16000) is None and cache.damaged == 1
    assert not path.exists() and "damaged" in caplog.text  # removed: the clip is decoded again


def test_least_recently_used_entries_go_first(tmp_path):
    import os
    import time

    cache = ClipCache(tmp_path / "c", max_bytes=10**9)
    keys = [ClipCache.key([f"{i:064x}"], {}) for i in range(6)]
    for i, k in enumerate(keys):
        cache.put_audio(k, 16000, np.zeros(10_000, np.float32))  # ~40 kB each
        path = next((tmp_path / "c").rglob(f"{k}-a16000.safetensors"))
        os.utime(path, ns=(time.time_ns() - (10 - i) * 10**9,) * 2)  # written 10 s .. 5 s ago
    assert cache.get_audio(keys[0], 16000) is not None  # the oldest, now used: most recent
    size = next((tmp_path / "c").rglob("*.safetensors")).stat().st_size
    cache.max_bytes = int(3.5 * size / 0.9)  # trimmed to 90 %: room for three
    cache.trim()
    left = [k for k in keys if cache.get_audio(k, 16000) is not None]
    assert left == [keys[0], keys[4], keys[5]]


def test_trimming_removes_only_the_caches_own_entries_and_a_foreign_cache_dir_is_refused(tmp_path, capsys):
    """The size limit deleted every non-hidden file of any two-letter folder under the cache
    (a user's `en/take1.wav`, `fr/notes1.txt`, a `00/README.txt`): only entries named as LiSER
    names them, in their key's folder, are counted and trimmed; a data.cache_dir holding other
    files is refused before the run writes anything."""
    from liser_tools.cli import main
    from liser_tools.testing import TINY_OVERRIDES, TINY_RECIPE

    root = tmp_path / "c"
    mine = {root / "en" / "take1.wav": b"RIFF user audio", root / "fr" / "notes1.txt": b"notes",
            root / "00" / "README.txt": b"read me", root / "ab" / ("ab" + "0" * 62 + "-x.txt"): b"entry-like"}
    for path, data in mine.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    cache = ClipCache(root, max_bytes=10**9)
    keys = [ClipCache.key([f"{i:064x}"], {}) for i in range(4)]
    for k in keys:
        cache.put_audio(k, 16000, np.zeros(10_000, np.float32))
    assert cache.size() == sum(p.stat().st_size for p in root.rglob("*-a16000.safetensors"))  # entries only
    cache.max_bytes = 1
    assert cache.trim() > 0
    assert not list(root.rglob("*.safetensors")) and all(p.read_bytes() == d for p, d in mine.items())
    assert sorted(cache.foreign(limit=10)) == sorted(str(p if p.parent.name in ("00", "ab") else p.parent) for p in mine)
    # a run refuses that folder as its cache before writing anything (exit 2)
    (tmp_path / "tiny.yaml").write_text(TINY_RECIPE)
    capsys.readouterr()
    assert main(["run", str(tmp_path / "tiny.yaml"), *TINY_OVERRIDES, f"run_dir={tmp_path / 'run'}",
                 f"data.cache_dir={root}"]) == 2
    err = capsys.readouterr().err
    assert "data.cache_dir: " in err and "holds files LiSER did not write" in err and not (tmp_path / "run").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ClipCache(empty).foreign() == []


def test_the_dataset_decodes_each_clip_once_and_remembers_bad_files(tree, tmp_path):
    corpus = ravdess(str(tree), expect_complete=False, min_seconds=0.2)
    clips = list(corpus.split("test")) + list(corpus.split("labeled"))[:6]
    calls = []

    def load(clip, frames=True):
        calls.append(clip.clip_id)
        return corpus.load(clip, frames=frames)

    from liser_cache.identity import digests_of

    keys = {c.clip_id: ClipCache.key(d, corpus.decode_signature(c)) for c, d in zip(clips, digests_of(clips, corpus))}
    cache = ClipCache(tmp_path / "cache")

    def dataset():
        return ClipDataset(clips, RAVDESS8, 16000, loader=load, cache=cache, cache_key=lambda c: keys.get(c.clip_id))

    first = [b for b in dataset().loader(4)]
    assert len(calls) == len(clips)
    again = dataset()
    second = [b for b in again.loader(4)]
    assert len(calls) == len(clips)  # nothing decoded: audio (resampled to 16 kHz) and the bad file from the cache
    for a, b in zip(first, second):
        assert torch.equal(a.audio, b.audio) and a.clip_ids == b.clip_ids
    assert len(first[0].audio[0]) == int(0.4 * 16000)
    if "03-01-03-01-01-01-02" in keys:
        assert again.skipped == {"03-01-03-01-01-01-02": again.skipped["03-01-03-01-01-01-02"]}


# -- workers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", ["skip", "raise"])
def test_workers_give_the_batches_of_the_main_process(tree, policy):
    corpus = ravdess(str(tree), expect_complete=False, min_seconds=0.2, fold=1)
    clips = [c for s in ("labeled", "unlabeled", "test", "teacher") for c in corpus.split(s)]
    assert any(c.clip_id == "03-01-03-01-01-01-02" for c in clips)

    def batches(workers):
        ds = ClipDataset(clips, RAVDESS8, 16000, loader=corpus.load, on_bad_clip=policy)
        out = list(ds.loader(5, shuffle=True, seed=7, workers=workers))
        return out, ds.skipped

    if policy == "raise":
        for workers in (0, 2):
            with pytest.raises(BadClipError, match="03-01-03-01-01-01-02.wav"):
                batches(workers)
        return
    (zero, skipped0), (two, skipped2) = batches(0), batches(2)
    assert skipped0 == skipped2 and list(skipped0) == ["03-01-03-01-01-01-02"]
    assert len(zero) == len(two)
    for a, b in zip(zero, two):
        assert a.clip_ids == b.clip_ids
        for field in ("audio", "lengths", "labels", "index"):
            assert torch.equal(getattr(a, field), getattr(b, field)), field


def test_clips_in_memory_never_start_workers():
    clips = [Clip(f"c{i}", np.ones(100, np.float32), 16000, "s", "happy") for i in range(4)]
    loader = ClipDataset(clips, RAVDESS8, 16000).loader(2, workers=3)
    assert loader.dl.num_workers == 0


# -- label once, fit once ---------------------------------------------------------------------------

RECIPE = """\
name: path
threads: 1
data: {{name: ravdess, options: {{root: {root}, min_seconds: 0.2, expect_complete: false, teacher_speakers: [9]}}}}
teachers: [{{name: audio_cnn, fit: {{epochs: 1, batch_size: 8}}, options: {{channels: [4, 8], hidden: 16}}}}]
student: {{name: logmel_cnn, options: {{channels: [4, 8]}}}}
distil: {{epochs: 1, batch_size: 8, losses: [{{name: kl}}, {{name: ce, weight: 0.5}}]}}
loggers: {{run_dir: {{confusion_png: false}}}}
"""


def test_a_grid_fits_each_teacher_once_per_fit_set_and_labels_each_clip_once(tmp_path, caplog):
    root = write_tree(tmp_path / "RAVDESS", actors=(1, 2, 3, 4, 5, 9, 10))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(root=root))
    store = tmp_path / "store"
    seen: set[str] = set()  # clips the teacher has labeled so far, over the whole grid

    def run(name, *overrides):
        ctx = liser_core.run(recipe, [f"run_dir={tmp_path / name}", f"store={store}", *overrides])
        diag = json.loads((tmp_path / name / "metrics.json").read_text())["diagnostics"]
        splits = json.loads((tmp_path / name / "splits.json").read_text())["splits"]
        used = {c["id"] for s in ("unlabeled", "labeled") for c in splits[s]["clips"]}
        test = {c["id"] for c in splits["test"]["clips"]}
        if diag["teacher_fits"]["audio_cnn"]["reused"]:  # the same teacher: only new clips are labeled
            assert diag["store"]["audio_cnn"]["labeled"] == len(used - seen)
            assert diag["store"]["audio_cnn"]["from_store"] == len(used & seen)
            assert diag["store_test"]["audio_cnn"]["labeled"] == len(test - seen - used)
        seen.update(used | test)
        return diag, ctx

    first, a = run("a", "data.options.label_fraction=0.5")
    assert first["teacher_fits"]["audio_cnn"]["reused"] is False
    assert first["store"]["audio_cnn"]["from_store"] == 0
    caplog.clear()
    second, b = run("b", "data.options.label_fraction=0.25", "seed=3")  # other fraction and seed, same fit set
    assert second["teacher_fits"]["audio_cnn"] == {**first["teacher_fits"]["audio_cnn"], "reused": True,
                                                   "fitted_in": str(tmp_path / "a"), "reused_from": str(next(store.glob("fitted/*")))}
    assert "fitted on this fit set before: weights reused" in caplog.text
    for k, v in a.teachers["audio_cnn"].state_dict().items():
        assert torch.equal(v, b.teachers["audio_cnn"].state_dict()[k]), k
    assert second["store"]["audio_cnn"]["from_store"] > 0 and second["store_test"]["audio_cnn"]["labeled"] == 0
    third, _ = run("c", "data.options.fold=2", "data.options.label_fraction=0.5")  # fold 2 tests actors 4 and 10
    assert third["teacher_fits"]["audio_cnn"]["reused"] is True  # actor 9 still fits it
    fourth, _ = run("d", "data.options.teacher_speakers=[5]", "data.options.label_fraction=0.5")
    assert fourth["teacher_fits"]["audio_cnn"]["reused"] is False  # another fit set: fitted again
    assert fourth["teacher_fits"]["audio_cnn"]["fit_key"] != first["teacher_fits"]["audio_cnn"]["fit_key"]
    assert fourth["store"]["audio_cnn"]["from_store"] == 0  # another teacher: its own labels


def test_decoding_options_are_part_of_the_store_key(tmp_path):
    root = write_tree(tmp_path / "RAVDESS", actors=(1, 2, 3, 9))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(root=root))
    store = tmp_path / "store"
    liser_core.run(recipe, [f"run_dir={tmp_path / 'a'}", f"store={store}", "data.options.label_fraction=0.5"])
    liser_core.run(recipe, [f"run_dir={tmp_path / 'b'}", f"store={store}", "data.options.label_fraction=0.5",
                            "data.options.sample_rate=8000"])
    diag = json.loads((tmp_path / "b" / "metrics.json").read_text())["diagnostics"]
    assert diag["store"]["audio_cnn"]["from_store"] == 0  # decoded otherwise: labeled again


def test_a_run_with_workers_and_the_cache_computes_what_one_without_does(tmp_path):
    root = write_tree(tmp_path / "RAVDESS", actors=(1, 2, 3, 9))
    recipe = tmp_path / "r.yaml"
    recipe.write_text(RECIPE.format(root=root))
    common = ["data.options.label_fraction=0.5", "distil.epochs=2"]
    plain = liser_core.run(recipe, [f"run_dir={tmp_path / 'a'}", "data.workers=0", "data.cache=false", *common])
    fast = liser_core.run(recipe, [f"run_dir={tmp_path / 'b'}", "data.workers=2", f"data.cache_dir={tmp_path / 'cache'}", *common])
    again = liser_core.run(recipe, [f"run_dir={tmp_path / 'c'}", "data.workers=2", f"data.cache_dir={tmp_path / 'cache'}", *common])
    for ctx in (fast, again):  # the second reads every clip from the cache
        assert ctx.results() == plain.results()
        for k, v in plain.student.state_dict().items():
            assert torch.equal(v, ctx.student.state_dict()[k]), k
    assert any((tmp_path / "cache").rglob("*-a16000.safetensors"))


# -- progress ------------------------------------------------------------------------------------------


def test_progress_is_plain_lines_off_a_terminal(caplog):
    from liser_common import progress as prog

    prog.configure(bars=False)
    with caplog.at_level("INFO", logger="liser.progress"):
        assert list(prog.progress(range(5), total=5, desc="labeling (fer)", unit="batch", every=0.0)) == list(range(5))
    lines = [r.getMessage() for r in caplog.records if r.name == "liser.progress"]
    assert len(lines) == 5 and lines[-1].startswith("labeling (fer): 5/5 batch (100%)") and "left" in lines[-1]
    assert prog.line("x", 30, 120, 10.0, "clip") == "x: 30/120 clip (25%), 3.0 clip/s, 0:30 left"
    assert not prog.bars_wanted(20)  # pytest's stderr is no terminal
