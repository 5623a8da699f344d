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


def _special(ids: dict[str, int], *roles: str) -> int | None:
    return next((ids[r] for r in roles if r in ids), None)


def _seq2seq_format(recipe: Any, special: dict[str, int]) -> tuple[int | None, list[int], list[int]]:
    """(decoder start id, ids before a source, ids after it) as the recipe's processor trains
    them: seq2seq's `decoder_start` option (default bos, else cls), T5's pad, BART's eos with a
    bos ... eos source; every source ends with eos (or sep)."""
    proc = recipe.processor
    end = _special(special, "eos", "sep")
    after = [end] if end is not None else []
    role = getattr(proc.options, "decoder_start", None)
    if role is not None:
        return special.get(role), [], after
    if proc.name == "t5":
        return special.get("pad"), [], after
    if proc.name == "bart":
        bos = _special(special, "bos", "cls")
        return end, [bos] if bos is not None else [], after
    return _special(special, "bos", "cls", "pad"), [], after


def _encode(tokenizer: Any, texts: list[str], before: list[int], after: list[int]
            ) -> list[list[int]]:
    from tpcli.errors import TpError

    rows = tokenizer.encode_batch(texts)
    for text, ids in zip(texts, rows):
        if not ids:
            raise TpError(f"prompt {text!r} has no tokens",
                          hint="give a prompt with some text in it")
    return [before + ids + after for ids in rows]


def _pad(rows: list[list[int]], pad: int, left: bool) -> tuple[Any, Any]:
    """(B, T) ids and attention mask, padded on the left (decoder-only) or the right."""
    import torch

    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    for i, r in enumerate(rows):
        span = slice(t - len(r), t) if left else slice(0, len(r))
        ids[i, span] = torch.tensor(r, dtype=torch.long)
        mask[i, span] = 1
    return ids, mask


def _continuation(tokens: list[int], eos: list[int]) -> list[int]:
    """The generated ids up to (not including) the first EOS."""
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[:i]
    return tokens


def generate_texts(checkpoint: str, texts: list[str], settings: dict[str, Any],
                   batch_size: int) -> list[dict[str, Any]]:
    """{prompt, text, tokens} per prompt: `tokens` the generated ids (before EOS), `text` them
    decoded."""
    from tpcli.api import load_checkpoint
    from tpcli.generate import GenerationConfig, generate

    loaded = load_checkpoint(checkpoint)
    tok, model = loaded.tokenizer, loaded.model
    special = tok.special_ids
    eos = _special(special, "eos", "sep")
    seq2seq = getattr(model, "decoder", None) is not None
    start, before, after = _seq2seq_format(loaded.recipe, special) if seq2seq else (None, [], [])
    pad = _special(special, "pad", "eos", "sep")
    config = GenerationConfig(eos_token_id=eos, pad_token_id=pad, decoder_start_token_id=start,
                              **settings)
    rows = _encode(tok, texts, before, after)
    eos_ids = config.eos_ids
    records = []
    for first in range(0, len(rows), batch_size):
        chunk = rows[first:first + batch_size]
        ids, mask = _pad(chunk, config.pad, left=not seq2seq)
        out = generate(model, ids, mask, config)
        skip = 1 if seq2seq else ids.shape[1]  # the start token, or the padded prompt
        for j, row in enumerate(out[:, skip:].tolist()):
            new = _continuation(row, eos_ids)
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
