"""Weights & Biases: one W&B run per tp run, its config the recipe as it runs, its history every
scalar tp logs and fine-tuning's evaluations. `WANDB_MODE=offline` writes it under RUN/wandb for
`wandb sync RUN/wandb/offline-run-*` later; WANDB_PROJECT / WANDB_ENTITY choose where it goes
(project `tp` by default).

The W&B run id is kept in RUN/wandb-id, so `tp pretrain --resume RUN` continues the same W&B run
(`resume="allow"`).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

from tp_loggers.common import need, tag

ID_FILE = "wandb-id"  # in the run folder


def run_id(out: Path) -> str:
    """The run folder's W&B id: the one stored there, or a new one stored (atomically)."""
    from tpcli.files import write_text

    path = out / ID_FILE
    if path.is_file():
        return path.read_text().strip()
    new = secrets.token_hex(4)
    write_text(path, new + "\n")
    return new


class WandbLogger:
    """Weights & Biases, online or WANDB_MODE=offline (needs `pip install wandb`).

    The recipe as it runs as the W&B config, every logged scalar as its history (`train/<key>`,
    `eval/<set>.<metric>`); a resumed tp run continues its W&B run."""

    @classmethod
    def check(cls) -> None:
        need("wandb", "wandb", "wandb")

    def __init__(self) -> None:
        self.run: Any = None
        self.finished = False

    def tp_on_train_start(self, run: dict[str, Any]) -> None:
        import wandb

        out = Path(run["out"])
        self.run = wandb.init(dir=str(out), id=run_id(out), resume="allow",
                              project=os.environ.get("WANDB_PROJECT") or "tp", name=out.name,
                              config=run.get("resolved") or run["recipe"],
                              settings=wandb.Settings(console="off"))  # tp's own lines stay its

    def tp_on_log(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log({tag(k): v for k, v in metrics.items()}, step=step)

    def tp_on_train_end(self, summary: dict[str, Any]) -> None:
        self.finished = True

    def close(self) -> None:
        if self.run is not None:
            run, self.run = self.run, None
            run.finish(exit_code=0 if self.finished else 1)  # stopped or failed: not "finished"
