"""`tp convert`: tp checkpoints to Hugging Face folders and back."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def convert(
    source: str = typer.Argument(
        ..., help="--to hf: a tp run folder (its last checkpoint) or a step folder; "
        "--from hf: a Hugging Face model folder or Hub id"),
    out: Path = typer.Option(..., "--out", help="folder to create (written atomically)"),
    to: Optional[str] = typer.Option(None, "--to", help="target format: hf"),
    from_: Optional[str] = typer.Option(None, "--from", help="source format: hf"),
    arch: Optional[str] = typer.Option(
        None, "--arch", help="--to hf: the converter to use (default: the one that accepts the "
        "model)"),
    check: bool = typer.Option(
        False, "--check", help="run both models on one padded batch, print the max abs "
        "difference of the logits, fail above --tolerance"),
    tolerance: float = typer.Option(1e-4, "--tolerance", help="--check: largest accepted diff"),
    as_json: bool = typer.Option(False, "--json", help="print the summary as one JSON object"),
) -> None:
    """Convert weights to (--to hf) or from (--from hf) Hugging Face Transformers."""
    from tpcli.cli.render import print_summary
    from tpcli.errors import TpError
    from tpcli.verbs import ConvertRequest, convert as run

    if (to is None) == (from_ is None):
        raise TpError("give exactly one of --to hf or --from hf")
    fmt = (to or from_ or "").lower()
    if fmt != "hf":
        raise TpError(f"unknown format {fmt!r}", hint="the supported format is hf")
    if arch is not None and from_ is not None:
        raise TpError("--arch is for --to hf; --from hf picks the converter by model_type")
    if not tolerance >= 0:
        raise TpError(f"--tolerance must be >= 0, not {tolerance}")
    direction = "to_hf" if to is not None else "from_hf"
    summary = run(ConvertRequest(source, out, direction, arch, check, tolerance))
    if check and "max_abs_diff" in summary and not as_json:
        print(f"max abs difference of the {summary.get('compared', 'logits')}: "
              f"{summary['max_abs_diff']:.3g} "
              f"(tolerance {tolerance:g})")
    print_summary("convert", summary, as_json)


def register(app: typer.Typer) -> None:
    app.command(context_settings={"allow_interspersed_args": True})(convert)
