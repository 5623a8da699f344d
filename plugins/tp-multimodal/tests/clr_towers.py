"""The clr two-process test's model and batch, and (run as a script) one of its two gloo
processes: `python clr_towers.py RANK PORT OUT` saves that rank's losses and gradients."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from tp_multimodal.clr import ClrTarget
from tpcli.model.module import BuildContext, Features

WIDTHS = {"stream_0": 6, "stream_1": 9}  # text and image towers of different widths
TEXT_IN, IMAGE_IN, ROWS = 7, 11, 8


class Towers(nn.Module):
    """Stand-ins for the two encoders: a Linear per stream, so gradients reach parameters
    below the target through the gathered embeddings."""

    def __init__(self) -> None:
        super().__init__()
        self.text = nn.Linear(TEXT_IN, WIDTHS["stream_0"])
        self.image = nn.Linear(IMAGE_IN, WIDTHS["stream_1"])
        ctx = BuildContext(hidden_size=4, vocab_size=10, stream_sizes=dict(WIDTHS))
        self.clr = ClrTarget(ClrTarget.Config(projection_dim=5), ctx)

    def forward(self, x_text: torch.Tensor, x_image: torch.Tensor) -> torch.Tensor:
        text = Features(None, None, self.text(x_text))
        image = Features(None, None, self.image(x_image))
        return self.clr(Features(None, streams=(text, image)), {}).loss


def loss_and_grads(rows: slice) -> tuple[float, dict[str, torch.Tensor]]:
    """The loss of `rows` of the fixed batch and the gradients it leaves (same init always)."""
    torch.manual_seed(0)
    model = Towers()
    g = torch.Generator().manual_seed(3)
    x_text, x_image = torch.randn(ROWS, TEXT_IN, generator=g), torch.randn(ROWS, IMAGE_IN,
                                                                           generator=g)
    loss = model(x_text[rows], x_image[rows])
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}


def worker(rank: int, port: int, out: Path) -> None:
    """One of two gloo processes: its loss and gradients for an even split (4 + 4 rows) and an
    uneven one (3 + 5)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    results = {}
    for name, cut in (("even", 4), ("uneven", 3)):
        results[name] = loss_and_grads(slice(0, cut) if rank == 0 else slice(cut, ROWS))
    dist.destroy_process_group()
    torch.save(results, out / f"rank{rank}.pt")


if __name__ == "__main__":
    torch.set_num_threads(1)
    worker(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]))
