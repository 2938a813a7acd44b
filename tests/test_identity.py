"""Identity by content: file digests remembered across runs, clip digests, duplicates."""

import os
import time

import numpy as np
import pytest

from liser_cache import identity
from liser_cache.store import clip_key
from liser_core.data import Clip


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LISER_CACHE_DIR", str(tmp_path / "cache"))
    fresh = identity._DigestCache()
    monkeypatch.setattr(identity, "_CACHE", fresh)
    reads = []
    real = identity._hash_file
    monkeypatch.setattr(identity, "_hash_file", lambda p: reads.append(p) or real(p))
    return reads


def test_file_digests_are_remembered_but_rewrites_are_seen(tmp_path, monkeypatch, cache):
    monkeypatch.setattr(identity, "RACY_NS", 0)
    path = tmp_path / "a.wav"
    path.write_bytes(b"x" * 1000)
    clip = Clip("a", None, 16000, "s1", path=str(path))
    first = clip_key(clip)
    assert clip_key(clip) == first and len(cache) == 1  # second call read nothing
    st = path.stat()
    time.sleep(0.05)  # past the filesystem's timestamp tick
    path.write_bytes(b"y" * 1000)  # same size ...
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # ... and the old mtime restored (ctime moves)
    assert clip_key(clip) != first and len(cache) == 2


def test_a_new_process_reads_the_digest_from_the_persistent_cache(tmp_path, monkeypatch, cache):
    monkeypatch.setattr(identity, "RACY_NS", 0)
    path = tmp_path / "a.wav"
    path.write_bytes(b"z" * 5000)
    digest = identity.file_digest(path)
    assert (tmp_path / "cache" / "digests.sqlite3").is_file()
    monkeypatch.setattr(identity, "_CACHE", identity._DigestCache())  # as in a new process
    assert identity.file_digest(path) == digest and len(cache) == 1
    import hashlib

    assert digest == hashlib.sha256(b"z" * 5000).hexdigest()


def test_new_files_are_not_remembered(tmp_path, cache):
    path = tmp_path / "a.wav"
    path.write_bytes(b"x" * 10)
    identity.file_digest(path)
    identity.file_digest(path)
    assert len(cache) == 2  # changed within RACY_NS: its stat cannot vouch for it


def test_an_unusable_cache_folder_only_costs_rehashing(tmp_path, monkeypatch, cache):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("LISER_CACHE_DIR", str(blocker))
    path = tmp_path / "a.wav"
    path.write_bytes(b"q" * 100)
    assert identity.file_digest(path) == identity._hash_file(str(path))


def test_clip_digests_name_every_source_file(tmp_path):
    audio, video = tmp_path / "a.wav", tmp_path / "a.mp4"
    audio.write_bytes(b"audio")
    video.write_bytes(b"video")

    class TwoFiles:
        def source_files(self, clip):
            return [clip.path, str(video)]

    clip = Clip("a", None, 48000, "s1", path=str(audio))
    assert identity.clip_digests(clip) == (identity._hash_file(str(audio)),)
    assert identity.clip_digests(clip, TwoFiles()) == (identity._hash_file(str(audio)), identity._hash_file(str(video)))
    mem = Clip("m", np.ones(8, np.float32), 16000, "s1")
    assert identity.clip_digests(mem) == identity.clip_digests(Clip("other", np.ones(8, np.float64), 8000, "s2"))
    assert identity.clip_digests(mem) != identity.clip_digests(Clip("m", np.zeros(8, np.float32), 16000, "s1"))
    with pytest.raises(ValueError, match="nothing to identify"):
        identity.clip_digests(Clip("z", None, 16000, "s1"))


def test_empty_and_unreadable_files_are_no_ones_duplicates(tmp_path, cache):
    a, b = tmp_path / "a.wav", tmp_path / "b.wav"
    a.write_bytes(b"")
    b.write_bytes(b"")
    clips = [Clip("a", None, 16000, "s", path=str(a)), Clip("b", None, 16000, "s", path=str(b)),
             Clip("c", None, 16000, "s", path=str(tmp_path / "gone.wav"))]
    digests = identity.digests_of(clips)
    assert len({d for ds in digests for d in ds}) == 3  # bad clips, reported when loaded; not copies of each other
    with pytest.raises(FileNotFoundError):
        identity.file_digest(tmp_path / "gone.wav")
