"""`tp generate`: continue prompts (decoder-only) or transduce them (encoder-decoder) with a
checkpoint, greedy by default, sampling with --sample, beam search with --beams."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer


def _read_prompts(prompts: list[str], input_file: Optional[Path]) -> list[str]:
    from tpcli.errors import TpError

    texts = list(prompts)
    if input_file is not None:
        try:
            lines = input_file.read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise TpError(f"cannot read prompts from {input_file}: {e.strerror or e}",
                          hint="--input names a text file with one prompt per line") from e
        texts += [line for line in lines if line.strip()]
    if not texts:
        raise TpError("no prompt to generate from",
                      hint="give --prompt TEXT (repeatable) or --input FILE (one per line)")
    return texts


def generate_texts(checkpoint: str, texts: list[str], settings: dict[str, Any],
                   batch_size: int) -> list[dict[str, Any]]:
    """{prompt, text, tokens} per prompt: `tokens` the generated ids (before EOS), `text` them
    decoded."""
    from tpcli.api import load_checkpoint
    from tpcli.plugins import get_plugins
    from tpcli.generate import (GenerationConfig, encode_prompts, generate, pad_rows,
                                seq2seq_format, special_token, until_eos)

    plugins = get_plugins()
    loaded = load_checkpoint(checkpoint, plugins)
    tok, model = loaded.tokenizer, loaded.model
    special = tok.special_ids
    eos = special_token(special, "eos", "sep")
    seq2seq = getattr(model, "decoder", None) is not None
    start, before, after = seq2seq_format(loaded.recipe, special, plugins.registry) if seq2seq else (None, [], [])
    pad = special_token(special, "pad", "eos", "sep")
    config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, decoder_start_token_id=start,
                              **settings)
    rows = encode_prompts(tok, texts, before, after)
    eos_ids = config.eos_ids
    records = []
    for first in range(0, len(rows), batch_size):
        chunk = rows[first:first + batch_size]
        ids, mask = pad_rows(chunk, config.pad, left=not seq2seq)
        out = generate(model, ids, mask, config)
        skip = 1 if seq2seq else ids.shape[1]  # the start token, or the padded prompt
        for j, row in enumerate(out[:, skip:].tolist()):
            new = until_eos(row, eos_ids)
            records.append({"prompt": texts[first + j], "text": tok.decode(new), "tokens": new})
    return records


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

    if batch_size < 1:
        raise TpError(f"--batch-size must be at least 1, not {batch_size}")
    texts = _read_prompts(prompt, input_file)
    settings = dict(max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens,
                    do_sample=sample, temperature=temperature, top_k=top_k, top_p=top_p,
                    seed=seed, num_beams=beams, length_penalty=length_penalty,
                    early_stopping=early_stopping)
    from tpcli.generate import GenerationConfig

    GenerationConfig(**settings)  # bad settings fail before the checkpoint loads
    records = generate_texts(checkpoint, texts, settings, batch_size)
    if out is not None:
        try:
            with open(out, "w", encoding="utf-8") as f:
                for r in records:
                    f.write(json.dumps(r, ensure_ascii=False) + "\n")
        except OSError as e:
            raise TpError(f"cannot write {out}: {e.strerror or e}",
                          hint="choose a writable --out path") from e
        print(f"wrote {len(records)} generations to {out}")
        return
    for r in records:
        print(r["text"])


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_cmd)
