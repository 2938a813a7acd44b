"""The teacher-output store: fingerprints, clip keys, round trips, resuming, crashes, concurrency.

Some tests run this file as a child process (``python tests/test_store.py MODE ...``): a
teacher rebuilt elsewhere, a writer killed mid-shard, two writers at once. Writer children
skip ``liser_core/__init__`` (it imports the engine and torchmetrics, seconds the store does
not need), so this module imports only light parts of ``liser_core`` at the top.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from liser_cache import store as store_mod
from liser_cache.store import TeacherStore, clip_key, teacher_fingerprint, teacher_meta
from liser_core import checkpoint
from liser_core.data import Clip, ClipDataset
from liser_core.labels import RAVDESS8, LabelSpace

C, D = 8, 16
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FP = "f" * 64  # a fingerprint for tests that need no teacher
TINY = {"channels": [4, 8], "hidden": 16}


# -- helpers, shared with the child processes ----------------------------------------------------
def make_keys(n: int) -> list[str]:
    return [hashlib.sha256(f"clip{i}".encode()).hexdigest() for i in range(n)]


def fake(key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A deterministic 'teacher output' for a key: what any process would compute for it."""
    g = torch.Generator().manual_seed(int(key[:15], 16))
    return torch.randn(C, generator=g) * 5, torch.randn(D, generator=g)


def label_pass(store: TeacherStore, keys, *, fp: str = FP, shard_size: int = 4, embeddings=True) -> int:
    """What a label stage does: label the missing clips only. Returns how many it labeled."""
    todo = store.missing(fp, keys, embeddings=embeddings)
    with store.writer(fp, shard_size=shard_size) as w:
        for i in todo:
            lo, em = fake(keys[i])
            w.add(keys[i], lo, em if embeddings else None)
    return len(todo)


def expected(keys) -> tuple[torch.Tensor, torch.Tensor]:
    outs = [fake(k) for k in keys]
    return torch.stack([o[0] for o in outs]), torch.stack([o[1] for o in outs])


def teacher_registry():
    from liser_core._registry import Registry
    from liser_plugins.cnn_teachers import AudioCNNTeacher

    registry = Registry("teacher")
    registry.register("audio_cnn", AudioCNNTeacher)
    return registry


def build_teacher(seed: int = 0, **options):
    """A tiny audio_cnn teacher built as the engine builds one (``liser_spec`` recorded)."""
    from liser_core.engine import build_component

    torch.manual_seed(seed)
    return build_component(teacher_registry(), "audio_cnn", {**TINY, **options}, label_space=RAVDESS8)


def shard_files(root: Path, fp: str = FP) -> list[Path]:
    return sorted((root / fp).glob("shard-*.safetensors"))


# a writer child: liser_core as a bare namespace, so that importing liser_cache.store runs no
# liser_core/__init__ (which loads the engine, plugins and torchmetrics)
_LIGHT = (
    "import runpy, sys, types; pkg = types.ModuleType('liser_core'); pkg.__path__ = [{pkg!r}]; "
    "sys.modules['liser_core'] = pkg; runpy.run_path({file!r}, run_name='__main__')"
)


def run_child(*args, light: bool = True) -> subprocess.Popen:
    here = os.path.abspath(__file__)
    if light:
        cmd = ["-c", _LIGHT.format(pkg=os.path.join(REPO, "liser_core"), file=here)]
    else:
        cmd = [here]
    return subprocess.Popen(
        [sys.executable, *cmd, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO
    )


def _child(argv: list[str]) -> None:
    mode = argv[0]
    if mode == "killed":  # write one full shard, queue two more rows, then hang inside the rename
        store, keys = TeacherStore(argv[1]), make_keys(10)
        w = store.writer(FP, shard_size=4)
        for k in keys[:6]:
            w.add(k, *fake(k))
        real_replace = os.replace

        def hang(src, dst):
            if str(src).endswith(".tmp"):
                print("renaming", flush=True)
                time.sleep(60)
            real_replace(src, dst)

        os.replace = hang
        w.flush()
    elif mode == "fingerprint":
        print(teacher_fingerprint(build_teacher(), sample_rate=16000))
    elif mode == "concurrent":
        store, keys = TeacherStore(argv[1]), make_keys(int(argv[4]))
        start, stop = int(argv[2]), int(argv[3])
        (Path(argv[1]) / f"ready-{os.getpid()}").touch()
        while not (Path(argv[1]) / "go").exists():
            time.sleep(0.005)
        with store.writer(FP, shard_size=3) as w:
            for k in keys[start:stop]:
                if not store.missing(FP, [k]):  # the other writer has it already
                    continue
                w.add(k, *fake(k))
        print(len(w.shards_written))


# -- fingerprints --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def children(tmp_path_factory):
    """Child processes started together (they take seconds to start): one builds a teacher
    and prints its fingerprint; two label overlapping parts of 60 clips into one store at once,
    released by a shared barrier file, and print how many shards each wrote."""
    root = tmp_path_factory.mktemp("concurrent")
    teacher = run_child("fingerprint", light=False)
    writers = [run_child("concurrent", root, a, b, 60) for a, b in ((0, 40), (20, 60))]
    deadline = time.time() + 60
    while len(list(root.glob("ready-*"))) < 2 and time.time() < deadline:
        time.sleep(0.01)
    (root / "go").touch()
    outputs = []
    for child in [teacher, *writers]:
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        outputs.append(out.strip())
    return root, outputs


def test_fingerprint_is_the_same_in_another_process(children):
    _, (there, *_) = children
    assert there == teacher_fingerprint(build_teacher(), sample_rate=16000)


def test_fingerprint_changes_with_what_defines_the_outputs():
    base = build_teacher()
    fp = teacher_fingerprint(base, sample_rate=16000)
    assert len(fp) == 64

    same = [
        build_teacher(),  # rebuilt with the same seed: same weights
        copy.deepcopy(base).train(),  # mode is not an output property
    ]
    carded = copy.deepcopy(base)
    carded.card = type(base.card)(**{**base.card.to_dict(), "source": "fitted in run x", "trained_on": ("a",)})
    same.append(carded)
    for t in same:
        assert teacher_fingerprint(t, sample_rate=16000) == fp

    options = build_teacher(dropout=0.5)  # same weights, different options
    assert dict(options.state_dict()).keys() == dict(base.state_dict()).keys()
    assert all(torch.equal(a, b) for a, b in zip(options.state_dict().values(), base.state_dict().values()))
    weights = copy.deepcopy(base)
    with torch.no_grad():
        next(weights.parameters()).view(-1)[0] += 1e-6
    buffers = copy.deepcopy(base)
    next(b for n, b in buffers.named_buffers() if n.endswith("running_mean")).add_(1e-6)
    space = copy.deepcopy(base)
    space.label_space = LabelSpace("other", RAVDESS8.classes)
    frames = copy.deepcopy(base)
    frames.needs_frames = True
    changed = {
        "options": teacher_fingerprint(options, sample_rate=16000),
        "weights": teacher_fingerprint(weights, sample_rate=16000),
        "buffers": teacher_fingerprint(buffers, sample_rate=16000),
        "label space": teacher_fingerprint(space, sample_rate=16000),
        "frames": teacher_fingerprint(frames, sample_rate=16000),
        "sample rate": teacher_fingerprint(base, sample_rate=8000),
        "extra": teacher_fingerprint(base, sample_rate=16000, extra={"decode": {"max_seconds": 6}}),
    }
    assert fp not in changed.values()
    assert len(set(changed.values())) == len(changed)


def test_fingerprint_survives_a_checkpoint_round_trip(tmp_path):
    teacher = build_teacher()
    checkpoint.save_component(
        teacher, tmp_path / "t", kind="teacher", name="audio_cnn", options=teacher.liser_spec["options"],
        label_space=RAVDESS8,
    )
    loaded = checkpoint.load_component(tmp_path / "t", teacher_registry(), kind="teacher")
    assert teacher_fingerprint(loaded, sample_rate=16000) == teacher_fingerprint(teacher, sample_rate=16000)
    meta = teacher_meta(loaded, sample_rate=16000)
    assert meta["teacher"] == {"name": "audio_cnn", "options": TINY}
    assert meta["label_space"]["classes"] == list(RAVDESS8.classes)


def test_options_that_are_not_json_are_refused():
    teacher = build_teacher()
    teacher.liser_spec = {"name": "audio_cnn", "options": {"fn": print}}
    with pytest.raises(TypeError, match="JSON values"):
        teacher_fingerprint(teacher, sample_rate=16000)


# -- clip keys -----------------------------------------------------------------------------------
def test_clip_key_depends_on_content_not_path(tmp_path):
    data = os.urandom(4096)
    (tmp_path / "a.wav").write_bytes(data)
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.wav").write_bytes(data)
    a = Clip("a", None, 16000, "s1", path=str(tmp_path / "a.wav"))
    b = Clip("b", None, 16000, "s2", label="happy", path=str(tmp_path / "sub" / "b.wav"))
    assert clip_key(a) == clip_key(b)
    changed = bytearray(data)
    changed[1000] ^= 1
    (tmp_path / "sub" / "b.wav").write_bytes(bytes(changed))
    assert clip_key(a) != clip_key(b)
    assert clip_key(a) != clip_key(Clip("a", None, 8000, "s1", path=a.path))  # declared rate counts
    assert clip_key(a) != clip_key(a, sources=[tmp_path / "sub" / "b.wav"])  # e.g. its video

    audio = np.random.default_rng(0).standard_normal(800).astype(np.float32)
    x = Clip("x", audio, 16000, "s1", path="/somewhere/x.wav")
    y = Clip("y", audio.astype(np.float64), 16000, "s9", label="sad", path="/elsewhere/y.wav")
    assert clip_key(x) == clip_key(y)  # same samples: same key, whatever the id, label or path
    audio2 = audio.copy()
    audio2[400] += 1e-3
    assert clip_key(x) != clip_key(Clip("x", audio2, 16000, "s1"))
    assert clip_key(x) != clip_key(Clip("x", audio, 8000, "s1"))
    frames = np.zeros((2, 4, 4), np.uint8)
    with_frames = clip_key(Clip("x", audio, 16000, "s1", frames=frames))
    frames[1, 2, 3] = 1
    assert with_frames != clip_key(x)
    assert with_frames != clip_key(Clip("x", audio, 16000, "s1", frames=frames))
    with pytest.raises(ValueError, match="nothing to key it by"):
        clip_key(Clip("z", None, 16000, "s1"))


# -- writing and reading -------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_round_trip(tmp_path, dtype):
    store, keys = TeacherStore(tmp_path, dtype), make_keys(11)
    assert label_pass(store, keys) == 11
    assert len(shard_files(tmp_path)) == 3  # 4 + 4 + 3
    order = keys[::-1] + keys[:2]  # any order, repeats allowed
    lo, em = TeacherStore(tmp_path, dtype).load(FP, order)
    ref_lo, ref_em = expected(order)
    assert lo.dtype == em.dtype == torch.float32
    assert lo.shape == (13, C) and em.shape == (13, D)
    if dtype == "float32":
        assert torch.equal(lo, ref_lo) and torch.equal(em, ref_em)
    else:
        assert torch.equal(lo, ref_lo.half().float()) and torch.equal(em, ref_em.half().float())
        torch.testing.assert_close(lo, ref_lo, rtol=1e-3, atol=1e-3)
        assert not torch.equal(lo, ref_lo)  # it really is stored at half precision
    info = store.info(FP)
    assert (info["clips"], info["rows"], info["shards"], info["dtypes"]) == (11, 11, 3, {dtype: 11})
    assert info["bytes"] == sum(p.stat().st_size for p in shard_files(tmp_path))
    assert store.stats() == {"fingerprints": 1, "clips": 11, "shards": 3, "bytes": info["bytes"]}


def test_shard_layout_is_plain_safetensors(tmp_path):
    from safetensors import safe_open

    keys = make_keys(3)
    label_pass(TeacherStore(tmp_path), keys)
    (path,) = shard_files(tmp_path)
    with safe_open(str(path), framework="pt") as f:
        assert json.loads(f.metadata()["keys"]) == keys
        assert torch.equal(f.get_tensor("logits"), expected(keys)[0])
        assert f.get_tensor("embeddings").shape == (3, D)
    index = json.loads((tmp_path / FP / "index.json").read_text())
    assert index["shards"][path.name]["keys"] == keys


def test_second_pass_labels_nothing(tmp_path):
    store, keys = TeacherStore(tmp_path), make_keys(9)
    assert label_pass(store, keys) == 9
    before = shard_files(tmp_path)
    assert label_pass(store, keys) == 0
    assert label_pass(TeacherStore(tmp_path), keys) == 0  # nor does another process
    assert shard_files(tmp_path) == before
    assert label_pass(store, keys + make_keys(12)[9:]) == 3  # only the new clips


def test_load_names_the_first_missing_key(tmp_path):
    store, keys = TeacherStore(tmp_path), make_keys(6)
    label_pass(store, keys[:4])
    with pytest.raises(KeyError, match=rf"{keys[4]}.*position 2.*2 of 4"):
        store.load(FP, [keys[0], keys[1], keys[4], keys[5]])
    with pytest.raises(KeyError):
        store.load("e" * 64, keys[:1])


def test_load_opens_only_the_shards_it_needs(tmp_path, monkeypatch):
    store, keys = TeacherStore(tmp_path), make_keys(12)
    label_pass(store, keys)  # shards of keys 0-3, 4-7, 8-11
    opened = []
    real = store_mod.safe_open
    monkeypatch.setattr(store_mod, "safe_open", lambda p, **kw: opened.append(Path(p).name) or real(p, **kw))
    lo, _ = store.load(FP, [keys[5], keys[6]])
    assert torch.equal(lo, expected([keys[5], keys[6]])[0])
    assert len(opened) == 1 and opened[0] == shard_files(tmp_path)[1].name


def test_embeddings_are_optional(tmp_path):
    store, keys = TeacherStore(tmp_path), make_keys(5)
    assert label_pass(store, keys, embeddings=False) == 5
    lo, em = store.load(FP, keys)
    assert em is None and torch.equal(lo, expected(keys)[0])
    assert store.missing(FP, keys) == []
    assert store.missing(FP, keys, embeddings=True) == [0, 1, 2, 3, 4]
    assert label_pass(store, keys[:2], embeddings=True) == 2
    assert store.load(FP, keys[2:])[1] is None
    lo, em = store.load(FP, keys[:2])  # the rows with embeddings are preferred
    assert torch.equal(em, expected(keys[:2])[1])

    half = TeacherStore(tmp_path, "float16")  # float32 rows without embeddings ...
    assert half.missing(FP, keys[2:], embeddings=True) == [0, 1, 2]
    assert label_pass(half, keys[2:], embeddings=True) == 3  # ... and float16 rows with them
    lo, em = half.load(FP, keys)
    # the float32 rows with embeddings, read at the store's precision: as the float16 rows
    assert em is not None and torch.equal(em, expected(keys)[1].half().float())


def test_float32_store_relabels_what_was_stored_in_float16(tmp_path):
    keys = make_keys(5)
    assert label_pass(TeacherStore(tmp_path, "float16"), keys) == 5
    full = TeacherStore(tmp_path, "float32")
    assert full.missing(FP, keys) == list(range(5))
    with pytest.raises(KeyError):
        full.load(FP, keys)
    assert label_pass(full, keys) == 5
    assert torch.equal(full.load(FP, keys)[0], expected(keys)[0])
    half = TeacherStore(tmp_path, "float16")  # a float16 store reads the float32 copy as it would have stored it
    lo = half.load(FP, keys)[0]
    assert torch.equal(lo, expected(keys)[0].half().float()) and not torch.equal(lo, expected(keys)[0])
    fresh = TeacherStore(tmp_path / "fresh", "float16")  # the same targets as a store that only ever saw float16
    label_pass(fresh, keys)
    assert torch.equal(fresh.load(FP, keys)[0], lo)


def test_a_float32_row_beyond_float16_is_refused_by_a_float16_store(tmp_path):
    with TeacherStore(tmp_path).writer(FP) as w:
        w.add("big", torch.tensor([0.0, 1e5]))
    with pytest.raises(ValueError, match="stored outputs overflow float16"):
        TeacherStore(tmp_path, "float16").load(FP, ["big"])


def test_bad_values_are_never_stored(tmp_path):
    store = TeacherStore(tmp_path, "float16")
    with store.writer(FP) as w:
        with pytest.raises(ValueError, match="not finite"):
            w.add("a", torch.tensor([0.0, float("nan")]))
        with pytest.raises(ValueError, match="overflows float16"):
            w.add("b", torch.tensor([0.0, 1e5]))
        with pytest.raises(ValueError, match="one non-empty vector"):
            w.add("c", torch.zeros(2, 3))
        assert w.add("d", torch.zeros(2), torch.zeros(3))
        with pytest.raises(ValueError, match="classes"):
            w.add("e", torch.zeros(5), torch.zeros(3))
        with pytest.raises(ValueError, match="must have an embedding"):
            w.add("f", torch.zeros(2))
        assert not w.add("d", torch.ones(2), torch.ones(3))  # queued already: first one kept
    assert store.missing(FP, ["a", "b", "c", "d", "e", "f"]) == [0, 1, 2, 4, 5]
    assert torch.equal(store.load(FP, ["d"])[0], torch.zeros(1, 2))
    with pytest.raises(ValueError, match="3 classes; this teacher's have 2"), store.writer(FP) as w:
        w.add("g", torch.zeros(3))
    with pytest.raises(ValueError, match="float16' or 'float32"):
        TeacherStore(tmp_path, "bfloat16")
    with pytest.raises(ValueError, match="not a fingerprint"):
        store.missing("../escape", ["a"])


def test_meta_is_written_once(tmp_path):
    teacher = build_teacher()
    meta = teacher_meta(teacher, sample_rate=16000)
    fp = meta["fingerprint"]
    store = TeacherStore(tmp_path, "float16")
    store.writer(fp, meta=meta).close()
    saved = json.loads((tmp_path / fp / "meta.json").read_text())
    assert saved["teacher"]["name"] == "audio_cnn" and saved["dtype"] == "float16"
    assert saved["preprocessing"]["sample_rate"] == 16000 and "created" in saved
    TeacherStore(tmp_path).writer(fp, meta={**meta, "teacher": {"name": "other"}}).close()
    assert json.loads((tmp_path / fp / "meta.json").read_text()) == saved
    assert store.info(fp)["meta"] == saved
    with pytest.raises(ValueError, match="describes teacher"):
        store.writer("e" * 64, meta=meta)


# -- crashes and resuming ------------------------------------------------------------------------
def test_killed_writer_leaves_only_complete_shards(tmp_path):
    keys = make_keys(10)
    child = run_child("killed", tmp_path)
    try:
        line = child.stdout.readline()
        assert line.strip() == "renaming", child.stderr.read()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    folder = tmp_path / FP
    tmps = list(folder.glob(".shard-*.tmp"))
    assert len(tmps) == 1  # the second shard, written but never renamed
    (folder / ".shard-0000-1-half.safetensors.tmp").write_bytes(tmps[0].read_bytes()[:50])  # a torn one too

    store = TeacherStore(tmp_path)
    info = store.info(FP)
    assert (info["shards"], info["clips"], info["tmp_files"], info["corrupt"]) == (1, 4, 2, {})
    assert store.missing(FP, keys) == [4, 5, 6, 7, 8, 9]
    assert label_pass(store, keys) == 6  # resumes with the missing clips only

    clean = TeacherStore(tmp_path / "clean")
    label_pass(clean, keys)
    for a, b in zip(TeacherStore(tmp_path).load(FP, keys), clean.load(FP, keys)):
        assert torch.equal(a, b)


def test_exception_inside_the_writer_keeps_the_complete_rows(tmp_path):
    store, keys = TeacherStore(tmp_path), make_keys(10)
    with pytest.raises(RuntimeError, match="decoder died"), store.writer(FP, shard_size=4) as w:
        for i, k in enumerate(keys):
            if i == 6:
                raise RuntimeError("decoder died")
            w.add(k, *fake(k))
    assert TeacherStore(tmp_path).missing(FP, keys) == [6, 7, 8, 9]
    assert label_pass(store, keys) == 4
    assert torch.equal(TeacherStore(tmp_path).load(FP, keys)[0], expected(keys)[0])


def test_stale_temporary_files_are_removed(tmp_path):
    folder = tmp_path / FP
    folder.mkdir()
    old, new = folder / ".shard-old.safetensors.tmp", folder / ".shard-new.safetensors.tmp"
    old.write_bytes(b"x")
    new.write_bytes(b"x")
    os.utime(old, (time.time() - 2 * 3600,) * 2)
    TeacherStore(tmp_path).writer(FP).close()
    assert not old.exists() and new.exists()  # a fresh one may belong to a live writer


def test_changed_clip_or_teacher_is_relabeled(tmp_path):
    rng = np.random.default_rng(0)
    clips = [Clip(f"c{i}", rng.standard_normal(1600).astype(np.float32), 16000, "s1") for i in range(6)]
    teacher = build_teacher()
    store = TeacherStore(tmp_path)

    def pass_(teacher, clips):
        meta = teacher_meta(teacher, sample_rate=16000)
        return label_with_store(store, teacher, clips, meta)

    fp, keys, n = pass_(teacher, clips)
    assert n == 6
    assert pass_(teacher, clips)[2] == 0
    clips[2].audio[100] += 0.01  # one clip re-recorded
    assert store.missing(fp, [clip_key(c) for c in clips]) == [2]
    assert pass_(teacher, clips)[2] == 1
    with torch.no_grad():
        next(teacher.parameters()).view(-1)[0] += 0.1  # the teacher changed (e.g. refitted)
    fp2, keys2, n = pass_(teacher, clips)
    assert fp2 != fp and n == 6

    # what the store returns is what the teacher computes
    teacher.eval()
    ds = ClipDataset(clips, RAVDESS8, 16000, with_labels=False)
    with torch.no_grad():
        out = teacher(ds.collate([ds[i] for i in range(6)]))
    lo, em = store.load(fp2, keys2)
    torch.testing.assert_close(lo, out.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(em, out.embedding, rtol=1e-5, atol=1e-5)


def label_with_store(store: TeacherStore, teacher, clips, meta, *, batch_size: int = 4):
    """The engine's label stage, with a store (see docs/store.md)."""
    fp = meta["fingerprint"]
    keys = [clip_key(c) for c in clips]
    todo = store.missing(fp, keys, embeddings=True)
    if todo:
        teacher.eval()
        ds = ClipDataset([clips[i] for i in todo], RAVDESS8, 16000, with_labels=False)
        with store.writer(fp, shard_size=4, meta=meta) as w, torch.no_grad():
            for batch in ds.loader(batch_size):
                if batch is None:
                    continue
                out = teacher(batch)
                w.add_many([keys[todo[i]] for i in batch.index.tolist()], out.logits, out.embedding)
    return fp, keys, len(todo)


# -- concurrency and damage ----------------------------------------------------------------------
def test_concurrent_writers_make_a_consistent_union(children):
    tmp_path, (_, *shards_written) = children
    assert all(int(n) >= 1 for n in shards_written)
    n = 60
    keys = make_keys(n)
    for store in (TeacherStore(tmp_path), TeacherStore(tmp_path)):  # the second trusts the index
        assert store.missing(FP, keys) == []
        lo, em = store.load(FP, keys)
        assert torch.equal(lo, expected(keys)[0]) and torch.equal(em, expected(keys)[1])
        info = store.info(FP)
        assert info["clips"] == n and info["corrupt"] == {} and info["tmp_files"] == 0
    names = {p.name for p in shard_files(tmp_path)}
    assert len(names) == info["shards"]
    index = json.loads((tmp_path / FP / "index.json").read_text())
    assert set(index["shards"]) == names


def test_corrupt_shards_are_set_aside_and_relabeled(tmp_path, caplog):
    store, keys = TeacherStore(tmp_path), make_keys(12)
    label_pass(store, keys)
    a, b, c = shard_files(tmp_path)
    a.write_bytes(a.read_bytes()[: a.stat().st_size // 2])  # truncated
    data = bytearray(b.read_bytes())
    data[-3] ^= 0xFF  # one flipped bit pattern in the tensor bytes, same size
    b.write_bytes(bytes(data))

    fresh = TeacherStore(tmp_path)
    with caplog.at_level(logging.WARNING, logger="liser.store"):
        assert fresh.missing(FP, keys) == [0, 1, 2, 3, 4, 5, 6, 7]
    assert "corrupt shard" in caplog.text and a.name in caplog.text and b.name in caplog.text
    info = fresh.info(FP)
    assert "unreadable safetensors" in info["corrupt"][a.name]
    assert "does not match its digest" in info["corrupt"][b.name]
    assert info["shards"] == 1 and info["clips"] == 4
    assert not a.exists() and (tmp_path / FP / f"{a.name}.corrupt").exists()
    assert torch.equal(fresh.load(FP, keys[8:])[0], expected(keys[8:])[0])
    with pytest.raises(KeyError):
        fresh.load(FP, keys[:1])
    assert label_pass(fresh, keys) == 8
    assert torch.equal(TeacherStore(tmp_path).load(FP, keys)[0], expected(keys)[0])
    assert set(TeacherStore(tmp_path).info(FP)["corrupt"]) == {a.name, b.name}  # still reported


def test_index_is_a_cache(tmp_path, monkeypatch):
    keys = make_keys(8)
    label_pass(TeacherStore(tmp_path), keys)
    index = tmp_path / FP / "index.json"

    index.write_text("{not json")  # damaged: rebuilt from the shards
    store = TeacherStore(tmp_path)
    assert store.missing(FP, keys) == []
    assert set(json.loads(index.read_text())["shards"]) == {p.name for p in shard_files(tmp_path)}

    index.unlink()  # lost: rebuilt too
    assert TeacherStore(tmp_path).missing(FP, keys) == []
    assert index.exists()

    # an index entry verified well after its shard last changed is trusted without reading it
    monkeypatch.setattr(store_mod, "_RACY_NS", 0)
    TeacherStore(tmp_path).missing(FP, keys)  # re-verifies and records the time
    monkeypatch.setattr(store_mod, "_verify_shard", lambda *a: pytest.fail("shard read despite the index"))
    assert TeacherStore(tmp_path).missing(FP, keys) == []


def test_a_shard_replaced_after_indexing_is_not_served(tmp_path):
    store, keys = TeacherStore(tmp_path), make_keys(4)
    label_pass(store, keys)
    other = TeacherStore(tmp_path / "other")
    with other.writer(FP) as w:
        for k in reversed(keys):  # other rows, in another order
            w.add(k, -fake(k)[0], -fake(k)[1])
    (path,) = shard_files(tmp_path)
    (other_path,) = shard_files(tmp_path / "other")
    stat = path.stat()
    os.replace(other_path, path)  # different content under the indexed name ...
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    store._states[FP].shards[path.name].stat = store_mod.stat_signature(path.stat())  # ... stat faked
    lo, _ = store.load(FP, keys)  # the header digest check notices; the rescan reads the new file
    assert torch.equal(lo, -expected(keys)[0])


if __name__ == "__main__":
    _child(sys.argv[1:])


# -- an index is a cache: the shards decide -------------------------------------------------------
def _old_index(monkeypatch):
    """Make index entries count as verified long ago (past the racy window), as on a real disk."""
    monkeypatch.setattr(store_mod, "_RACY_NS", 0)


def test_an_index_with_reversed_keys_is_not_believed(tmp_path, monkeypatch):
    _old_index(monkeypatch)
    keys = make_keys(8)
    label_pass(TeacherStore(tmp_path), keys)
    index_path = tmp_path / FP / "index.json"
    index = json.loads(index_path.read_text())
    for entry in index["shards"].values():
        entry["keys"] = entry["keys"][::-1]  # valid JSON, plausible, wrong
    index_path.write_text(json.dumps(index))
    fresh = TeacherStore(tmp_path)  # another process: it has only the index and the shards
    assert fresh.missing(FP, keys) == []
    lo, em = fresh.load(FP, keys)
    ref_lo, ref_em = expected(keys)
    assert torch.equal(lo, ref_lo) and torch.equal(em, ref_em)  # each clip's own outputs


def test_a_shard_copied_from_another_teacher_is_set_aside(tmp_path, monkeypatch):
    _old_index(monkeypatch)
    keys = make_keys(4)
    other = "e" * 64
    label_pass(TeacherStore(tmp_path), keys, fp=other)  # another teacher's outputs for these clips
    (tmp_path / FP).mkdir()
    for shard in shard_files(tmp_path, other):
        shutil.copy(shard, tmp_path / FP / shard.name)
    fresh = TeacherStore(tmp_path)
    assert fresh.missing(FP, keys) == [0, 1, 2, 3]  # not this teacher's: all to label
    assert list((tmp_path / FP).glob("*.corrupt"))
    assert label_pass(fresh, keys) == 4
