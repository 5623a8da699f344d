"""TensorBoard: RUN/tensorboard holds every scalar a run logs, fine-tuning's evaluations, and the
recipe as it runs (hyperparameters and text). `tensorboard --logdir RUN/tensorboard` shows it.

A resumed run writes a new event file into the same folder, starting with a purge marker at the
step after its checkpoint: the steps the stopped segment logged past that checkpoint are logged
again by the resumed one, and TensorBoard's readers drop the earlier ones, so each curve holds
each step once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tp_loggers.common import flat, need, tag

FOLDER = "tensorboard"  # under the run folder
FLUSH_SECS = 30  # a live TensorBoard sees new points this often at most (and at each log line)


class TensorBoardLogger:
    """TensorBoard event files in RUN/tensorboard (needs `pip install tensorboard`).

    Every logged scalar as `train/<key>`, fine-tuning's evaluations as `eval/<set>.<metric>`,
    the recipe as it runs as hyperparameters and as text."""

    @classmethod
    def check(cls) -> None:
        need("torch.utils.tensorboard", "tensorboard", "tensorboard")

    def __init__(self) -> None:
        self.writer: Any = None

    def tp_on_train_start(self, run: dict[str, Any]) -> None:
        import yaml
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        start = int(run["start_step"])
        self.writer = SummaryWriter(str(Path(run["out"]) / FOLDER), purge_step=start + 1,
                                    flush_secs=FLUSH_SECS)
        recipe = run.get("resolved") or run["recipe"]
        text = yaml.safe_dump(recipe, sort_keys=False)
        self.writer.add_text("recipe", "".join(f"    {line}\n" for line in text.splitlines()),
                             start)  # indented: a code block in TensorBoard's markdown
        # the HPARAMS dashboard: one row per run, its loss curve beside its options
        for summary in hparams(flat(recipe), {"train/loss": 0.0}):
            self.writer.file_writer.add_summary(summary)
        self.writer.flush()

    def tp_on_log(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(tag(key), value, step)
        self.writer.flush()  # a write error (disk full) surfaces here, not in a thread later

    def tp_on_train_end(self, summary: dict[str, Any]) -> None:
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            writer, self.writer = self.writer, None
            writer.close()
