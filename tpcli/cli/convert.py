"""`tp convert`: tp checkpoints to Hugging Face folders or TencentPretrain checkpoints, and back."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def convert(
    source: str = typer.Argument(
        ..., help="--to hf / tencentpretrain: a tp run folder (its last checkpoint) or a step "
        "folder; --from hf: a Hugging Face model folder or Hub id; --from tencentpretrain: a "
        "TencentPretrain / UER checkpoint file (.bin or .safetensors)"),
    out: Path = typer.Option(..., "--out", help="folder to create (written atomically)"),
    to: Optional[str] = typer.Option(None, "--to", help="target format: hf, tencentpretrain"),
    from_: Optional[str] = typer.Option(None, "--from",
                                        help="source format: hf, tencentpretrain"),
    arch: Optional[str] = typer.Option(
        None, "--arch", help="--to hf: the converter to use (default: the one that accepts the "
        "model)"),
    check: bool = typer.Option(
        False, "--check", help="run both models on one padded batch, print the max abs "
        "difference of the logits, fail above --tolerance"),
    tolerance: float = typer.Option(1e-4, "--tolerance", help="--check: largest accepted diff"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as one JSON object"),
    config: Optional[Path] = typer.Option(
        None, "--config", help="--from tencentpretrain: the checkpoint's TencentPretrain model "
        "config JSON (its --config_path, e.g. models/bert/base_config.json)"),
    vocab: Optional[Path] = typer.Option(
        None, "--vocab", help="--from tencentpretrain: the vocabulary it was trained with (its "
        "--vocab_path vocab.txt, an spm .model or a tokenizer.json)"),
) -> None:
    """Convert weights to (--to) or from (--from) Hugging Face Transformers (hf) or
    TencentPretrain (tencentpretrain)."""
    from tpcli.cli.render import print_summary
    from tpcli.errors import TpError
    from tpcli.verbs import ConvertRequest, convert as run

    if (to is None) == (from_ is None):
        raise TpError("give exactly one of --to hf or --from hf (or --to / --from "
                      "tencentpretrain)")
    fmt = (to or from_ or "").lower()
    if fmt not in ("hf", "tencentpretrain"):
        raise TpError(f"unknown format {fmt!r}", hint="the formats are hf and tencentpretrain")
    if arch is not None and (from_ is not None or fmt != "hf"):
        raise TpError("--arch is for --to hf; --from hf picks the converter by model_type")
    if fmt == "tencentpretrain" and check:
        raise TpError("--check compares with Hugging Face models; --to/--from tencentpretrain "
                      "has none", hint="compare the converted model with `tp infer`, or convert "
                      "it --to hf --check")
    if (config is not None or vocab is not None) and not (fmt == "tencentpretrain" and from_):
        raise TpError("--config and --vocab are for --from tencentpretrain")
    if not tolerance >= 0:
        raise TpError(f"--tolerance must be >= 0, not {tolerance}")
    direction = f"{'to' if to is not None else 'from'}_{fmt}"
    summary = run(ConvertRequest(source, out, direction, arch, check, tolerance, config=config,
                                 vocab=vocab))
    if check and "max_abs_diff" in summary and not as_json:
        print(f"max abs difference of the {summary.get('compared', 'logits')}: "
              f"{summary['max_abs_diff']:.3g} "
              f"(tolerance {tolerance:g})")
    print_summary("convert", summary, as_json)


def register(app: typer.Typer) -> None:
    app.command(context_settings={"allow_interspersed_args": True})(convert)
