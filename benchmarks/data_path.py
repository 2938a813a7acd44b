"""Fast on real files: decode once, decode in parallel, label once, fit once -- measured.

Writes a RAVDESS-layout tree to disk -- 48 kHz wavs (``03-01-EE-II-SS-RR-AA.wav``) and
audio-video mp4s (``01-...mp4``, H.264 + AAC, the faces of the clips) made from ``synth_av``
clips, so nothing is downloaded -- and measures, side by side in one run:

1. **epoch**: distillation epochs of the default student (``logmel_cnn``) over the files (its
   audio decoded from the mp4s; the decoded-clip cache on, decoding workers as a run chooses them) against the same clips
   already in memory. Epoch 1 on the files decodes and resamples every clip (and fills the
   cache); from epoch 2 on they are read back. Goal: <= 1.2x the in-memory epoch from epoch 2.
2. **labeling**: a speech teacher (``hf_speech`` on a tiny random WavLM) and a face teacher
   (``face_cnn`` on the frames) labeling every clip from the mp4s (audio and frames), cache
   off, in one pass as the label stage runs them (each clip decoded once for both), with 2
   decoding workers against 0 (in the main process); one torch thread in the main process
   either way. Goal: >= 1.6x the clips per second. Also shown: one pass per teacher.
3. **grid**: 6 RAVDESS folds x 3 label fractions (18 runs of ``liser run``, in-process), one
   *loaded* face teacher (a ``face_cnn`` fitted once beforehand and given as ``checkpoint:``)
   and one speech teacher fitted in every run on the fold's teacher actors
   (``teacher_fraction``: the same actors at every fraction), run twice:

   * ``label once``: one teacher store for the grid (``store=``): each teacher output is keyed
     by the teacher and the clip's content only, and a teacher fitted in a run is kept under its
     fit-set key and reused;
   * ``every cell``: no store, no decoded-clip cache: each run fits its speech teacher and
     labels every clip with both teachers (what a grid cost before).

   Teacher forward passes (clips labeled, from each run's ``metrics.json``) and fits are
   counted. Goal: each clip labeled once per teacher fit set (the face teacher once overall,
   the speech teacher once per fold) and each teacher fitted once per fold.

    python benchmarks/data_path.py                 # ~25 min on 2 CPU cores (the grid: 20)
    python benchmarks/data_path.py --quick         # ~4 min: fewer, shorter clips, 2 folds

Prints every figure and the ratios, writes ``summary.json`` in ``--output`` (default: a new
temporary folder); exit status 1 when a goal is not met.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]


def write_tree(root: Path, actors: int, takes: int, seconds: float, seed: int = 0) -> int:
    """RAVDESS-named wavs (48 kHz) and mp4s from synth_av clips; returns the number of takes."""
    import av
    import soundfile as sf
    import torchaudio.functional as AF

    from liser_plugins.synth_av.generator import generate

    space, splits = generate(
        seed=seed, classes="ravdess8", sample_rate=16000, seconds=seconds, frames=max(4, int(5 * seconds)),
        speakers={"teacher": actors, "labeled": 0, "unlabeled": 0, "test": 0},
        clips_per_emotion={"teacher": takes, "labeled": 0, "unlabeled": 0, "test": 0},
    )
    by_speaker: dict[str, list] = {}
    for c in splits["teacher"]:
        by_speaker.setdefault(c.speaker, []).append(c)
    n = 0
    for a, spk in enumerate(sorted(by_speaker), start=1):
        counts: dict[str, int] = {}
        for clip in by_speaker[spk]:
            e = space.classes.index(clip.label) + 1
            k = counts.get(clip.label, 0)
            counts[clip.label] = k + 1
            intensity, statement, rep = (1, 1 + k // 2, 1 + k % 2) if e == 1 else (1 + (k // 4) % 2, 1 + (k // 2) % 2, 1 + k % 2)
            take = f"01-{e:02d}-{intensity:02d}-{statement:02d}-{rep:02d}-{a:02d}"
            folder = root / f"Actor_{a:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            audio48 = AF.resample(torch.from_numpy(clip.audio), 16000, 48000).numpy()
            sf.write(str(folder / f"03-{take}.wav"), audio48, 48000, subtype="PCM_16")
            _mp4(folder / f"01-{take}.mp4", clip.frames, clip.fps or 5.0, audio48, av)
            n += 1
    return n


#: Video geometry of the mp4s: 640 x 360 at 25 fps, the face in the middle (RAVDESS's own are
#: 1280 x 720 at 30 fps): decoding them costs what decoding real talking-head video costs.
WIDTH, HEIGHT, FPS = 640, 360, 25


def _mp4(path: Path, frames: np.ndarray, fps: float, audio: np.ndarray, av) -> None:
    seconds = audio.size / 48000
    with av.open(str(path), "w", format="mp4") as c:
        vs = c.add_stream("h264", rate=FPS)
        vs.width, vs.height = WIDTH, HEIGHT
        vs.pix_fmt = "yuv420p"
        st = c.add_stream("aac", rate=48000)
        st.layout = "mono"
        face = HEIGHT  # the 48 x 48 face scaled to the frame's height, grey background around it
        idx = np.arange(face) * frames.shape[1] // face
        for i in range(int(round(seconds * FPS))):
            img = frames[min(len(frames) - 1, int(i / FPS * fps))]
            big = img[np.ix_(idx, idx)] if img.ndim == 2 else img[np.ix_(idx, idx)].mean(-1).astype(np.uint8)
            canvas = np.full((HEIGHT, WIDTH, 3), 96, np.uint8)
            left = (WIDTH - face) // 2
            canvas[:, left : left + face] = big[..., None]
            for pkt in vs.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")):
                c.mux(pkt)
        for pkt in vs.encode():
            c.mux(pkt)
        ctx = st.codec_context
        step = ctx.frame_size or 1024
        for pts in range(0, audio.size, step):
            frame = av.AudioFrame.from_ndarray(audio[None, pts : pts + step].astype(np.float32), format=ctx.format.name, layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = 48000, pts, Fraction(1, 48000)
            for pkt in st.encode(frame):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)


# -- 1. epochs on files vs in memory ------------------------------------------------------------------
def video_only(root: Path, out: Path) -> Path:
    """A tree of links to the mp4s alone (as a folder of talking-head videos is): the audio
    then comes from the mp4s too (AAC, decoded and resampled 48 -> 16 kHz)."""
    tree = out / "RAVDESS-mp4"
    for mp4 in root.rglob("01-*.mp4"):
        link = tree / mp4.parent.name / mp4.name
        link.parent.mkdir(parents=True, exist_ok=True)
        if not link.exists():
            link.symlink_to(mp4)
    return tree


def bench_epochs(root: Path, out: Path, epochs: int, host) -> dict:
    from liser_cache.clipcache import ClipCache
    from liser_cache.identity import digests_of
    from liser_core.config import TrainConfig
    from liser_core.data import ClipDataset
    from liser_core.engine import build_component
    from liser_core.labels import RAVDESS8
    from liser_core.training import train
    from liser_plugins.corpora.ravdess import ravdess

    corpus = ravdess(str(root), expect_complete=False, fold=1)
    clips = [c for s in ("labeled", "unlabeled", "test", "teacher") for c in corpus.split(s)]
    keys = {c.clip_id: ClipCache.key(d, corpus.decode_signature(c)) for c, d in zip(clips, digests_of(clips, corpus))}
    cache = ClipCache(out / "decoded")
    cpus = len(os.sched_getaffinity(0))
    workers = min(4, max(0, cpus - 1))
    files = ClipDataset(clips, RAVDESS8, 16000, loader=corpus.load, cache=cache, cache_key=lambda c: keys[c.clip_id],
                        workers=workers)
    t0 = time.perf_counter()
    memory_clips = [files.load(c) for c in clips]  # decoded once, up front (not timed in the epochs)
    load_s = time.perf_counter() - t0
    memory = ClipDataset(memory_clips, RAVDESS8, 16000)

    def epochs_of(ds) -> list[float]:
        torch.manual_seed(0)
        student = build_component(host.registries.student, "logmel_cnn", {}, "student.options", label_space=RAVDESS8)

        def step(batch):
            loss = torch.nn.functional.cross_entropy(student(batch.audio, batch.lengths).logits, batch.labels)
            return loss, {"ce": loss.detach()}

        cfg = TrainConfig(epochs=epochs, batch_size=32)
        hist = train([student], step, lambda e, skip: ds.loader(32, shuffle=True, seed=e, skip_batches=skip),
                     -(-len(ds) // 32), cfg, device=torch.device("cpu"), name="bench")
        return [h["seconds"] for h in hist]

    mem = epochs_of(memory)
    fil = epochs_of(files)
    ratios = [f / m for f, m in zip(fil, mem)]
    return {"clips": len(clips), "workers": workers, "memory_s": mem, "files_s": fil, "ratios": ratios,
            "ratio_from_epoch_2": max(ratios[1:]), "decode_all_s": load_s}


# -- 2. labeling with and without workers ---------------------------------------------------------------
def bench_labeling(root: Path, out: Path, host, speech_model: Path, face_dir: Path, repeats: int) -> dict:
    """Both teachers over every clip, as the label stage runs them: one pass, each clip decoded
    once for both (JointDataset), with 0 and 2 decoding workers; and, for comparison, one pass
    per teacher (how labeling ran before the joint pass)."""
    from liser_core.checkpoint import load_component
    from liser_core.data import ClipDataset, JointDataset
    from liser_core.engine import build_component
    from liser_core.labels import RAVDESS8
    from liser_plugins.corpora.ravdess import ravdess

    corpus = ravdess(str(root), expect_complete=False, modality="audiovisual", fold=1)
    clips = [c for s in ("labeled", "unlabeled", "test", "teacher") for c in corpus.split(s)]
    speech = build_component(host.registries.teacher, "hf_speech", {"model": str(speech_model)}, label_space=RAVDESS8).eval()
    face = load_component(face_dir, host.registries.teacher, kind="teacher").eval()
    teachers = (speech, face)

    def parts(workers):
        return [ClipDataset(clips, RAVDESS8, t.sample_rate or 16000, with_frames=t.needs_frames, with_labels=False,
                            loader=corpus.load, workers=workers) for t in teachers]

    def joint(workers):
        for batches in JointDataset(parts(workers)).loader(16):
            for t, b in zip(teachers, batches):
                if b is not None:
                    t(b)

    def per_teacher(workers):
        for t, ds in zip(teachers, parts(workers)):
            for b in ds.loader(16):
                if b is not None:
                    t(b)

    out_d: dict = {"clips": len(clips), "seconds": {}}
    cpus = len(os.sched_getaffinity(0))
    for _ in range(repeats):  # interleaved: drift on a shared machine hits every mode alike
        for mode, fn, workers, threads in (("joint", joint, 0, 1), ("joint", joint, 2, 1), ("per_teacher", per_teacher, 0, 1),
                                           ("per_teacher", per_teacher, 2, 1), ("joint_all_threads", joint, 0, cpus)):
            torch.set_num_threads(threads)  # the last: 0 workers, a torch thread per CPU (what a run then chooses)
            t0 = time.perf_counter()
            with torch.no_grad():
                fn(workers)
            out_d["seconds"].setdefault(f"{mode}/{workers}", []).append(time.perf_counter() - t0)
    torch.set_num_threads(1)
    best = {k: min(v) for k, v in out_d["seconds"].items()}
    out_d["clips_per_s"] = {k: 2 * len(clips) / s for k, s in best.items()}
    out_d["ratio"] = best["joint/0"] / best["joint/2"]
    out_d["ratio_per_teacher"] = best["per_teacher/0"] / best["per_teacher/2"]
    out_d["ratio_vs_all_threads"] = best["joint_all_threads/0"] / best["joint/2"]
    return out_d


# -- 3. the grid -------------------------------------------------------------------------------------------
GRID_RECIPE = """\
name: data_path_grid
threads: 1
data:
  name: ravdess
  options: {{root: {root}, modality: audiovisual, expect_complete: false, teacher_fraction: 0.25,
             num_frames: 4, frame_size: 48, min_seconds: 0.3}}
teachers:
  - {{name: face_cnn, weight: 0.5, checkpoint: {face}}}
  - {{name: hf_speech, weight: 0.5, options: {{model: {speech}}}, fit: {{epochs: 2, batch_size: 16}}}}
student: {{name: logmel_cnn, options: {{channels: [8, 16]}}}}
distil: {{epochs: 1, batch_size: 32, losses: [{{name: kl}}, {{name: ce, weight: 0.5}}]}}
loggers: {{run_dir: {{confusion_png: false}}}}
"""


def bench_grid(root: Path, out: Path, host, speech_model: Path, face_dir: Path, folds: list[int], fractions: list[float]) -> dict:
    from liser_core import run as liser_run

    out = out / time.strftime("grid-%Y%m%d-%H%M%S")  # a store and caches of its own: nothing reused from before
    out.mkdir(parents=True)
    recipe = out / "grid.yaml"
    recipe.write_text(GRID_RECIPE.format(root=root, face=face_dir, speech=speech_model))
    result: dict = {}
    for mode in ("every_cell", "label_once"):
        extra = [f"store={out / 'store'}", f"data.cache_dir={out / 'decoded'}"] if mode == "label_once" else ["data.cache=false"]
        t0 = time.perf_counter()
        counts = {"face_cnn": 0, "hf_speech": 0}
        fits, cells = 0, 0
        clips_by_fold: dict[int, set] = {}
        for fold in folds:
            for frac in fractions:
                run_dir = out / mode / f"fold{fold}-{frac}"
                liser_run(recipe, [f"run_dir={run_dir}", f"data.options.fold={fold}", f"data.options.label_fraction={frac}", *extra],
                          host=host)
                m = json.loads((run_dir / "metrics.json").read_text())
                diag = m["diagnostics"]
                for t in counts:
                    if mode == "label_once":
                        counts[t] += diag["store"][t]["labeled"] + diag["store_test"][t]["labeled"]
                    else:  # no store: every clip of the distillation set and of the test split
                        counts[t] += m["teachers"][t]["num_clips"] + _distil_clips(run_dir)
                fits += 0 if diag.get("teacher_fits", {}).get("hf_speech", {}).get("reused") else 1
                splits = json.loads((run_dir / "splits.json").read_text())["splits"]
                clips_by_fold.setdefault(fold, set()).update(
                    c["id"] for s in ("unlabeled", "labeled", "test") for c in splits[s]["clips"])
                cells += 1
        result[mode] = {"seconds": time.perf_counter() - t0, "cells": cells, "labeled": counts, "speech_fits": fits,
                        "distinct_clips": len(set().union(*clips_by_fold.values())),
                        "clips_per_fold": sum(len(v) for v in clips_by_fold.values())}
    once = result["label_once"]
    result["goals"] = {
        "face labeled once overall": once["labeled"]["face_cnn"] == once["distinct_clips"],
        "speech labeled once per fold": once["labeled"]["hf_speech"] == once["clips_per_fold"],
        "speech fitted once per fold": once["speech_fits"] == len(folds),
    }
    result["wall_ratio"] = result["every_cell"]["seconds"] / once["seconds"]
    return result


def _distil_clips(run_dir: Path) -> int:
    splits = json.loads((run_dir / "splits.json").read_text())["splits"]
    return len(splits["unlabeled"]["clips"]) + len(splits["labeled"]["clips"])


def fit_face_teacher(out: Path, host, seconds: float) -> Path:
    """A face_cnn fitted on synth_av's teacher split (in memory), saved: the 'pretrained' face teacher."""
    from liser_core import run as liser_run

    recipe = out / "face.yaml"
    recipe.write_text(
        "name: face\nthreads: 1\nseed: 99\n"
        f"data: {{name: synth_av, options: {{seconds: {seconds}, frames: {max(4, int(5 * seconds))}}}}}\n"
        "teachers: [{name: face_cnn, fit: {epochs: 6, batch_size: 32}}]\n"
        "student: {name: logmel_cnn, options: {channels: [4]}}\n"
        "distil: {epochs: 0, losses: [{name: ce}]}\nloggers: {}\n"
    )
    liser_run(recipe, [f"run_dir={out / 'face-run'}"], host=host)
    return out / "face-run" / "teachers" / "face_cnn"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", type=Path, default=None, help="folder for the tree, runs and summary.json")
    p.add_argument("--quick", action="store_true", help="fewer and shorter clips, 2 folds: a smoke test")
    p.add_argument("--parts", default="epoch,labeling,grid", help="which measurements, comma-separated (default: all three)")
    args = p.parse_args(argv)
    parts = set(args.parts.split(","))
    if not parts <= {"epoch", "labeling", "grid"}:
        p.error(f"--parts: {args.parts!r}: choose from epoch, labeling, grid")
    out = args.output or Path(tempfile.mkdtemp(prefix="liser-data-path-"))
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("LISER_CACHE_DIR", str(out / "cache"))
    torch.set_num_threads(1)
    import logging
    import warnings

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().handlers[0].setLevel(logging.WARNING)  # runs log INFO to their log.txt only
    warnings.filterwarnings("ignore", message="Support for mismatched key_padding_mask")
    from liser_core import load_plugins
    from liser_plugins.hf_speech.tiny import save_tiny_model

    host = load_plugins()
    seconds, takes = (1.5, 1) if args.quick else (3.0, 2)
    t0 = time.perf_counter()
    n = write_tree(out / "RAVDESS", actors=24, takes=takes, seconds=seconds)  # (rewritten: same seed, same files)
    print(f"tree: {n} takes x (48 kHz wav + mp4) of {seconds} s in {time.perf_counter() - t0:.0f} s -> {out / 'RAVDESS'}")
    speech = save_tiny_model(out / "wavlm-small", hidden_size=64, num_hidden_layers=4, intermediate_size=128,
                             conv_dim=(64, 64, 64), conv_stride=(5, 4, 4), conv_kernel=(10, 8, 8))
    tiny = save_tiny_model(out / "wavlm-tiny")  # labeling: a light teacher, so that decoding shows
    face = fit_face_teacher(out, host, seconds)

    summary: dict = {"takes": n, "seconds_per_clip": seconds, "cpus": len(os.sched_getaffinity(0))}
    mp4s = video_only(out / "RAVDESS", out)
    summary["goals"] = goals = {}
    if "epoch" in parts:
        report_epochs(summary, bench_epochs(mp4s, out, 3, host))
    if "labeling" in parts:
        report_labeling(summary, bench_labeling(mp4s, out, host, tiny, face, repeats=1 if args.quick else 2))
    if "grid" in parts:
        folds = [1, 2] if args.quick else [1, 2, 3, 4, 5, 6]
        report_grid(summary, bench_grid(out / "RAVDESS", out, host, speech, face, folds, [0.1, 0.25, 0.5]), folds)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\nsummary: {out / 'summary.json'}")
    return 0 if all(goals.values()) else 1


def report_epochs(summary: dict, e: dict) -> None:
    summary["epoch"] = e
    print(f"\n1. epoch, {e['clips']} clips, {e['workers']} decoding worker(s); seconds per epoch (memory / files / ratio):")
    for i, (m, f, r) in enumerate(zip(e["memory_s"], e["files_s"], e["ratios"]), 1):
        print(f"   epoch {i}: {m:6.2f} / {f:6.2f} / {r:5.2f}x{'   (decodes and fills the cache)' if i == 1 else ''}")
    print(f"   from epoch 2: {e['ratio_from_epoch_2']:.2f}x (goal <= 1.2x); decoding every clip once, in process: {e['decode_all_s']:.1f} s")
    summary["goals"]["epoch <= 1.2x from epoch 2"] = e["ratio_from_epoch_2"] <= 1.2


def report_labeling(summary: dict, lab: dict) -> None:
    summary["labeling"] = lab
    print(f"\n2. labeling {lab['clips']} clips with a speech and a face teacher, cache off, one pass: "
          f"{lab['clips_per_s']['joint/0']:.1f} clips/s with 0 workers, {lab['clips_per_s']['joint/2']:.1f} with 2: "
          f"{lab['ratio']:.2f}x (goal >= 1.6x); one pass per teacher: {lab['clips_per_s']['per_teacher/0']:.1f} "
          f"and {lab['clips_per_s']['per_teacher/2']:.1f} clips/s, {lab['ratio_per_teacher']:.2f}x; one pass, 0 workers "
          f"and a torch thread per CPU: {lab['clips_per_s']['joint_all_threads/0']:.1f} clips/s (2 workers: "
          f"{lab['ratio_vs_all_threads']:.2f}x that)")
    summary["goals"]["labeling >= 1.6x with 2 workers"] = lab["ratio"] >= 1.6


def report_grid(summary: dict, g: dict, folds: list[int]) -> None:
    summary["grid"] = g
    print(f"\n3. grid: {len(folds)} folds x 3 label fractions = {g['label_once']['cells']} runs")
    for mode in ("every_cell", "label_once"):
        r = g[mode]
        print(f"   {mode:<10}  {r['seconds']:6.0f} s   face clips labeled {r['labeled']['face_cnn']:5d}   "
              f"speech clips labeled {r['labeled']['hf_speech']:5d}   speech fits {r['speech_fits']:2d}")
    print(f"   distinct clips {g['label_once']['distinct_clips']}, per fold summed {g['label_once']['clips_per_fold']}; "
          f"wall time every_cell / label_once: {g['wall_ratio']:.2f}x")
    for goal, ok in g["goals"].items():
        print(f"   {'met' if ok else 'NOT MET'}: {goal}")
    summary["goals"].update(g["goals"])


if __name__ == "__main__":
    sys.exit(main())
