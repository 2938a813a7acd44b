"""Fixed frontends computed once per clip (liser_core.features) and checkpoints written off the
training thread (liser_common.trainstate): both must leave results bit-identical."""

import errno
import os
import threading

import pytest
import torch
import torchaudio
from safetensors.torch import load_file

from liser_cache.clipcache import ClipCache
from liser_common import trainstate
from liser_core import features
from liser_core.features import FeatureCache
from liser_plugins.frontend import SILENCE, LogMel

RATE = 16000


def clips_batch(lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    clips = [torch.randn(n, generator=g) * 0.1 for n in lengths]
    audio = torch.zeros(len(clips), max(lengths))
    for i, c in enumerate(clips):
        audio[i, : len(c)] = c
    return clips, audio, torch.tensor(lengths)


def test_each_clips_log_mel_is_its_own_whatever_shares_its_batch():
    lengths = [16000, 9000, 3000, 150]  # the last shorter than half an FFT window
    clips, audio, lens = clips_batch(lengths)
    m = LogMel(RATE, 40).eval()
    x, valid = m(audio, lens)
    assert valid.tolist() == [n // 160 + 1 for n in lengths] and x.shape[-1] == 16000 // 160 + 1
    reference = torchaudio.transforms.MelSpectrogram(RATE, n_fft=400, hop_length=160, n_mels=40)  # center=True
    silence = m.norm(torch.full((1, 1, 40, 1), SILENCE))[0, 0]
    for i, clip in enumerate(clips):
        own = x[i, 0, :, : valid[i]]
        if len(clip) > 200:  # torchaudio's log-mel of the clip alone, bit for bit (the whole-clip path)
            assert torch.equal(m.log_mel(clip[None])[0], torch.log(reference(clip[None]) + 1e-6)[0])
            torch.testing.assert_close(m.norm(m.log_mel(clip[None])[:, None])[0, 0], own)
        # alone, or beside any other clip: the same bits; the frames after it are silence
        assert torch.equal(own, m(clip[None], torch.tensor([len(clip)]))[0][0, 0])
        for j in range(len(clips)):
            _, pair, pair_lens = clips_batch([lengths[i], lengths[j]])
            pair[0, : len(clip)] = clip
            pair[1, : lengths[j]] = clips[j]
            assert torch.equal(m(pair, pair_lens)[0][0, 0, :, : valid[i]], own)
        assert torch.equal(x[i, 0, :, valid[i]:], silence.expand(-1, x.shape[-1] - valid[i]))
    # the vectorised computation an export traces (every row at once) agrees to float rounding
    torch.testing.assert_close(m.norm(m.log_mel(audio, lens)[:, None]), x)


def test_cached_features_are_the_computed_ones_and_only_for_the_batchs_own_audio(tmp_path):
    _, audio, lens = clips_batch([16000, 12000, 12000])
    keys = ["a" * 64, "b" * 64, "c" * 64]
    m = LogMel(RATE, 40).eval()
    cache = FeatureCache(ClipCache(tmp_path / "features"))

    def fixed(a, ln):
        return features.per_clip(a, ln, m.log_mel, m.frames, config=m.fixed_config(), pad_value=SILENCE)

    uncached = fixed(audio, lens)
    with features.clips(cache, keys, audio, RATE):
        first = fixed(audio, lens)
        assert (cache.misses, cache.hits) == (3, 0)
        second = fixed(audio, lens)
        assert (cache.misses, cache.hits) == (3, 3)
        assert torch.equal(first, uncached) and torch.equal(second, uncached)
        fixed(audio * 0.5, lens)  # another tensor (an augmented view): computed, not looked up
        assert (cache.misses, cache.hits) == (3, 3)
        audio[0, :100] = 0.0  # changed in place: the keys no longer vouch for it
        changed = fixed(audio, lens)
        assert (cache.misses, cache.hits) == (3, 3) and not torch.equal(changed, uncached)
    # on disk for the next run (another process: nothing in memory)
    again = FeatureCache(ClipCache(tmp_path / "features"))
    _, audio, lens = clips_batch([16000, 12000, 12000])
    with features.clips(again, keys, audio, RATE):
        assert torch.equal(fixed(audio, lens), uncached)
    assert (again.misses, again.hits) == (0, 3)
    # another configuration (more mel bands) is another entry, never these
    m2 = LogMel(RATE, 64).eval()
    with features.clips(again, keys, audio, RATE):
        features.per_clip(audio, lens, m2.log_mel, m2.frames, config=m2.fixed_config(), pad_value=SILENCE)
    assert (again.misses, again.hits) == (3, 3)
    # part of a batch cached: the rest computed together, the batch the same as uncached
    with features.clips(again, [keys[0], "d" * 64, keys[2]], audio, RATE):
        assert torch.equal(fixed(audio, lens), uncached)
    assert (again.misses, again.hits) == (4, 5)


def test_a_damaged_feature_entry_is_computed_again_and_named_as_features(tmp_path, caplog):
    _, audio, lens = clips_batch([16000])
    m = LogMel(RATE, 40).eval()
    cache = FeatureCache(ClipCache(tmp_path / "features"))

    def fixed():
        return features.per_clip(audio, lens, m.log_mel, m.frames, config=m.fixed_config(), pad_value=SILENCE)

    with features.clips(cache, ["a" * 64], audio, RATE):
        computed = fixed()
    (entry,) = (tmp_path / "features").rglob("*.safetensors")
    entry.write_bytes(entry.read_bytes()[:-8])  # truncated
    again = FeatureCache(ClipCache(tmp_path / "features"))
    with features.clips(again, ["a" * 64], audio, RATE):
        assert torch.equal(fixed(), computed)
    assert again.misses == 1 and again.disk.damaged == 1
    assert f"feature cache: {entry} is damaged" in caplog.text and "computing the clip's features again" in caplog.text


def _weights(ctx):
    return load_file(str(ctx.run_dir / "student" / "model.safetensors"))


@pytest.mark.parametrize("augment", [False, True], ids=["plain", "augmented"])
def test_training_on_cached_features_is_bit_identical(run_tiny, tmp_path, augment, monkeypatch):
    from liser_core import load_plugins

    monkeypatch.setenv("LISER_CACHE_DIR", str(tmp_path / "cache"))  # the first run finds nothing cached

    host = load_plugins()
    extra = ["distil.epochs=2", "baseline.enabled=true", "baseline.epochs=2"]
    if augment:  # the student's audio is augmented: its features cannot come from the cache
        extra += ["distil.augment=[{name: gain}]", "baseline.augment=[{name: gain}]"]
    off = run_tiny(host=host, overrides=[*extra, "data.feature_cache=false", f"run_dir={tmp_path / 'off'}"])
    fresh = run_tiny(host=host, overrides=[*extra, f"run_dir={tmp_path / 'fresh'}"])
    disk = run_tiny(host=host, overrides=[*extra, f"run_dir={tmp_path / 'disk'}"])
    assert "feature_cache" not in off.diagnostics
    if not augment:  # the student's later epochs
        assert fresh.diagnostics["feature_cache"]["hits"] > 0
    assert disk.diagnostics["feature_cache"]["hits"] > fresh.diagnostics["feature_cache"]["hits"]  # the next run
    # a cold cache's hits come from memory, a warm one's from disk: told apart in the record
    assert fresh.diagnostics["feature_cache"]["from_disk"] == 0 < disk.diagnostics["feature_cache"]["from_disk"]
    assert disk.diagnostics["feature_cache"]["folder"] == str(tmp_path / "cache" / "features")
    for ctx in (fresh, disk):
        for a, b in zip(off.evaluations, ctx.evaluations):
            assert a.model == b.model and torch.equal(a.probs, b.probs), a.model
        wa, wb = _weights(off), _weights(ctx)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# -- checkpoints off the training thread --------------------------------------------------------
def _state():
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    return model, opt, sched


def test_a_background_checkpoint_holds_the_state_at_save_time(tmp_path, monkeypatch):
    model, opt, sched = _state()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gate = threading.Event()
    real = trainstate.save_file

    def slow(tensors, path):
        gate.wait(10)
        real(tensors, path)

    monkeypatch.setattr(trainstate, "save_file", slow)
    done = []
    ck = trainstate.Checkpointer(tmp_path / "ck")
    path = ck.save(trainstate.Progress(step=1), [model], opt, sched, background=True, done=done.append)
    with torch.no_grad():  # training goes on while the write waits
        model.weight.add_(1.0)
    ck.poll()
    assert done == [] and not path.exists()
    gate.set()
    ck.wait()
    assert done == [path] and trainstate.check_complete(path) is None
    saved = load_file(str(path / "modules.safetensors"))
    assert torch.equal(saved["0.weight"], before["weight"]) and not torch.equal(saved["0.weight"], model.weight)


def test_a_background_write_that_fails_raises_on_the_training_thread(tmp_path, monkeypatch):
    model, opt, sched = _state()

    def full(folder, marker):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / "COMPLETE.json"))

    monkeypatch.setattr(trainstate, "_write_marker", full)
    ck = trainstate.Checkpointer(tmp_path / "ck")
    ck.save(trainstate.Progress(step=1), [model], opt, sched, background=True)
    with pytest.raises(OSError, match="COMPLETE.json"):  # at the next save, latest(), load() or wait()
        ck.save(trainstate.Progress(step=2), [model], opt, sched, background=True)
    assert not any(p.name.startswith("step-") for p in (tmp_path / "ck").iterdir())  # nothing half-written kept
