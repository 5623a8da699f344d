"""What both loggers share: the names metrics take there, the recipe as flat hyperparameters, and
the check that a logger's package is installed."""

from __future__ import annotations

import importlib
import json
from typing import Any

from tpcli.errors import TpError


def tag(key: str) -> str:
    """A metric's name in TensorBoard and W&B: fine-tuning's evaluations (`eval.dev.accuracy`)
    as `eval/dev.accuracy`, everything else logged during training as `train/<key>`
    (`train/loss`, `train/mlm.accuracy`, `train/lr`, `train/tokens_per_s`, `train/mfu`); both
    tools group a dashboard's charts by the part before the slash."""
    if key.startswith("eval."):
        return "eval/" + key.removeprefix("eval.")
    return "train/" + key


def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested recipe as dotted keys (`pretrain.lr`) with values hyperparameter tables take:
    numbers, strings and booleans as they are, lists and None as their JSON text."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out |= flat(value, name + ".")
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value)
    return out


def need(module: str, package: str, logger: str) -> None:
    """A TpError naming `pip install PACKAGE` when `module` (what the logger writes with) cannot
    be imported: its package missing, or installed broken (a protobuf it does not run with).
    Imported, not just looked for, so this fails before the run folder is written, not at
    step 0; and only when a run chooses the logger, never when tp starts."""
    try:
        importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - ImportError, or whatever a broken install raises
        raise TpError(f"logger {logger!r} needs the {package} package, which cannot be "
                      f"imported ({type(e).__name__}: {e})",
                      hint=f"pip install {package} (or drop {logger} from pretrain.loggers / "
                      "finetune.loggers and --logger)") from None
