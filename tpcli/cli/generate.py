"""`tp generate`: continue prompts (decoder-only) or transduce them (encoder-decoder) with a
checkpoint, greedy by default, sampling with --sample, beam search with --beams."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def generate_cmd(
    checkpoint: str = typer.Argument(..., help="a tp run folder (its last checkpoint) or a "
                                     "checkpoints/step-* folder"),
    prompt: list[str] = typer.Option([], "--prompt", help="a prompt (repeatable)"),
    input_file: Optional[Path] = typer.Option(None, "--input", help="a file, one prompt a line"),
    max_new_tokens: int = typer.Option(50, "--max-new-tokens", help="tokens to add at most"),
    min_new_tokens: int = typer.Option(0, "--min-new-tokens", help="no EOS before this many"),
    sample: bool = typer.Option(False, "--sample", help="sample instead of greedy decoding"),
    temperature: float = typer.Option(1.0, "--temperature", help="--sample: logits / T"),
    top_k: int = typer.Option(50, "--top-k", help="--sample: keep the k likeliest (0: all)"),
    top_p: float = typer.Option(1.0, "--top-p", help="--sample: nucleus mass to keep"),
    seed: Optional[int] = typer.Option(None, "--seed", help="--sample: random seed"),
    beams: int = typer.Option(1, "--beams", help="beam search with N beams (1: greedy)"),
    length_penalty: float = typer.Option(1.0, "--length-penalty", help="beam score exponent"),
    early_stopping: bool = typer.Option(False, "--early-stopping",
                                        help="beams: stop a row at N finished hypotheses"),
    batch_size: int = typer.Option(8, "--batch-size", help="prompts decoded together"),
    out: Optional[Path] = typer.Option(None, "--out", help="write JSONL {prompt, text, tokens}"),
) -> None:
    """Generate text from a checkpoint with an lm target (GPT-style or seq2seq)."""
    from tpcli.errors import TpError
    from tpcli.downstream.generate import GenerationConfig
    from tpcli.downstream.prompting import generate_texts, read_prompts, write_records
    from tpcli.plugins import get_plugins

    if batch_size < 1:
        raise TpError(f"--batch-size must be at least 1, not {batch_size}")
    texts = read_prompts(prompt, input_file)
    settings = dict(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                    do_sample=sample, temperature=temperature, top_k=top_k, top_p=top_p,
                    seed=seed, num_beams=beams, length_penalty=length_penalty,
                    early_stopping=early_stopping)
    GenerationConfig(**settings)  # bad settings fail before the checkpoint loads
    records = generate_texts(checkpoint, texts, settings, batch_size, get_plugins())
    if out is not None:
        write_records(out, records)
        print(f"wrote {len(records)} generations to {out}")
        return
    for r in records:
        print(r["text"])


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_cmd)
