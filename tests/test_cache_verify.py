"""Caches verify what they return: each entry records the key it was written for and is checked
against the key it is read for; an entry under another key is a miss, with one warning naming
it (docs/reliability.md, docs/store.md)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zlib

import numpy as np
import torch
from test_soundness import recipe, write_ravdess
from test_store import FP, expected, label_pass, make_keys, shard_files

from liser_cache.clipcache import ClipCache
from liser_cache.identity import digests_of, file_digests
from liser_cache.store import TeacherStore
from liser_core import checkpoint
from liser_core.data import ClipDataset
from liser_core.labels import RAVDESS8
from liser_plugins.corpora.ravdess import ravdess
from liser_tools.cli import main


def test_two_swapped_decoded_clip_entries_are_misses_and_the_right_audio_is_used(tmp_path, caplog):
    corpus = ravdess(str(write_ravdess(tmp_path / "RAVDESS", (1, 2))), expect_complete=False, min_seconds=0.2)
    clips = list(corpus.split("test"))[:4]
    keys = {c.clip_id: ClipCache.key(d, corpus.decode_signature(c)) for c, d in zip(clips, digests_of(clips, corpus))}
    cache, decoded = ClipCache(tmp_path / "cache"), []

    def load(clip, frames=True):
        decoded.append(clip.clip_id)
        return corpus.load(clip, frames=frames)

    def audio():
        ds = ClipDataset(clips, RAVDESS8, 16000, loader=load, cache=cache, cache_key=lambda c: keys[c.clip_id])
        return {c.clip_id: ds[i][2] for i, c in enumerate(clips)}

    truth = audio()
    a, b = (cache._path(keys[c.clip_id], "a16000.safetensors") for c in clips[:2])
    swap = a.with_name("swap")
    os.replace(a, swap), os.replace(b, a), os.replace(swap, b)  # each still passes its own checksum
    decoded.clear()
    with caplog.at_level(logging.WARNING, logger="liser.clipcache"):
        again = audio()
    assert sorted(decoded) == sorted(c.clip_id for c in clips[:2])  # the two decoded again, no other
    for c in clips:
        assert torch.equal(again[c.clip_id], truth[c.clip_id])
    lines = [r.getMessage() for r in caplog.records if r.name == "liser.clipcache"]  # not other tests' stragglers
    assert len(lines) == 2 and cache.mismatched == 2
    for path, other in ((a, b), (b, a)):
        assert any(str(path) in ln and f"of clip {other.name[:16]}, not for this one" in ln for ln in lines)
    audio()
    assert len(decoded) == 2  # written again in their places: hits now


def test_an_entry_of_another_rate_or_a_bad_clip_record_of_another_clip_is_a_miss(tmp_path, caplog):
    cache = ClipCache(tmp_path)
    k1, k2 = "1" * 64, "2" * 64
    cache.put_audio(k1, 16000, np.ones(8, np.float32))
    cache._path(k1, "a8000.safetensors").write_bytes(cache._path(k1, "a16000.safetensors").read_bytes())
    cache.put_bad(k1, False, "silent", "/x.wav")
    cache._path(k2, "bad0.json").parent.mkdir(parents=True, exist_ok=True)
    cache._path(k2, "bad0.json").write_bytes(cache._path(k1, "bad0.json").read_bytes())
    with caplog.at_level(logging.WARNING, logger="liser.clipcache"):
        assert cache.get_audio(k1, 8000) is None and cache.get_bad(k2, False) is None
    assert cache.mismatched == 2 and "written for a16000 of clip 1111111111111111" in caplog.text
    assert np.array_equal(cache.get_audio(k1, 16000), np.ones(8, np.float32)) and cache.get_bad(k1, False).reason == "silent"


def test_an_entry_that_records_no_key_is_a_silent_miss(tmp_path, caplog):
    """Entries of a LiSER that did not record their key are decoded again once, without noise."""
    from safetensors.numpy import save

    cache = ClipCache(tmp_path)
    arr = np.ones(4, np.float32)
    old = save({"data": arr}, metadata={"format": "1", "crc32": str(zlib.crc32(memoryview(arr).cast("B"))), "rate": "16000"})
    cache._path("3" * 64, "a16000.safetensors").parent.mkdir(parents=True)
    cache._path("3" * 64, "a16000.safetensors").write_bytes(old)
    with caplog.at_level(logging.WARNING, logger="liser.clipcache"):
        assert cache.get_audio("3" * 64, 16000) is None
    assert caplog.text == "" and cache.mismatched == 0 and cache.misses == 1


def test_a_store_shard_moved_under_another_teacher_is_not_trusted(tmp_path, caplog):
    store, keys = TeacherStore(tmp_path), make_keys(4)
    label_pass(store, keys)
    (shard,) = shard_files(tmp_path)
    other = "e" * 64
    (tmp_path / other).mkdir()
    shutil.copy2(shard, tmp_path / other / shard.name)
    with caplog.at_level(logging.WARNING, logger="liser.store"):
        assert TeacherStore(tmp_path).missing(other, keys) == [0, 1, 2, 3]
    assert shard.name in caplog.text and f"not this folder's {other[:16]}" in caplog.text
    assert torch.equal(TeacherStore(tmp_path).load(FP, keys)[0], expected(keys)[0])  # where it belongs: used


def test_a_fitted_teacher_folder_moved_under_another_fit_key_is_not_trusted(tmp_path):
    rav = write_ravdess(tmp_path / "RAVDESS", (1, 2, 3, 9))
    path, store = recipe(tmp_path, rav, "fold: 1, label_fraction: 0.5, teacher_speakers: [9]"), tmp_path / "store"

    def run(name, *more):
        assert main(["run", str(path), f"run_dir={tmp_path / name}", f"store={store}", *more]) == 0
        return json.loads((tmp_path / name / "metrics.json").read_text())

    run("a")
    (a,) = (store / "fitted").iterdir()
    b_metrics = run("b", "teachers.0.fit.epochs=2")  # another fit key
    (b,) = set((store / "fitted").iterdir()) - {a}
    shutil.rmtree(b)
    shutil.copytree(a, b)  # a's weights under b's name
    again = run("c", "teachers.0.fit.epochs=2")
    fit = again["diagnostics"]["teacher_fits"]["audio_cnn"]
    assert fit["reused"] is False and fit["fit_key"] == b_metrics["diagnostics"]["teacher_fits"]["audio_cnn"]["fit_key"]
    assert any(f"fitted-teacher store entry {b} not used: it was written for fit key" in w and "fitting again" in w
               for w in again["warnings"])
    assert checkpoint.read_marker(b)["fit_key"] == fit["fit_key"]  # rewritten for its own key
    assert checkpoint.read_marker(a)["fit_key"] != fit["fit_key"]


def test_a_fitted_teacher_whose_weights_were_changed_is_fitted_again_not_used(tmp_path):
    """A store entry's weights edited in place (the header and its fit key kept): their SHA-256
    is no longer the one its config.json records, so the run fits again, says so, and the entry
    is rewritten whole."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    rav = write_ravdess(tmp_path / "RAVDESS", (1, 2, 3, 9))
    path, store = recipe(tmp_path, rav, "fold: 1, label_fraction: 0.5, teacher_speakers: [9]"), tmp_path / "store"

    def run(name):
        assert main(["run", str(path), f"run_dir={tmp_path / name}", f"store={store}"]) == 0
        return json.loads((tmp_path / name / "metrics.json").read_text())

    run("a")
    (entry,) = (store / "fitted").iterdir()
    weights = entry / checkpoint.WEIGHTS_NAME
    with safe_open(str(weights), "pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name] + 1.0  # a tampered weight, same header (same fit key and code)
    save_file(state, str(weights), metadata=meta)
    assert checkpoint.weights_changed(entry)
    again = run("b")
    assert again["diagnostics"]["teacher_fits"]["audio_cnn"]["reused"] is False
    assert any(f"fitted-teacher store entry {entry} not used: its weights changed since LiSER wrote them" in w
               for w in again["warnings"])
    assert not checkpoint.weights_changed(entry)  # rewritten whole
    assert run("c")["diagnostics"]["teacher_fits"]["audio_cnn"]["reused"] is True


def test_a_teacher_whose_best_epoch_is_chosen_on_validation_is_keyed_by_those_clips(tmp_path):
    """With fit.early_stop, the validation clips pick the fitted weights: another validation set
    (validation.speakers, the seed, the label fraction) is another fitted teacher, not the store
    entry of whichever run came first."""
    rav = write_ravdess(tmp_path / "RAVDESS", (1, 2, 3, 4, 5, 9))
    path, store = recipe(tmp_path, rav, "fold: 1, label_fraction: 1.0, teacher_speakers: [9]"), tmp_path / "store"

    def run(name, share):
        assert main(["run", str(path), f"run_dir={tmp_path / name}", f"store={store}", "validation.source=labeled",
                     f"validation.speakers={share}", "teachers.0.fit.early_stop.metric=uar", "teachers.0.fit.epochs=2"]) == 0
        return json.loads((tmp_path / name / "metrics.json").read_text())["diagnostics"]["teacher_fits"]["audio_cnn"]

    a, b, c = run("a", 0.25), run("b", 0.5), run("c", 0.25)
    assert a["reused"] is False and b["reused"] is False and b["fit_key"] != a["fit_key"]
    assert c["reused"] is True and c["fit_key"] == a["fit_key"]


def test_swapped_files_are_hashed_again_not_read_from_the_digest_database(tmp_path, monkeypatch):
    """digests.sqlite3 keys each digest by path and stat signature (device, inode, size, mtime,
    ctime): two files swapped by renames keep their inodes, so neither's remembered digest is
    returned for the other."""
    from liser_cache import identity

    monkeypatch.setattr(identity, "RACY_NS", 0)  # remember files written just now
    monkeypatch.setattr(identity, "_CACHE", identity._DigestCache())
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"A" * 100), b.write_bytes(b"B" * 100)
    old = 1_000_000_000
    os.utime(a, ns=(old, old)), os.utime(b, ns=(old, old))  # same size and mtime
    assert len(identity._CACHE.get_many({str(p): identity.stat_signature(p.stat()) for p in (a, b)})) == 0
    file_digests([a, b])
    assert len(identity._CACHE.get_many({str(p): identity.stat_signature(p.stat()) for p in (a, b)})) == 2
    swap = tmp_path / "swap"
    os.replace(a, swap), os.replace(b, a), os.replace(swap, b)
    got = file_digests([a, b])
    assert got[str(a)] == hashlib.sha256(b"B" * 100).hexdigest() and got[str(b)] == hashlib.sha256(b"A" * 100).hexdigest()



def test_a_digest_or_fingerprint_row_edited_by_hand_is_not_trusted(tmp_path, monkeypatch, caplog):
    """digests.sqlite3 and fingerprints.sqlite3 rows carry a check over their key and value: a
    digest copied onto another file's row (or a fingerprint onto another key's) is not used: the
    file is hashed again, the fingerprint computed again, with a warning."""
    import sqlite3

    import numpy as np

    from liser_cache import fingerprint, identity

    monkeypatch.setenv("LISER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(identity, "RACY_NS", 0)
    monkeypatch.setattr(identity, "_CACHE", identity._DigestCache())
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"A" * 100), b.write_bytes(b"B" * 100)
    true = identity.file_digests([a, b])
    db = sqlite3.connect(str(tmp_path / "cache" / "digests.sqlite3"))
    a_digest = next(d for k, d in true.items() if k.endswith("a.bin"))
    assert db.execute("UPDATE files SET sha256 = ? WHERE path LIKE '%b.bin'", (a_digest,)).rowcount == 1  # a's on b's row
    db.commit(), db.close()
    monkeypatch.setattr(identity, "_CACHE", identity._DigestCache())  # a new process: nothing in memory
    with caplog.at_level(logging.WARNING, logger="liser.identity"):
        assert identity.file_digests([a, b]) == true
    assert "does not match its check" in caplog.text and "b.bin" in caplog.text

    cache = fingerprint.FingerprintCache(tmp_path / "fp.sqlite3")
    rng = np.random.default_rng(0)
    fps = {k: fingerprint.compute(rng.standard_normal(16000).astype(np.float32), 16000) for k in ("k1", "k2")}
    cache.put_many(list(fps.items()))
    db = sqlite3.connect(str(tmp_path / "fp.sqlite3"))
    row = db.execute("SELECT frames, z, w, sig, chk FROM fp2 WHERE key = 'k1'").fetchone()
    db.execute("UPDATE fp2 SET frames = ?, z = ?, w = ?, sig = ?, chk = ? WHERE key = 'k2'", row)  # k1's row on k2
    db.commit(), db.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="liser.fingerprint"):
        got = fingerprint.FingerprintCache(tmp_path / "fp.sqlite3").get_many(["k1", "k2"])
    assert list(got) == ["k1"] and np.array_equal(got["k1"].signature, fps["k1"].signature)
    assert "does not match its check" in caplog.text


def test_a_damaged_or_foreign_digest_or_fingerprint_database_is_said_and_never_a_crash(tmp_path, monkeypatch, caplog):
    """One flipped byte in digests.sqlite3 made a column read back as a BLOB, and every run
    failed with `TypeError: a bytes-like object is required` in get_many; a file that is no
    database was ignored without a word. A damaged row is skipped (the file hashed again) and
    an unreadable database said, the file kept."""
    import sqlite3

    import numpy as np

    from liser_cache import fingerprint, identity

    monkeypatch.setenv("LISER_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(identity, "RACY_NS", 0)
    monkeypatch.setattr(identity, "_CACHE", identity._DigestCache())
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"A" * 100), b.write_bytes(b"B" * 100)
    true = identity.file_digests([a, b])
    db = sqlite3.connect(str(tmp_path / "cache" / "digests.sqlite3"))
    assert db.execute("UPDATE files SET sig = CAST(sig AS BLOB) WHERE path LIKE '%b.bin'").rowcount == 1  # a BLOB
    db.commit(), db.close()
    monkeypatch.setattr(identity, "_CACHE", identity._DigestCache())
    with caplog.at_level(logging.WARNING, logger="liser.identity"):
        assert identity.file_digests([a, b]) == true
    assert "a damaged row" in caplog.text and "b.bin" in caplog.text
    # a file that is no database: said once, hashed without it, the file left as it is
    (tmp_path / "cache" / "digests.sqlite3").write_text("not a database " * 100)
    for extra in ("-wal", "-shm"):
        (tmp_path / "cache" / f"digests.sqlite3{extra}").unlink(missing_ok=True)
    monkeypatch.setattr(identity, "_CACHE", identity._DigestCache())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="liser.identity"):
        assert identity.file_digests([a, b]) == true
    assert "cannot be read" in caplog.text or "cannot be used" in caplog.text
    assert (tmp_path / "cache" / "digests.sqlite3").read_text().startswith("not a database")

    cache = fingerprint.FingerprintCache(tmp_path / "fp.sqlite3")
    fps = {"k1": fingerprint.compute(np.random.default_rng(0).standard_normal(16000).astype(np.float32), 16000)}
    cache.put_many(list(fps.items()))
    db = sqlite3.connect(str(tmp_path / "fp.sqlite3"))
    assert db.execute("UPDATE fp2 SET frames = 'x' WHERE key = 'k1'").rowcount == 1  # a column of the wrong type
    db.commit(), db.close()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="liser.fingerprint"):
        assert fingerprint.FingerprintCache(tmp_path / "fp.sqlite3").get_many(["k1"]) == {}
    assert "does not match its check" in caplog.text
