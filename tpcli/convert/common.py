"""What both directions of `tp convert` share: file names, the result record, staging folders
that are renamed into place, shape checks."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from tpcli.convert import Converter
from tpcli.errors import CheckpointError, TpError
from tpcli.plugins import Plugins

WEIGHTS = "model.safetensors"
HF_INDEX = "model.safetensors.index.json"
BIN = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt")
# files a Hub download needs (not the TF / Flax / ONNX weights)
HUB_PATTERNS = ["*.json", "*.safetensors", "*.bin", "*.txt", "*.model"]
CHECK_BATCH, CHECK_LENGTH = 3, 12  # --check: rows, tokens per row (row i has fewer real tokens)


@dataclass
class ConvertResult:
    """What `tp convert` did (printed as the command's summary)."""

    out: Path
    converter: str
    architecture: str
    tensors: int
    max_abs_diff: float | None = None
    compared: str = "logits"  # what --check compared: logits, or hidden states (headless)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"out": str(self.out), "converter": self.converter,
                             "architecture": self.architecture, "tensors": self.tensors}
        if self.max_abs_diff is not None:
            d["max_abs_diff"] = self.max_abs_diff
            d["compared"] = self.compared
        if self.notes:
            d["notes"] = "; ".join(self.notes)
        return d


# ------------------------------------------------------------------------------ shared helpers


def transformers_module() -> Any:
    try:
        import transformers
    except ImportError as e:
        raise TpError("this needs Hugging Face `transformers`, which is not installed",
                      hint="pip install 'tpcli[hf]'") from e
    return transformers


def converters(plugins: Plugins) -> dict[str, Converter]:
    return {e.name: e.load() for e in plugins.registry.entries("converter")}


def describe_model(spec: Any) -> str:
    """`embedding [word] + encoder bilstm + target bilm`: a model in the paper's words."""
    parts = []
    for stream, stack in spec.stacks.items():
        where = f"{stream} " if stream else ""
        parts.append(f"{where}embedding [{', '.join(m.name for m in stack.embedding)}]")
        if stack.encoder is not None:
            parts.append(f"{where}encoder {stack.encoder.name}")
    if spec.decoder is not None:
        parts.append(f"tgt_embedding [{', '.join(m.name for m in spec.tgt_embedding)}]")
        parts.append(f"decoder {spec.decoder.name}")
    parts.append(f"target {' + '.join(t.name for t in spec.targets)}")
    return " + ".join(parts)


def unwritable(out: Path, e: OSError) -> TpError:
    """A folder tp cannot write into (read-only, not the user's, a full disk) is the user's to
    fix: name the folder and the reason, not "internal error"."""
    folder = Path(out).absolute().parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the nearest folder that exists is the one refusing
    return TpError(f"cannot write {out}: {e.strerror or e} in {folder}",
                   hint=f"choose an --out in a folder you can write to, or make {folder} "
                   "writable (or free space on its disk)")


# errors of the place written to, not of what is converted
_WRITE_ERRNOS = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT}


def staging(out: Path) -> Path:
    """A fresh temporary folder beside `out`, renamed into place by `publish`."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise TpError(f"{out} already exists and is not empty",
                      hint="choose another --out, or remove it first")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise unwritable(out, e) from e
    return tmp


def publish(tmp: Path, out: Path) -> None:
    if out.exists():
        out.rmdir()  # checked empty by staging
    os.replace(tmp, out)


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A `staging` folder for `out`: published to `out` when the block ends, removed when it
    raises."""
    tmp = staging(out)
    try:
        yield tmp
        publish(tmp, Path(out))
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if e.errno in _WRITE_ERRNOS:
            raise unwritable(Path(out), e) from e
        raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def shape_problems(got: dict[str, torch.Tensor], want: dict[str, Any], what: str) -> list[str]:
    return sorted(f"{k}: {what} {tuple(got[k].shape)} vs config {tuple(want[k].shape)}"
                  for k in set(got) & set(want) if tuple(got[k].shape) != tuple(want[k].shape))


def raise_shapes(problems: list[str], source: str) -> None:
    if problems:
        shown = "\n  - ".join(problems[:12])
        more = f"\n  ... and {len(problems) - 12} more" if len(problems) > 12 else ""
        raise CheckpointError(
            f"the weights of {source} do not match its config:\n  - {shown}{more}",
            hint="the checkpoint and its config.json / recipe.yaml disagree")


