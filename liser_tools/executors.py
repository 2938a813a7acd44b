"""Executors: where the tasks of a grid run (``liser bench GRID --executor NAME``).

An executor runs *tasks* -- JSON-able dicts that :func:`liser_tools.gridtasks.run_task`
understands -- somewhere, and tells the driver when each one ended: with its result (the
dict ``run_task`` returned: ``ok``, ``rows``, ``error``) or *lost* (the process or node running
it died: SIGKILL, out of memory, a lost node, a preempted Slurm job). The driver
(:mod:`liser_tools.taskgraph`) decides what runs when, retries lost tasks and alone writes the
board; tasks share nothing but the filesystem.

Built in:

``local``  N worker processes on this machine (``--workers N``), torch threads split between
           them, one GPU each where there are GPUs (``CUDA_VISIBLE_DEVICES``);
``ray``    tasks on a Ray cluster (``--address auto|HOST:PORT``; ``local`` starts a private
           one), each with its CPUs and GPUs declared;
``slurm``  Slurm job arrays through ``submitit`` (partition, CPUs, GPUs, time, memory per task
           from the grid's ``executor:`` block or the command line); ``cluster=local`` runs the
           same jobs as local subprocesses (submitit's local executor).

A plugin adds one with :func:`register_executor` (or an entry point in the
``liser.executors`` group naming a factory ``f(**options) -> Executor``).

This module imports nothing heavy at import time: a spawned local worker sets its environment
(threads, GPU) before torch is imported.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("liser.bench")


@dataclass
class Resources:
    """What one task asks for."""

    cpus: int = 1
    gpus: int = 0


@dataclass
class Outcome:
    """How a submitted task ended: ``result`` (``run_task``'s dict) or ``lost`` (why not)."""

    task_id: str
    result: dict | None = None
    lost: str | None = None
    where: str = ""


class Executor(ABC):
    """Runs tasks somewhere; see the module doc. One driver uses one executor at a time."""

    name = "?"

    #: how many tasks it runs at once (the driver submits no more than this)
    capacity: int = 1

    def start(self) -> None:  # noqa: B027 - optional
        """Get ready (start workers, connect to the cluster)."""

    @abstractmethod
    def submit(self, tasks: list[tuple[str, dict, Resources]]) -> None:
        """Start these tasks (``(id, spec, resources)``); at most ``capacity`` run at once."""

    @abstractmethod
    def wait(self, timeout: float) -> list[Outcome]:
        """The tasks that ended since the last call, waiting up to ``timeout`` seconds for one."""

    @abstractmethod
    def cancel(self) -> None:
        """Stop every running task (Ctrl-C on the driver); their runs stay resumable."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release workers and connections."""

    def describe(self) -> str:
        return f"{self.name} ({self.capacity} at once)"

    def where(self, task_id: str) -> str:  # noqa: B027 - optional
        """Where a submitted task runs now (``--status`` shows it), or "" where the executor
        cannot tell before it ends."""
        return ""


#: name -> factory(**options) -> Executor
EXECUTORS: dict[str, Callable[..., Executor]] = {}
#: name -> who registered it ("liser", a distribution, or "code" for a call outside any package)
OWNERS: dict[str, str] = {}
#: names that several installed packages declare as entry points -> those packages (refused)
CLASHES: dict[str, list[str]] = {}
_WARNED: set[str] = set()


def register_executor(name: str, factory: Callable[..., Executor], *, owner: str = "code") -> None:
    """Make ``--executor NAME`` build ``factory(**options)`` (options: see :func:`make_executor`).
    A name is never taken over: registering a name again with another factory is refused (a
    package replacing ``local`` ran every grid on its own executor, silently)."""
    if name in EXECUTORS and EXECUTORS[name] is not factory:
        raise ValueError(f"executor {name!r} is already registered (by {OWNERS.get(name, '?')}): an executor's name "
                         "cannot be taken over; register yours under a name of its own")
    EXECUTORS[name] = factory
    OWNERS.setdefault(name, owner)


def executor_names() -> list[str]:
    _load_entry_points()
    return sorted(EXECUTORS)


def _load_entry_points() -> None:
    """The ``liser.executors`` entry points: a name LiSER or another package already has, or
    that two packages declare, is not loaded (a warning names them; ``--executor`` refuses a
    clashed name), never the first on ``sys.path`` silently."""
    from importlib.metadata import entry_points

    declared: dict[str, list] = {}
    for ep in entry_points(group="liser.executors"):
        declared.setdefault(ep.name, []).append(ep)
    for name, eps in sorted(declared.items()):
        dists = [getattr(getattr(ep, "dist", None), "name", None) or ep.value for ep in eps]
        if name in EXECUTORS and OWNERS.get(name) in dists and len(eps) == 1:
            continue  # loaded from this package before
        if name in EXECUTORS or len(eps) > 1:
            if len(eps) > 1 and name not in EXECUTORS:
                CLASHES[name] = dists
            if name not in _WARNED:
                _WARNED.add(name)
                if name in EXECUTORS:
                    log.warning("executor %r of %s not loaded: the name is %s's (rename its entry point)", name,
                                ", ".join(dists), OWNERS.get(name, "?"))
                else:
                    log.warning("executor %r is declared by %s: neither is loaded (uninstall one)", name,
                                " and ".join(dists))
            continue
        try:
            register_executor(name, eps[0].load(), owner=dists[0])
        except Exception as exc:  # noqa: BLE001 - a broken plugin is named, not fatal
            log.warning("executor plugin %s could not be loaded: %s", eps[0].value, exc)


def takes_option(name: str, option: str) -> bool:
    """Whether the executor registered as ``name`` takes ``option`` (its factory's signature)."""
    import inspect

    factory = EXECUTORS.get(name)
    if factory is None:
        return True  # an unknown name is refused by make_executor, naming the known ones
    params = inspect.signature(factory).parameters
    return option in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def make_executor(name: str, **options: Any) -> Executor:
    """The executor registered as ``name``, built with ``options`` (those it does not take are
    dropped: ``workers``, ``threads``, ``address``, ``cpus_per_task``, ``gpus_per_task``,
    ``partition``, ``timeout_min``, ``mem_gb``, ``folder``, ``cluster``)."""
    import inspect

    from liser_core.errors import ConfigError, close_matches

    names = executor_names()
    if name in CLASHES:
        raise ConfigError("--executor", f"executor {name!r} is declared by {' and '.join(CLASHES[name])}: which one is "
                          "meant cannot be told; uninstall one of them")
    if name not in EXECUTORS:
        raise ConfigError("--executor", f"unknown executor {name!r} (known: {', '.join(names)})", close_matches(name, names))
    factory = EXECUTORS[name]
    params = inspect.signature(factory).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        options = {k: v for k, v in options.items() if k in params}
    return factory(**options)


def _cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# -- local ----------------------------------------------------------------------------------------


def _local_worker(conn, env: dict[str, str]) -> None:
    """A local worker: set the environment, then run tasks from ``conn`` until told to stop."""
    os.environ.update(env)
    from liser_tools.gridtasks import run_task

    try:
        while True:
            spec = conn.recv()
            if spec is None:
                return
            conn.send(run_task(spec))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):  # Ctrl-C or the driver went away
        return


@dataclass
class _Slot:
    process: Any = None
    conn: Any = None
    task: str | None = None
    env: dict[str, str] = field(default_factory=dict)


class LocalExecutor(Executor):
    """``workers`` processes on this machine, each running one task at a time.

    Each worker gets ``threads`` torch threads (default: the CPUs split evenly) and, where
    CUDA GPUs exist, one of them (``CUDA_VISIBLE_DEVICES``, round robin). A worker that dies
    while running a task (SIGKILL, out of memory) is replaced and its task reported lost."""

    name = "local"

    def __init__(self, workers: int = 1, threads: int | None = None, gpus: int | None = None):
        if workers < 1:
            from liser_core.errors import ConfigError

            raise ConfigError("--workers", "must be >= 1")
        self.capacity = int(workers)
        self.threads = int(threads) if threads else max(1, _cpus() // self.capacity)
        self.gpus = _gpu_count() if gpus is None else int(gpus)
        self._slots: list[_Slot] = []
        self._done: list[Outcome] = []

    def task_threads(self) -> int:
        return self.threads

    def start(self) -> None:
        import multiprocessing as mp

        self._ctx = mp.get_context("spawn")  # no fork of a process that has torch's threads
        for i in range(self.capacity):
            env = {"OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
                   "LISER_WORKER": str(i)}
            if self.gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(i % self.gpus)
            slot = _Slot(env=env)
            self._spawn(slot)
            self._slots.append(slot)

    def _spawn(self, slot: _Slot) -> None:
        parent, child = self._ctx.Pipe()
        slot.process = self._ctx.Process(target=_local_worker, args=(child, slot.env), name=f"liser-worker-{slot.env['LISER_WORKER']}")
        slot.process.start()
        child.close()
        slot.conn = parent

    def submit(self, tasks: list[tuple[str, dict, Resources]]) -> None:
        for task_id, spec, _res in tasks:
            slot = next((s for s in self._slots if s.task is None), None)
            if slot is None:
                raise RuntimeError("local executor: more tasks submitted than workers")
            if not slot.process.is_alive():
                self._spawn(slot)
            slot.conn.send(spec)
            slot.task = task_id

    def wait(self, timeout: float) -> list[Outcome]:
        from multiprocessing.connection import wait as mp_wait

        busy = [s for s in self._slots if s.task is not None]
        if busy:
            mp_wait([s.conn for s in busy] + [s.process.sentinel for s in busy], timeout)
        out = []
        for s in busy:
            where = f"local worker {s.env['LISER_WORKER']} (pid {s.process.pid})"
            result = None
            try:
                if s.conn.poll():
                    result = s.conn.recv()
            except (EOFError, OSError):
                result = None
            if result is not None:
                out.append(Outcome(s.task, result=result, where=where))
                s.task = None
            elif not s.process.is_alive():
                code = s.process.exitcode
                why = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
                out.append(Outcome(s.task, lost=f"{where} died ({why})", where=where))
                s.task = None
                s.conn.close()
                self._spawn(s)  # a fresh worker in its place
        return out

    def where(self, task_id: str) -> str:
        slot = next((s for s in self._slots if s.task == task_id), None)
        return f"local worker {slot.env['LISER_WORKER']} (pid {slot.process.pid})" if slot is not None else ""

    def cancel(self) -> None:
        for s in self._slots:  # SIGTERM: a run in progress saves its state as interrupted
            if s.process is not None and s.process.is_alive():
                os.kill(s.process.pid, signal.SIGTERM)
        for s in self._slots:
            if s.process is not None:
                s.process.join(60)
                if s.process.is_alive():
                    s.process.kill()
                    s.process.join(5)
            s.task = None

    def close(self) -> None:
        for s in self._slots:
            if s.process is not None and s.process.is_alive():
                try:
                    s.conn.send(None)
                except (OSError, BrokenPipeError):
                    pass
        for s in self._slots:
            if s.process is not None:
                s.process.join(30)
                if s.process.is_alive():
                    s.process.kill()
                    s.process.join(5)
        self._slots = []

    def describe(self) -> str:
        gpus = f", GPUs round robin over {self.gpus}" if self.gpus else ""
        return f"local: {self.capacity} worker process(es), {self.threads} torch thread(s) each{gpus}"


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:  # noqa: BLE001
        return 0


# -- ray ------------------------------------------------------------------------------------------


def _ray_task(spec: dict) -> dict:
    from liser_tools.gridtasks import run_task

    return run_task(spec)


class RayExecutor(Executor):
    """Tasks on a Ray cluster: ``address`` ``auto`` (the cluster this machine belongs to),
    ``HOST:PORT``, or ``local`` (a private cluster of ``cpus`` CPUs started here and stopped at
    the end). Each task declares ``cpus_per_task`` CPUs (its torch threads) and
    ``gpus_per_task`` GPUs; Ray places it. A task whose worker or node dies is reported lost
    (Ray's own retries are off: the driver retries, resuming the run)."""

    name = "ray"

    def __init__(self, address: str | None = "auto", cpus_per_task: int = 1, gpus_per_task: float = 0,
                 cpus: int | None = None, workers: int | None = None):
        self.address = address or "auto"
        self.cpus_per_task = int(cpus_per_task or 1)
        self.gpus_per_task = float(gpus_per_task or 0)
        self.cpus = cpus
        self.limit = workers
        self._refs: dict[Any, str] = {}
        self._started_here = False

    def task_threads(self) -> int:
        return self.cpus_per_task

    def start(self) -> None:
        try:
            import ray
        except ImportError:
            from liser_core.errors import UsageError

            raise UsageError("--executor ray needs Ray: pip install 'liser[ray]'") from None
        self._ray = ray
        if self.address == "local":
            ray.init(num_cpus=self.cpus or _cpus(), include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
            self._started_here = True
        else:
            if ":" in self.address and not self.address.startswith(("ray://", "http")):  # HOST:PORT: fail fast
                import socket

                host, _, port = self.address.rpartition(":")
                try:
                    socket.create_connection((host, int(port)), timeout=10).close()
                except (OSError, ValueError) as exc:
                    from liser_core.errors import UsageError

                    raise UsageError(f"--executor ray: no Ray cluster at {self.address!r} ({exc}); start one (ray start "
                                     "--head) or use --address local for a private one on this machine") from None
            try:
                ray.init(address=self.address, log_to_driver=False, configure_logging=False)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                from liser_core.errors import UsageError

                raise UsageError(f"--executor ray: no Ray cluster at {self.address!r} ({_first_line(exc)}); start one "
                                 "(ray start --head) or use --address local for a private one on this machine") from None
        total = ray.cluster_resources()
        by_cpu = int(total.get("CPU", 1) // self.cpus_per_task)
        by_gpu = int(total.get("GPU", 0) // self.gpus_per_task) if self.gpus_per_task else by_cpu
        if min(by_cpu, by_gpu) < 1 and self.address != "local":  # an autoscaling cluster may add the nodes
            log.warning("--executor ray: the cluster at %r has %g CPU(s) and %g GPU(s) now; a task asks for %d CPU(s) "
                        "and %g GPU(s): tasks wait until nodes with them join (an autoscaler), else forever",
                        self.address, total.get("CPU", 0), total.get("GPU", 0), self.cpus_per_task, self.gpus_per_task)
        elif min(by_cpu, by_gpu) < 1:  # this machine's private cluster: no task could ever be placed
            from liser_core.errors import UsageError

            self.close()
            raise UsageError(f"--executor ray: the cluster at {self.address!r} has {total.get('CPU', 0):g} CPU(s) and "
                             f"{total.get('GPU', 0):g} GPU(s); a task asks for {self.cpus_per_task} CPU(s) and "
                             f"{self.gpus_per_task:g} GPU(s) (--cpus-per-task, --gpus-per-task), so none could run")
        self.capacity = max(1, min(by_cpu, by_gpu, self.limit or by_cpu))
        self._remote = ray.remote(_ray_task)

    def submit(self, tasks: list[tuple[str, dict, Resources]]) -> None:
        for task_id, spec, _res in tasks:
            ref = self._remote.options(num_cpus=self.cpus_per_task, num_gpus=self.gpus_per_task, max_retries=0,
                                       name=f"liser:{task_id}").remote(spec)
            self._refs[ref] = task_id

    def wait(self, timeout: float) -> list[Outcome]:
        ray = self._ray
        refs = list(self._refs)
        if not refs:
            time.sleep(min(timeout, 0.2))
            return []
        ready, rest = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready and rest:
            more, _ = ray.wait(rest, num_returns=len(rest), timeout=0)
            ready += more
        out = []
        for ref in ready:
            task_id = self._refs.pop(ref)
            try:
                out.append(Outcome(task_id, result=ray.get(ref), where="ray"))
            except ray.exceptions.RayTaskError as exc:  # run_task raised past its own handler
                out.append(Outcome(task_id, result={"id": task_id, "ok": False, "rows": [],
                                                    "error": _first_line(exc)}, where="ray"))
            except ray.exceptions.RayError as exc:  # the worker or its node died
                out.append(Outcome(task_id, lost=f"ray: {type(exc).__name__}: {_first_line(exc)}", where="ray"))
        return out

    def cancel(self) -> None:
        for ref in list(self._refs):
            try:
                self._ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished
                pass
        self._refs.clear()

    def close(self) -> None:
        if getattr(self, "_ray", None) is not None and self._ray.is_initialized():
            self._ray.shutdown()

    def describe(self) -> str:
        where = "a private local cluster" if self.address == "local" else f"the cluster at {self.address}"
        return (f"ray: {where}, {self.cpus_per_task} CPU(s)"
                + (f" and {self.gpus_per_task:g} GPU(s)" if self.gpus_per_task else "") + f" per task, {self.capacity} at once")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[-1][:300] if text else type(exc).__name__


# -- slurm (submitit) -----------------------------------------------------------------------------


def _slurm_task(spec: dict) -> dict:
    from liser_tools.gridtasks import run_task

    return run_task(spec)


class SlurmExecutor(Executor):
    """Slurm job arrays through ``submitit``: each round of tasks that became ready is
    submitted as one array (``slurm_array_parallelism`` = ``workers``). Per task:
    ``partition``, ``cpus_per_task``, ``gpus_per_task``, ``timeout_min``, ``mem_gb``.
    ``cluster``: ``slurm``, ``local`` (submitit's local executor: real subprocesses on this
    machine, for tests and laptops) or None (Slurm where ``sbatch`` exists, else local). A job
    that ends without a result (killed, preempted, timed out, node lost) is reported lost."""

    name = "slurm"

    def __init__(self, folder: str | os.PathLike = "slurm", cluster: str | None = None, partition: str | None = None,
                 cpus_per_task: int = 1, gpus_per_task: int = 0, timeout_min: int = 240, mem_gb: float | None = None,
                 workers: int | None = None, poll_s: float = 1.0):
        self.folder = Path(folder)
        self.cluster = cluster
        self.partition = partition
        self.cpus_per_task = int(cpus_per_task or 1)
        self.gpus_per_task = int(gpus_per_task or 0)
        self.timeout_min = int(timeout_min or 240)
        self.mem_gb = mem_gb
        self.capacity = int(workers or 64)
        self.poll_s = poll_s
        self._jobs: dict[str, Any] = {}

    def task_threads(self) -> int:
        return self.cpus_per_task

    def start(self) -> None:
        try:
            import submitit
        except ImportError:
            from liser_core.errors import UsageError

            raise UsageError("--executor slurm needs submitit: pip install 'liser[slurm]'") from None
        from liser_core.errors import UsageError

        self._submitit = submitit
        if self.cluster not in (None, "slurm", "local", "debug"):
            raise UsageError(f"--cluster {self.cluster!r}: choose slurm, local (submitit's local subprocesses) or "
                             "leave it out (Slurm where it is installed, else local)")
        try:
            self._ex = submitit.AutoExecutor(folder=str(self.folder / "%j"), cluster=self.cluster)
        except RuntimeError as exc:  # submitit: 'Could not detect "srun", are you indeed on a slurm cluster?'
            raise UsageError(f"--cluster {self.cluster}: no Slurm here ({_first_line(exc)}); --cluster local runs "
                             "the tasks as local subprocesses") from None
        if self._ex.cluster != "slurm":  # auto found no Slurm: say so, and stay within this machine
            cpus = max(1, _cpus() // self.cpus_per_task)
            if self.cluster is None:
                log.warning("--executor slurm: no Slurm on this machine (sbatch not found): submitit runs the tasks "
                            "as local subprocesses here, %d at once%s", min(self.capacity, cpus),
                            "; --partition and --gpus-per-task do not apply" if self.partition or self.gpus_per_task
                            else "")
            self.capacity = min(self.capacity, cpus)
        params: dict[str, Any] = {"timeout_min": self.timeout_min, "cpus_per_task": self.cpus_per_task,
                                  "name": "liser-bench", "slurm_array_parallelism": self.capacity}
        if self.gpus_per_task:
            params["gpus_per_node"] = self.gpus_per_task
        if self.mem_gb:
            params["mem_gb"] = self.mem_gb
        if self.partition:
            params["slurm_partition"] = self.partition
        self._ex.update_parameters(**params)

    def submit(self, tasks: list[tuple[str, dict, Resources]]) -> None:
        if not tasks:
            return
        with self._ex.batch():  # one job array per round
            jobs = [(task_id, self._ex.submit(_slurm_task, spec)) for task_id, spec, _res in tasks]
        for task_id, job in jobs:
            self._jobs[task_id] = job

    def wait(self, timeout: float) -> list[Outcome]:
        from submitit.core.utils import FailedJobError, UncompletedJobError

        deadline = time.monotonic() + timeout
        while True:
            out = []
            for task_id, job in list(self._jobs.items()):
                if not job.done():
                    continue
                del self._jobs[task_id]
                where = f"slurm job {job.job_id}"
                try:
                    out.append(Outcome(task_id, result=job.result(), where=where))
                except UncompletedJobError as exc:  # killed, preempted, timed out
                    out.append(Outcome(task_id, lost=f"{where} ended without a result ({_first_line(exc)})", where=where))
                except FailedJobError as exc:
                    out.append(Outcome(task_id, result={"id": task_id, "ok": False, "rows": [],
                                                        "error": _first_line(exc)}, where=where))
            if out or not self._jobs or time.monotonic() >= deadline:
                return out
            time.sleep(min(self.poll_s, max(0.0, deadline - time.monotonic())))

    def cancel(self) -> None:
        for job in self._jobs.values():
            try:
                job.cancel(check=False)
            except Exception:  # noqa: BLE001 - already ended
                pass
        self._jobs.clear()

    def describe(self) -> str:
        part = f" on partition {self.partition}" if self.partition else ""
        return (f"slurm ({self.cluster or 'auto'}){part}: {self.cpus_per_task} CPU(s)"
                + (f", {self.gpus_per_task} GPU(s)" if self.gpus_per_task else "")
                + f", {self.timeout_min} min per task, {self.capacity} at once; job files in {self.folder}")


register_executor("local", LocalExecutor, owner="liser")
register_executor("ray", RayExecutor, owner="liser")
register_executor("slurm", SlurmExecutor, owner="liser")
