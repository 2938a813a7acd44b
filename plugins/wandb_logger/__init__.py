"""``wandb`` logger: Weights & Biases, offline unless the user is logged in.

``mode="auto"`` logs online when an API key is available (``WANDB_API_KEY`` or ``~/.netrc``)
and offline otherwise (sync later with ``wandb sync RUN_DIR/wandb/offline-run-*``). A wandb
failure is reported and never stops the run.
"""

from __future__ import annotations

import logging
import netrc
import os
from typing import Literal

from omegaconf import OmegaConf

from liser_core import hookimpl

log = logging.getLogger("liser.wandb")


def logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators(os.environ.get("WANDB_BASE_URL", "api.wandb.ai").split("//")[-1])
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


class WandbLogger:
    def __init__(
        self,
        mode: Literal["auto", "online", "offline", "disabled"] = "auto",
        project: str = "liser",
        entity: str | None = None,
        tags: list[str] | None = None,
    ):
        self.mode = mode
        self.project = project
        self.entity = entity
        self.tags = list(tags or [])
        self.wb_run = None

    @hookimpl
    def liser_run_start(self, run):
        mode = self.mode
        if mode == "auto":  # wandb's own switch first (WANDB_MODE), then: online when logged in
            env = os.environ.get("WANDB_MODE", "").strip().lower()
            mode = {"dryrun": "offline", "run": "online"}.get(env, env) if env in ("online", "offline", "disabled", "dryrun",
                                                                             "run") else ("online" if logged_in() else "offline")
        if mode == "disabled":
            return
        import wandb  # optional dependency: `pip install liser[wandb]`

        self.wb_run = wandb.init(
            project=self.project,
            entity=self.entity,
            name=run.run_dir.name,
            dir=str(run.run_dir),
            mode=mode,
            tags=self.tags,
            config=OmegaConf.to_container(run.config, resolve=True),
            settings=wandb.Settings(silent=True, console="off"),
        )
        log.info("wandb %s run in %s", mode, self.wb_run.dir)

    @hookimpl
    def liser_epoch_end(self, stage, model, epoch, metrics, replayed):
        # a resumed run's replayed epochs are logged too: each session is a wandb run of its own (not
        # linked), so the last one holds the whole history
        if self.wb_run is not None:
            self.wb_run.log({f"{stage}/{model}/{k}": v for k, v in metrics.items()} | {"epoch": epoch + 1})

    @hookimpl
    def liser_evaluation(self, result):
        if self.wb_run is not None:
            for k, v in result.metrics.items():
                self.wb_run.summary[f"{result.split}/{result.model}/{k}"] = v

    @hookimpl
    def liser_run_end(self, error):
        if self.wb_run is not None:
            self.wb_run.finish(exit_code=1 if error else 0)
            self.wb_run = None


@hookimpl
def liser_register_loggers(registry):
    registry.register("wandb", WandbLogger, summary="Weights & Biases (offline unless logged in)")
