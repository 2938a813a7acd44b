"""The same knowledge-distillation job in LiSER and in torchdistill, side by side in one run:
wall time of the distillation and test accuracy / UAR of the distilled student, per seed and
as mean ± std, with the time ratio.

    python benchmarks/vs_torchdistill.py --setup            # once: torchdistill's own env
    python benchmarks/vs_torchdistill.py                    # seeds 0 1 2, the recipe's epochs
    python benchmarks/vs_torchdistill.py --quick            # smoke test: 1 seed, 3 epochs
    python benchmarks/vs_torchdistill.py --teacher online   # torchdistill runs the teacher each step
    python benchmarks/vs_torchdistill.py --concurrent       # both at once, 1 thread each (shared machine)
    python benchmarks/vs_torchdistill.py --concurrent --seeds 1   # one seed per run, then:
    python benchmarks/vs_torchdistill.py --concurrent --report    # the table of the saved seeds

The job is ``recipes/synth_kd.yaml`` with one teacher (``face_cnn``, weight 1) and no
labels-only baseline: on the embedded ``synth_av`` corpus, LiSER fits the face teacher on the
teacher split, the teacher labels the distillation set (768 pool clips with labels hidden + the
64 labeled clips) and the ``logmel_cnn`` student distils with ``1.0 * KL(T=2) * T^2 + 0.5 * CE``
(CE on the labeled clips only), AdamW, the recipe's lr / weight decay / batch size / epochs,
warm-up + cosine per step, gradient clipping at 5. LiSER runs as users run it
(``liser_core.engine.run(recipe, overrides)``); a small hook plugin only *reads* what the run
built (the student's initial weights, the teacher's logits, the per-epoch loss).

torchdistill 1.1.5 then runs the same job as its users do: a ``DistillationBox`` from
``get_distillation_box`` with a dict config (data loader, teacher/student forward procs,
``WeightedSumLoss`` over a ``KDLoss`` term, ``AdamW``, ``LambdaLR`` stepped per step,
``max_grad_norm``) and the training loop of its example scripts (``pre_epoch_process``,
``forward_process``, ``post_forward_process``, ``post_epoch_process``), in its own virtual
environment (``benchmarks/.envs/torchdistill``, which shares the project venv's torch through a
``.pth`` file), as a subprocess; data goes through safetensors and JSON files. It gets

* the same student: ``logmel_cnn`` rebuilt from the class and loaded with LiSER's initial
  weights (strictly);
* the same teacher: ``--teacher cached`` (default): LiSER's fitted ``face_cnn``'s logits over
  the distillation clips, served by a parameter-free teacher module indexed by clip, so both
  frameworks distil from identical targets and only the training machinery differs;
  ``--teacher online``: the fitted ``face_cnn`` itself (loaded from LiSER's checkpoint, frozen,
  eval mode) runs on every training batch, which is how torchdistill distils (it has no
  teacher-output cache); LiSER's time is then its ``label`` + ``distil`` stages;
* the same data order: the per-epoch permutations of LiSER's seeded loaders, replayed by a
  sampler;
* the same loss: torchdistill's ``KDLoss`` (``alpha`` 0.5 on CE, ``beta`` 1.0 on T^2 * KL) with
  ``ignore_index=-1`` so that CE covers the labeled clips only, subclassed for one case KDLoss
  gets wrong here: a batch without any labeled clip (CE is then 0/0 = NaN; LiSER drops the term);
* the same evaluation: ``liser_common.metrics.classification_metrics`` (torchmetrics) on the test
  split (8 unseen speakers, 256 clips).

Timed: LiSER's ``run.stage_seconds["distil"]`` (+ ``["label"]`` with ``--teacher online``):
building the loader and optimiser, the epochs (with LiSER's per-epoch resumable checkpoint),
saving the student; torchdistill's ``get_distillation_box`` + the epochs. Corpus generation,
teacher fitting, evaluation, imports and file exchange are outside both clocks. The table also
gives each side's process CPU seconds over the same span and its median and fastest epoch.

By default the two sides run one after the other with the recipe's ``threads`` (2). On a
machine shared with other jobs, whose load swings within a run, ``--concurrent`` runs them at
the same time on one thread each, both clocks starting together (LiSER's hook waits until the
torchdistill process is about to start its clock), so both see the same background load.

The teacher is fitted once per seed and fit setting and loaded by later runs (the same
weights; ``--refit-teacher`` fits it again). Every seed's row is saved under
``benchmarks/.envs/work/rows/``, so seeds measured in separate runs print as one table with
``--report`` (same settings, ``--seeds``).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

from liser_core import hookimpl

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ENV = HERE / ".envs" / "torchdistill"
TORCHDISTILL = "torchdistill==1.1.5"
RECIPE = ROOT / "recipes" / "synth_kd.yaml"
TEACHER = "face_cnn"
#: glibc malloc settings of --malloc fixed: blocks up to 32 MiB (every tensor of this job) come
#: from the heap and freed memory stays there, instead of glibc's default, which mmaps large
#: blocks (a page fault per touched page, every step) until its dynamic threshold has risen, at
#: a point that depends on the process's allocation history
FIXED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


# ---------------------------------------------------------------------------------------------
# torchdistill's environment
# ---------------------------------------------------------------------------------------------


def env_python() -> Path:
    return ENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def env_ready() -> str | None:
    """torchdistill's version in the benchmark env, or None when the env is not usable."""
    py = env_python()
    if not py.exists():
        return None
    probe = "import torch, torchdistill, liser_plugins; print(torchdistill.__version__)"
    out = subprocess.run([str(py), "-c", probe], capture_output=True, text=True)
    return out.stdout.strip().splitlines()[-1] if out.returncode == 0 and out.stdout.strip() else None


def setup_env() -> None:
    """Create benchmarks/.envs/torchdistill (idempotent): a venv whose .pth file adds the project
    venv's site-packages (torch, LiSER), then torchdistill from PyPI, refusing any torch wheel."""
    wanted = TORCHDISTILL.split("==")[1]
    have = env_ready()
    if have == wanted:
        print(f"{ENV}: torchdistill {have} ready")
        return
    import torch

    shared = Path(sysconfig.get_paths()["purelib"]).resolve()
    if not Path(torch.__file__).resolve().is_relative_to(shared):
        sys.exit(f"run --setup with the project venv's python (torch is not under {shared})")
    if not env_python().exists():
        print(f"creating {ENV}")
        subprocess.run([sys.executable, "-m", "venv", str(ENV)], check=True)
    py = str(env_python())
    purelib = subprocess.run(
        [py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    # `import` lines of a .pth file run at start-up; addsitedir also processes the shared
    # directory's own .pth files (LiSER's editable install); the env's own packages come first
    pth = Path(purelib) / "_liser_shared.pth"
    pth.write_text(f"import site; site.addsitedir({str(shared)!r})\n")
    pip = [py, "-m", "pip", "--disable-pip-version-check"]
    dry = subprocess.run([*pip, "install", "--dry-run", TORCHDISTILL], capture_output=True, text=True)
    if dry.returncode != 0:
        sys.exit(f"pip install --dry-run {TORCHDISTILL} failed:\n{dry.stdout}\n{dry.stderr}")
    would = re.findall(r"^Would install (.*)$", dry.stdout, re.M)
    names = would[0].split() if would else []
    heavy = [n for n in names if re.match(r"(torch|nvidia|triton|cuda)", n, re.I) and not n.startswith("torchdistill")]
    if heavy:
        sys.exit(f"refusing: installing {TORCHDISTILL} would download {heavy} (torch must come from the project venv)")
    print(f"installing into {ENV}: {' '.join(names) or 'nothing new'}")
    subprocess.run([*pip, "install", "--quiet", TORCHDISTILL], check=True)
    have = env_ready()
    if have != wanted:
        sys.exit(f"{ENV}: torchdistill not importable after install (got {have!r})")
    print(f"{ENV}: torchdistill {have} ready")


# ---------------------------------------------------------------------------------------------
# LiSER side (project venv)
# ---------------------------------------------------------------------------------------------


def _minor_faults() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class _Capture:
    """Reads what a LiSER run built, through LiSER's lifecycle hooks; changes nothing."""

    def __init__(self):
        self.init_state = None
        self.logits = None
        self.distil_loss: list[float] = []
        self.distil_epoch_s: list[float] = []
        self.cpu: dict[str, float] = {}  # stage -> process CPU seconds (all threads)
        self.faults: dict[str, int] = {}  # stage -> minor page faults
        self._faults0 = 0
        self._cpu0 = 0.0
        self.start_stage, self.on_start = "", None  # called with the run when that stage starts

    @hookimpl
    def liser_run_start(self, run):
        self.init_state = {k: v.detach().clone() for k, v in run.student.state_dict().items()}

    @hookimpl
    def liser_stage_start(self, run, stage):
        if stage == self.start_stage and self.on_start is not None:
            self.on_start(run)  # before the engine starts the stage's clock
        self._cpu0, self._faults0 = time.process_time(), _minor_faults()

    @hookimpl
    def liser_stage_end(self, run, stage, seconds):
        self.cpu[stage] = time.process_time() - self._cpu0
        self.faults[stage] = _minor_faults() - self._faults0
        if stage == "label":
            self.logits = run.targets.logits[TEACHER].clone()

    @hookimpl
    def liser_epoch_end(self, run, stage, model, epoch, metrics):
        if stage == "distil":
            self.distil_loss.append(float(metrics["loss"]))
            self.distil_epoch_s.append(float(metrics["seconds"]))


def _pad(clips):
    import numpy as np

    lengths = np.array([len(c.audio) for c in clips], dtype=np.int64)
    audio = np.zeros((len(clips), int(lengths.max())), dtype=np.float32)
    for i, c in enumerate(clips):
        audio[i, : len(c.audio)] = c.audio
    return audio, lengths


def recipe_teacher(teacher_epochs: int | None) -> dict:
    """The recipe's face teacher alone: weight 1, its own fit settings."""
    import yaml

    recipe = yaml.safe_load(RECIPE.read_text())
    (teacher,) = [t for t in recipe["teachers"] if t["name"] == TEACHER]
    teacher = {**teacher, "weight": 1.0}
    if teacher_epochs is not None:
        teacher["fit"] = {**teacher.get("fit", {}), "epochs": teacher_epochs}
    return teacher


def liser_overrides(seed: int, epochs: int | None, teacher: dict, run_dir: Path, threads: int | None = None) -> list[str]:
    """The recipe with one teacher, no labels-only baseline, no wandb."""
    out = [
        f"seed={seed}",
        f"run_dir={run_dir}",
        f"teachers=[{json.dumps(teacher)}]",  # JSON is YAML
        "baseline.enabled=false",
        "loggers={run_dir: {}}",  # the recipe's loggers minus wandb (offline wandb writes files)
    ]
    if epochs is not None:
        out.append(f"distil.epochs={epochs}")
    if threads is not None:
        out.append(f"threads={threads}")
    return out


def write_job(run, cap: _Capture, args, job_dir: Path, teacher_dir: Path) -> dict:
    """Write the torchdistill job of a LiSER run once its label stage is done (data, teacher
    logits, the student's initial weights, the data order, the hyper-parameters)."""
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from liser_core import ClipDataset
    from liser_core.config import plain
    from liser_core.stages.common import lone_batch as _lone

    cfg, corpus, space = run.config, run.corpus, run.label_space
    if run.teachers[TEACHER].label_space != space:
        raise SystemExit("the teacher's classes differ from the corpus's: this benchmark needs an identity label map")
    losses = {lc.name: lc for lc in cfg.distil.losses}
    if set(losses) != {"kl", "ce"}:
        raise SystemExit(f"this benchmark maps the recipe's kl + ce onto KDLoss; the recipe has {sorted(losses)}")

    # the distillation set exactly as the engine builds it: pool (labels hidden), then labeled
    pool, labeled = list(corpus.split("unlabeled")), list(corpus.split("labeled"))
    if not cfg.distil.include_labeled:
        labeled = []
    clips = pool + labeled
    rate = run.student.sample_rate
    test = list(corpus.split("test"))
    if any(c.sample_rate != rate for c in clips + test):
        raise SystemExit("synth_av clips are expected at the student's rate (no resampling here)")
    audio, lengths = _pad(clips)
    labels = np.array([-1] * len(pool) + [space.index(c.label) for c in labeled], dtype=np.int64)
    test_audio, test_lengths = _pad(test)
    test_labels = np.array([space.index(c.label) for c in test], dtype=np.int64)

    # LiSER's per-epoch data order: engine.distil shuffles with ClipDataset.loader(seed = seed +
    # 1000 + epoch); the same loader over stand-in clips (no audio read) gives the same batches,
    # which torchdistill's sampler replays (the first-epoch losses in the table check it)
    n, bs = len(clips), int(cfg.distil.batch_size)
    drop_last = _lone(range(n), bs)
    stand_in = ClipDataset([dataclasses.replace(c, audio=np.zeros(1, np.float32), frames=None) for c in clips], space, rate)
    orders = []
    for epoch in range(int(cfg.distil.epochs)):
        dl = stand_in.loader(bs, shuffle=True, seed=int(cfg.seed) + 1000 + epoch, drop_last=drop_last)
        orders.append(torch.cat([b.index for b in dl]))
    tensors = {
        "audio": torch.from_numpy(audio),
        "lengths": torch.from_numpy(lengths),
        "labels": torch.from_numpy(labels),
        "orders": torch.stack(orders).long().contiguous(),
        "test_audio": torch.from_numpy(test_audio),
        "test_lengths": torch.from_numpy(test_lengths),
        "test_labels": torch.from_numpy(test_labels),
    }
    if args.teacher == "online":  # the teacher runs in torchdistill: its input, not its output
        tensors["frames"] = torch.from_numpy(np.stack([c.frames for c in clips]))
    else:  # written when the distil stage starts: the label stage has run
        tensors["teacher_logits"] = cap.logits.float().contiguous()
        if torch.isnan(tensors["teacher_logits"]).any():
            raise SystemExit("a distillation clip was skipped as bad; this benchmark needs all of them")
    save_file(tensors, str(job_dir / "data.safetensors"))
    save_file({k: v.contiguous() for k, v in cap.init_state.items()}, str(job_dir / "student_init.safetensors"))
    job = {
        "seed": int(cfg.seed),
        "threads": int(cfg.threads or torch.get_num_threads()),
        "teacher": args.teacher,
        "teacher_dir": str(teacher_dir),
        "epochs": int(cfg.distil.epochs),
        "batch_size": bs,
        "drop_last": drop_last,
        "lr": float(cfg.distil.lr),
        "weight_decay": float(cfg.distil.weight_decay),
        "grad_clip": float(cfg.distil.grad_clip),
        "temperature": float(losses["kl"].options.get("temperature", 4.0)),
        "kl_weight": float(losses["kl"].weight),
        "ce_weight": float(losses["ce"].weight),
        "eval_batch_size": int(cfg.evaluate.batch_size),
        "stage_seed": int(cfg.seed) * 1000 + 3,  # LiSER reseeds torch so before its distil stage
        "sample_rate": rate,
        "label_space": space.to_dict(),
        "student": {"name": str(cfg.student.name), "options": plain(cfg.student.options)},
    }
    (job_dir / "job.json").write_text(json.dumps(job, indent=1))
    unlabeled_batches = sum(
        int(not bool((torch.from_numpy(labels)[o[i : i + bs]] >= 0).any())) for o in orders for i in range(0, len(o), bs)
    )
    return {
        "unlabeled_batches": unlabeled_batches,  # batches where plain KDLoss would give CE = NaN
        "n_distil": n,
        "n_test": len(test),
        "epochs": len(orders),
        "steps": sum(len(o) for o in orders) // bs if drop_last else len(orders) * -(-n // bs),
    }


def run_pair(seed: int, args, work: Path) -> tuple[dict, dict]:
    """Run the recipe in LiSER and the same job in torchdistill: one after the other, or (with
    ``--concurrent``) torchdistill started when LiSER's distil stage starts. Returns both rows."""
    import torch

    from liser_core import load_plugins
    from liser_core.engine import run

    # the first optimiser of a process imports torch._dynamo (seconds); the teach stage, when it
    # fits, would absorb that, a loaded teacher leaves it to distil: pay it here, untimed, as the
    # torchdistill worker does before its clock starts
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))])
    host = load_plugins()
    cap = _Capture()
    host.pm.register(cap, name="vs_torchdistill_capture")
    job_dir = work / f"seed{seed}"
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "result.json").unlink(missing_ok=True)
    (job_dir / "ready").unlink(missing_ok=True)
    # the teacher is fitted once per seed and fit setting, then loaded (the teach stage is not
    # timed, and a loaded teacher gives the same weights): reruns are ~30 s per seed shorter
    teacher_cfg = recipe_teacher(args.teacher_epochs)
    fit_key = hashlib.sha1(json.dumps(teacher_cfg, sort_keys=True).encode()).hexdigest()[:8]
    cache = work / "teachers" / f"seed{seed}-{TEACHER}-{fit_key}"
    if (cache / "config.json").is_file() and not args.refit_teacher:
        teacher_cfg["checkpoint"] = str(cache)
    run_dir = job_dir / "liser"
    meta: dict = {}
    worker_proc = []

    def start_torchdistill(run):
        teacher_dir = cache if "checkpoint" in teacher_cfg else run.run_dir / "teachers" / TEACHER
        meta.update(write_job(run, cap, args, job_dir, teacher_dir))
        if args.concurrent:  # both clocks start together: wait until the worker is about to start its own
            worker_proc.append(start_worker(job_dir))
            while not (job_dir / "ready").exists():
                if worker_proc[0].poll() is not None:
                    finish_worker(job_dir, worker_proc[0])  # exits with the worker's log
                time.sleep(0.02)

    # torchdistill's timed part corresponds to LiSER's distil stage (cached teacher) or to its
    # label + distil stages (online teacher): the job is written when that part starts
    cap.start_stage, cap.on_start = ("label" if args.teacher == "online" else "distil"), start_torchdistill
    ctx = run(str(RECIPE), liser_overrides(seed, args.epochs, teacher_cfg, run_dir, args.threads), host=host)
    if "checkpoint" not in teacher_cfg:
        shutil.copytree(ctx.run_dir / "teachers" / TEACHER, cache, dirs_exist_ok=True)
    td = finish_worker(job_dir, worker_proc[0] if worker_proc else start_worker(job_dir))
    res = ctx.results()["student"]
    timed = ("label", "distil") if args.teacher == "online" else ("distil",)
    li = {
        "seconds": sum(ctx.stage_seconds[s] for s in timed),
        "cpu_seconds": sum(cap.cpu[s] for s in timed),
        "minor_faults": sum(cap.faults[s] for s in timed),
        "accuracy": res["accuracy"],
        "uar": res["uar"],
        "loss_first": cap.distil_loss[0],
        "loss_last": cap.distil_loss[-1],
        "epoch_median": statistics.median(cap.distil_epoch_s),
        "epoch_min": min(cap.distil_epoch_s),
        **meta,
    }
    return li, td


# ---------------------------------------------------------------------------------------------
# torchdistill side (its own env, a subprocess)
# ---------------------------------------------------------------------------------------------


def lr_lambda_for(total_steps: int):
    """The schedule of the job (LiSER's recipe): linear warm-up over min(total/20, 50) steps,
    then cosine to 5 % of the learning rate; checked against liser_core.training below."""
    warmup = max(1, min(total_steps // 20, 50))

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return schedule


def worker(job_dir: Path) -> None:
    """Runs inside benchmarks/.envs/torchdistill: distil with a DistillationBox, evaluate, and
    write result.json."""
    import logging

    import torch
    from safetensors.torch import load_file
    from torch import nn
    from torchdistill.core.distillation import get_distillation_box
    from torchdistill.core.interfaces.registry import register_forward_proc_func
    from torchdistill.losses.mid_level import KDLoss
    from torchdistill.losses.registry import register_mid_level_loss
    from torchdistill.misc.log import MetricLogger

    from liser_common.metrics import classification_metrics
    from liser_core import Batch, load_plugins
    from liser_core.checkpoint import load_component
    from liser_core.config import TrainConfig
    from liser_core.labels import LabelSpace
    from liser_core.training import make_optimizer

    logging.getLogger().setLevel(logging.WARNING)  # torchdistill logs to the root logger
    job = json.loads((job_dir / "job.json").read_text())
    torch.set_num_threads(job["threads"])
    data = load_file(str(job_dir / "data.safetensors"))
    space = LabelSpace.from_dict(job["label_space"])
    host = load_plugins()

    # -- the models -------------------------------------------------------------------------
    student = host.registries.student.build(job["student"]["name"], label_space=space, **job["student"]["options"])
    student.load_state_dict(load_file(str(job_dir / "student_init.safetensors")), strict=True)

    class CachedTeacher(nn.Module):
        """The teacher's logits over the distillation set, looked up by clip index."""

        def __init__(self, logits):
            super().__init__()
            self.register_buffer("logits", logits)

        def forward(self, index):
            return self.logits[index]

    if job["teacher"] == "online":
        teacher = load_component(job["teacher_dir"], host.registries.teacher, kind="teacher")
    else:
        teacher = CachedTeacher(data["teacher_logits"])
    teacher.eval()  # torchdistill leaves the teacher's train/eval mode as it was given

    # -- the data ---------------------------------------------------------------------------
    class DistilSet(torch.utils.data.Dataset):
        """(sample, target): sample = (audio, length, clip index[, frames]); target -1 = unlabeled."""

        def __init__(self, d, frames):
            self.audio, self.lengths, self.labels = d["audio"], d["lengths"], d["labels"]
            self.frames = d["frames"] if frames else None

        def __len__(self):
            return len(self.labels)

        def __getitem__(self, i):
            sample = (self.audio[i], self.lengths[i], i)
            if self.frames is not None:
                sample += (self.frames[i].float() / 255.0,)  # as LiSER's collate does
            return sample, self.labels[i]

    class ReplaySampler(torch.utils.data.Sampler):
        """Yields one given permutation per epoch (LiSER's data order)."""

        def __init__(self, data_source, orders):
            self.orders, self.epoch = orders, 0

        def __len__(self):
            return len(self.orders[0])

        def __iter__(self):
            order = self.orders[self.epoch % len(self.orders)]
            self.epoch += 1
            return iter(order)

    # -- forward procs and the loss, registered the way torchdistill extensions are --------
    @register_forward_proc_func
    def liser_student_forward(model, sample_batch, targets=None, supp_dict=None, **kwargs):
        return model(sample_batch[0], sample_batch[1]).logits

    @register_forward_proc_func
    def cached_teacher_forward(model, sample_batch, targets=None, supp_dict=None, **kwargs):
        return model(sample_batch[2])

    @register_forward_proc_func
    def liser_teacher_forward(model, sample_batch, targets=None, supp_dict=None, **kwargs):
        audio, lengths, index, frames = sample_batch
        batch = Batch(audio=audio, lengths=lengths, sample_rate=job["sample_rate"], labels=targets,
                      clip_ids=[], index=index, frames=frames)
        return model(batch).logits

    @register_mid_level_loss
    class LabeledKDLoss(KDLoss):
        """KDLoss, with CE over the labeled clips only (``ignore_index=-1``). A batch without
        labeled clips gets beta * T^2 * KL alone: plain KDLoss would return CE = NaN there, and
        with ``targets=None`` it returns KL without beta * T^2."""

        def forward(self, student_io_dict, teacher_io_dict, targets=None, *args, **kwargs):
            if targets is not None and bool((targets >= 0).any()):
                return super().forward(student_io_dict, teacher_io_dict, targets, *args, **kwargs)
            soft = super().forward(student_io_dict, teacher_io_dict, None)
            return self.beta * self.temperature**2 * soft

    # -- the schedule is the job's: check it against LiSER's, step by step ------------------
    n = len(data["labels"])
    bs = job["batch_size"]
    steps_per_epoch = n // bs if job["drop_last"] else -(-n // bs)
    total = max(1, job["epochs"] * steps_per_epoch)
    schedule = lr_lambda_for(total)
    _, ref = make_optimizer([nn.Parameter(torch.zeros(1))], TrainConfig(lr=1.0), total)  # also imports torch._dynamo
    assert all(abs(schedule(s) - ref.lr_lambdas[0](s)) < 1e-12 for s in range(total + 1)), "schedule differs"

    online = job["teacher"] == "online"
    train_config = {
        "num_epochs": job["epochs"],
        "train_data_loader": {
            "dataset_id": "distil",
            "sampler": {"class_or_func": ReplaySampler, "kwargs": {"orders": data["orders"].tolist()}},
            # own generator: the DataLoader's per-epoch base seed then leaves torch's global RNG
            # (dropout) alone, as in LiSER, whose loaders carry a seeded generator
            "kwargs": {"batch_size": bs, "num_workers": 0, "drop_last": job["drop_last"],
                       "generator": torch.Generator()},
        },
        "teacher": {
            "forward_proc": "liser_teacher_forward" if online else "cached_teacher_forward",
            "requires_grad": False,
        },
        "student": {"forward_proc": "liser_student_forward", "requires_grad": True},
        "optimizer": {
            "key": "AdamW",
            "kwargs": {"lr": job["lr"], "weight_decay": job["weight_decay"]},
            "max_grad_norm": job["grad_clip"] or None,
        },
        "scheduler": {"key": "LambdaLR", "kwargs": {"lr_lambda": schedule}, "scheduling_step": 1},
        "criterion": {
            "key": "WeightedSumLoss",
            "kwargs": {
                "sub_terms": {
                    "kd": {
                        "criterion": {
                            "key": "LabeledKDLoss",
                            "kwargs": {
                                "student_module_path": ".", "student_module_io": "output",
                                "teacher_module_path": ".", "teacher_module_io": "output",
                                "temperature": job["temperature"],
                                "alpha": job["ce_weight"], "beta": job["kl_weight"],
                                "reduction": "batchmean", "ignore_index": -1,
                            },
                        },
                        "weight": 1.0,
                    }
                }
            },
        },
    }
    device = torch.device("cpu")
    dataset_dict = {"distil": DistilSet(data, online)}

    # -- train: torchdistill's example loop (examples/torchvision/image_classification.py) ----
    torch.manual_seed(job["stage_seed"])
    (job_dir / "ready").touch()  # with --concurrent, LiSER's timed stage starts now too
    t0, cpu0, faults0 = time.perf_counter(), time.process_time(), _minor_faults()
    box = get_distillation_box(teacher, student, dataset_dict, train_config, device, None, False, 1)
    t_box = time.perf_counter() - t0
    epoch_loss, epoch_s = [], []
    for epoch in range(box.num_epochs):
        t_epoch = time.perf_counter()
        box.pre_epoch_process(epoch=epoch)
        metric_logger = MetricLogger(delimiter="  ")
        for sample_batch, targets, supp_dict in metric_logger.log_every(box.train_data_loader, 1000, f"Epoch: [{epoch}]"):
            sample_batch, targets = [t.to(device) for t in sample_batch], targets.to(device)
            loss = box.forward_process(sample_batch, targets, supp_dict)
            box.post_forward_process(loss=loss)
            metric_logger.update(loss=loss.item(), lr=box.optimizer.param_groups[0]["lr"])
            if not torch.isfinite(loss):
                raise ValueError(f"the training loop was broken due to loss = {loss}")
        box.post_epoch_process()
        epoch_s.append(time.perf_counter() - t_epoch)
        epoch_loss.append(metric_logger.meters["loss"].global_avg)
    box.clean_modules()
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    faults = _minor_faults() - faults0

    # -- evaluate on the test split, with LiSER's metric code --------------------------------
    student.eval()
    logits = []
    with torch.inference_mode():
        for i in range(0, len(data["test_labels"]), job["eval_batch_size"]):
            sl = slice(i, i + job["eval_batch_size"])
            logits.append(student(data["test_audio"][sl], data["test_lengths"][sl]).logits)
    metrics, _ = classification_metrics(torch.cat(logits), data["test_labels"], len(space))
    import torchdistill

    result = {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "minor_faults": faults,
        "box_seconds": t_box,
        "accuracy": metrics["accuracy"],
        "uar": metrics["uar"],
        "loss_first": epoch_loss[0],
        "loss_last": epoch_loss[-1],
        "epoch_median": statistics.median(epoch_s),
        "epoch_min": min(epoch_s),
        "torchdistill": torchdistill.__version__,
        "threads": torch.get_num_threads(),
    }
    (job_dir / "result.json").write_text(json.dumps(result, indent=1))


def start_worker(job_dir: Path) -> subprocess.Popen:
    log = open(job_dir / "worker.log", "w")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([str(env_python()), __file__, "--_worker", str(job_dir)], stdout=log, stderr=subprocess.STDOUT)


def finish_worker(job_dir: Path, proc: subprocess.Popen) -> dict:
    rc = proc.wait()
    result = job_dir / "result.json"
    if rc != 0 or not result.exists():
        sys.exit(f"torchdistill worker failed (exit {rc}):\n{(job_dir / 'worker.log').read_text()[-6000:]}")
    return json.loads(result.read_text())


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def _ms(values) -> str:
    from liser_common.metrics import mean_std

    m, s = mean_std(values)
    return f"{m:.3f} ± {s:.3f}"


def report(rows: list[tuple[int, dict, dict]], args) -> None:
    import platform

    import torch

    from liser_common.metrics import mean_std

    lw = rows[0][1]
    td_version = rows[0][2]["torchdistill"]
    what = "label + distil stages" if args.teacher == "online" else "distil stage"
    print()
    print(f"{'':>4}  {'wall seconds':^27}   {'CPU seconds':^27}   {'LiSER':^13}   {'torchdistill':^13}")
    print(f"{'seed':>4}  {'LiSER':>8} {'tdistill':>8} {'td/LiSER':>9}   {'LiSER':>8} {'tdistill':>8} {'td/LiSER':>9}   "
          f"{'WA':>6} {'UAR':>6}   {'WA':>6} {'UAR':>6}   {'epoch-1 loss LiSER / td':>25}")
    for seed, li, td in rows:
        print(f"{seed:>4}  {li['seconds']:>8.1f} {td['seconds']:>8.1f} {td['seconds'] / li['seconds']:>8.2f}x   "
              f"{li['cpu_seconds']:>8.1f} {td['cpu_seconds']:>8.1f} {td['cpu_seconds'] / li['cpu_seconds']:>8.2f}x   "
              f"{li['accuracy']:>6.3f} {li['uar']:>6.3f}   {td['accuracy']:>6.3f} {td['uar']:>6.3f}   "
              f"{li['loss_first']:>12.4f} / {td['loss_first']:.4f}")

    def both(key):
        return [r[1][key] for r in rows], [r[2][key] for r in rows]

    print()
    print(f"{'mean ± std over seeds':<27} {'LiSER':>16} {'torchdistill ' + td_version:>20} {'td / LiSER':>11}")
    for label, key in (("wall seconds (timed part)", "seconds"), ("CPU seconds (timed part)", "cpu_seconds"),
                       ("median epoch wall seconds", "epoch_median"), ("fastest epoch wall seconds", "epoch_min"),
                       ("test WA (accuracy)", "accuracy"), ("test UAR", "uar")):
        li, td = both(key)
        ratio = f"{mean_std(td)[0] / mean_std(li)[0]:>10.2f}x" if "seconds" in label else ""
        print(f"{label:<27} {_ms(li):>16} {_ms(td):>20} {ratio:>11}")
    li, td = both("seconds")
    ratio = mean_std(td)[0] / mean_std(li)[0]
    print(f"=> LiSER {ratio:.2f}x faster" if ratio >= 1 else f"=> LiSER {1 / ratio:.2f}x slower", end="")
    li, td = both("uar")
    print(f"; UAR difference (LiSER - torchdistill) {mean_std(li)[0] - mean_std(td)[0]:+.3f}")
    print()
    how = "logits cached after LiSER's label stage" if args.teacher == "cached" else "run by torchdistill on every batch"
    print(f"job: synth_av seeds {', '.join(str(r[0]) for r in rows)}; teacher {TEACHER} ({how}); student "
          f"logmel_cnn; {lw['n_distil']} distillation clips, {lw['epochs']} epochs, {lw['steps']} steps; "
          f"test split {lw['n_test']} clips" + (
              f"; {sum(r[1]['unlabeled_batches'] for r in rows)} batches without a labeled clip (CE left out on both sides)"
              if all("unlabeled_batches" in r[1] for r in rows) else ""))
    order = (f"concurrently (torchdistill started as LiSER's {what} started)" if args.concurrent
             else "one after the other")
    print(f"timed: LiSER {what}; torchdistill get_distillation_box + training loop; run {order}. "
          f"{rows[0][2]['threads']} torch threads, glibc malloc {'thresholds fixed' if args.malloc == 'fixed' else 'as is'} "
        f"(minor page faults LiSER / torchdistill: {sum(r[1].get('minor_faults', 0) for r in rows):,} / "
        f"{sum(r[2].get('minor_faults', 0) for r in rows):,}), torch {torch.__version__}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs; 1-min load average from {min(r[1]['load'][0] for r in rows):.1f} to "
          f"{max(max(r[1]['load']) for r in rows):.1f} at the seeds' starts and ends (others share the machine: "
          "wall and CPU times rise with the load; the fastest epoch is the least disturbed figure)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--setup", action="store_true", help="create/check benchmarks/.envs/torchdistill and exit")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=None, help="distillation epochs (default: the recipe's, 25)")
    ap.add_argument("--teacher-epochs", type=int, default=None, help="teacher fitting epochs (default 15)")
    ap.add_argument("--teacher", choices=["cached", "online"], default="cached")
    ap.add_argument("--threads", type=int, default=None, help="torch threads on both sides (default: the recipe's, 2)")
    ap.add_argument("--concurrent", action="store_true",
                    help="start torchdistill when LiSER's timed stages start, both on 1 thread (default: one after the other): "
                    "on a shared machine both then see the same background load")
    ap.add_argument("--refit-teacher", action="store_true", help="fit the teacher again instead of loading the one of an earlier run")
    ap.add_argument("--report", action="store_true",
                    help="print the table from the rows saved by earlier runs with these settings (run nothing)")
    ap.add_argument("--quick", action="store_true", help="smoke test: seed 0, 3 epochs, teacher fitted 4 epochs")
    ap.add_argument("--work", type=Path, default=HERE / ".envs" / "work", help="exchange files and LiSER run dirs")
    ap.add_argument(
        "--malloc", choices=["fixed", "default"], default="fixed",
        help="fixed (default): both processes run with the same pinned glibc malloc thresholds "
        "(FIXED_MALLOC); default: glibc's own, whose page-fault count per step differs from run to run",
    )
    ap.add_argument("--_worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.malloc == "fixed" and not args._worker and not args.report and not args.setup:
        if any(os.environ.get(k) != v for k, v in FIXED_MALLOC.items()):
            # glibc reads these at start-up: run again with them (the worker inherits them)
            os.environ.update(FIXED_MALLOC)
            os.execv(sys.executable, [sys.executable, *sys.argv])
    if args._worker:
        worker(args._worker)
        return
    if args.setup:
        setup_env()
        return
    if env_ready() is None:
        sys.exit(f"{ENV} is missing or broken: run  python {Path(__file__).relative_to(ROOT)} --setup")
    if args.concurrent:
        args.threads = args.threads or 1
    if args.quick:
        args.seeds, args.epochs, args.teacher_epochs = args.seeds[:1], args.epochs or 3, args.teacher_epochs or 4
    import logging

    logging.getLogger("liser").setLevel(logging.WARNING)
    # every seed's row is saved, so seeds measured in separate runs (a shared machine) can be
    # tabulated together with --report
    saved = args.work / "rows" / f"{args.teacher}{'-concurrent' if args.concurrent else ''}{'-sysmalloc' if args.malloc == 'default' else ''}-threads{args.threads or 'recipe'}-epochs{args.epochs or 'recipe'}-fit{args.teacher_epochs or 'recipe'}"
    rows = []
    for seed in args.seeds:
        row_file = saved / f"seed{seed}.json"
        if args.report:
            if not row_file.is_file():
                sys.exit(f"no saved row for seed {seed} with these settings ({row_file})")
            d = json.loads(row_file.read_text())
            rows.append((seed, d["liser"], d["torchdistill"]))
            continue
        t0, load0 = time.perf_counter(), os.getloadavg()[0]
        li, td = run_pair(seed, args, args.work)
        li["load"] = (load0, os.getloadavg()[0])
        rows.append((seed, li, td))
        saved.mkdir(parents=True, exist_ok=True)
        row_file.write_text(json.dumps({"liser": li, "torchdistill": td}, indent=1))
        print(f"seed {seed}: LiSER {li['seconds']:.1f}s UAR {li['uar']:.3f} | torchdistill {td['seconds']:.1f}s "
              f"UAR {td['uar']:.3f}  [{time.perf_counter() - t0:.0f}s with teacher fitting and I/O]", flush=True)
    report(rows, args)


if __name__ == "__main__":
    main()
