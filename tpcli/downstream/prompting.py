"""Text in, text out: how prompts are laid out for a checkpoint's model (decoder-only or
encoder-decoder, as its processor trained it), padded and cut at EOS, and `tp generate` itself
(`generate_texts`). The decoding algorithms are in `tpcli.downstream.generate`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tpcli.downstream.generate import GenerationConfig, generate
from tpcli.errors import TpError
from tpcli.files import write_text

if TYPE_CHECKING:
    from tpcli.plugins import Plugins


def special_token(ids: dict[str, int], *roles: str) -> int | None:
    return next((ids[r] for r in roles if r in ids), None)


def seq2seq_format(recipe: Any, special: dict[str, int], registry: Any
                   ) -> tuple[int | None, list[int], list[int]]:
    """(decoder start id, ids before a source, ids after it) as the recipe's processor trains
    them (its `seq2seq_layout`); a processor without one: bos (else cls, else pad) starts the
    decoder and every source ends with eos (or sep)."""
    proc = recipe.processor
    cls = registry.get("processor", proc.name)
    if hasattr(cls, "seq2seq_layout"):
        return cls(proc.options).seq2seq_layout(special)
    end = special_token(special, "eos", "sep")
    return special_token(special, "bos", "cls", "pad"), [], [end] if end is not None else []


def encode_prompts(tokenizer: Any, texts: list[str], before: list[int], after: list[int]
            ) -> list[list[int]]:
    from tpcli.errors import TpError

    rows = tokenizer.encode_batch(texts)
    for text, ids in zip(texts, rows):
        if not ids:
            raise TpError(f"prompt {text!r} has no tokens",
                          hint="give a prompt with some text in it")
    return [before + ids + after for ids in rows]


def pad_rows(rows: list[list[int]], pad: int, left: bool) -> tuple[Any, Any]:
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


def until_eos(tokens: list[int], eos: list[int]) -> list[int]:
    """The generated ids up to (not including) the first EOS."""
    for i, t in enumerate(tokens):
        if t in eos:
            return tokens[:i]
    return tokens


# ----------------------------------------------------------------------------- tp generate


def read_prompts(prompts: list[str], input_file: Path | None) -> list[str]:
    """`--prompt` texts, then the non-empty lines of `--input`."""
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
                   batch_size: int, plugins: Plugins) -> list[dict[str, Any]]:
    """`tp generate`: {prompt, text, tokens} per prompt, `tokens` the generated ids (before
    EOS), `text` them decoded; `settings` are GenerationConfig's fields."""
    from tpcli.train.checkpoint import load_checkpoint

    loaded = load_checkpoint(Path(checkpoint), plugins)
    tok, model = loaded.tokenizer, loaded.model
    special = tok.special_ids
    eos = special_token(special, "eos", "sep")
    seq2seq = getattr(model, "decoder", None) is not None
    start, before, after = (seq2seq_format(loaded.recipe, special, plugins.registry) if seq2seq
                            else (None, [], []))
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


def write_records(out: Path, records: list[dict[str, Any]]) -> None:
    """The generations as JSONL, written atomically."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    try:
        write_text(Path(out), text)
    except OSError as e:
        raise TpError(f"cannot write {out}: {e.strerror or e}",
                      hint="choose a writable --out path") from e
