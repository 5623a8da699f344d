"""BERT's WordPiece tokenizer, built on Hugging Face `tokenizers` (Rust, parallel batches).

The vocabulary comes from a `vocab.txt` (one token per line, the id is the line number) or from a
Hugging Face `tokenizer.json`. Either may be a path relative to the recipe folder, an absolute
path, `pkg:PACKAGE/rel/path` (a file shipped inside an installed Python package) or any fsspec
URL. Ids come back without special tokens: the data processors add `[CLS]` / `[SEP]` themselves.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from pydantic import Field, model_validator
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from tp_text.tokenizer_files import (
    TokenizerCalls, load_tokenizer_json, parse_vocab, read_saved, read_text, write_hf,
    write_saved,
)
from tpcli.errors import TpError
from tpcli.model.module import ModuleConfig

NAME = "wordpiece"
SPECIAL_TOKENS = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]"}
PREFIX = "##"  # marks a piece that continues the previous one (not a word start)


class WordPieceConfig(ModuleConfig):
    """Options of the `wordpiece` tokenizer: a vocabulary file plus BERT's text normalisation."""

    vocab: str | None = Field(
        None, description="vocab.txt: path (relative to the recipe), pkg:PACKAGE/path or fsspec URL"
    )
    tokenizer_json: str | None = Field(
        None, description="a Hugging Face tokenizer.json instead of vocab (keeps its normaliser)"
    )
    lowercase: bool = Field(True, description="lower-case the text (uncased models; vocab only)")
    strip_accents: bool | None = Field(
        None, description="remove accents (default: follow lowercase; vocab only)"
    )
    clean_text: bool = Field(True, description="drop control characters, map whitespace to ' '")
    chinese_chars: bool = Field(True, description="put spaces around CJK characters (vocab only)")
    max_chars_per_word: int = Field(
        100, gt=0, description="a longer word becomes [UNK] (vocab only)"
    )
    unk_token: str = Field("[UNK]", description="token for pieces not in the vocabulary")

    @model_validator(mode="after")
    def _one_source(self) -> "WordPieceConfig":
        if (self.vocab is None) == (self.tokenizer_json is None):
            raise ValueError("give exactly one of 'vocab' (a vocab.txt) or 'tokenizer_json'")
        return self


class WordPieceTokenizer(TokenizerCalls):
    """BERT WordPiece: BertNormalizer, BertPreTokenizer, greedy longest-match pieces ('##')."""

    Config = WordPieceConfig

    def __init__(self, config: WordPieceConfig, base_dir: Path | str = ".") -> None:
        self.config = config
        base = Path(base_dir)
        if config.tokenizer_json is not None:
            tok = load_tokenizer_json(config.tokenizer_json, base)  # TpError when corrupt
        else:  # the Config validator guarantees exactly one of the two sources
            text = read_text(str(config.vocab), base, "vocab")
            tok = self._from_vocab(parse_vocab(text), config)
        # A tokenizer.json may carry BERT's fixed 128-token padding/truncation: ids must be raw.
        tok.no_padding()
        tok.no_truncation()
        self._tok = tok
        vocab = tok.get_vocab(with_added_tokens=True)
        self._vocab_size = max(vocab.values()) + 1 if vocab else 0
        self._special = {k: vocab[t] for k, t in SPECIAL_TOKENS.items() if t in vocab}
        if config.unk_token in vocab:
            self._special["unk"] = vocab[config.unk_token]
        self._fingerprint: str | None = None

    @staticmethod
    def _from_vocab(vocab: dict[str, int], config: WordPieceConfig) -> Tokenizer:
        if not vocab:
            raise TpError(f"tokenizer vocab {config.vocab} is empty")
        if config.unk_token not in vocab:
            raise TpError(
                f"tokenizer vocab {config.vocab} has no unknown token {config.unk_token!r}",
                hint="add it to the vocabulary or set data.tokenizer.unk_token",
            )
        tok = Tokenizer(models.WordPiece(
            vocab, unk_token=config.unk_token, max_input_chars_per_word=config.max_chars_per_word
        ))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=config.clean_text,
            handle_chinese_chars=config.chinese_chars,
            strip_accents=config.strip_accents,
            lowercase=config.lowercase,
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece(prefix=PREFIX)
        # Special tokens as "added tokens": a literal "[MASK]" in text stays one token, as in
        # Hugging Face's BertTokenizerFast, whose ids we match.
        tok.add_special_tokens([t for t in SPECIAL_TOKENS.values() if t in vocab])
        if "[CLS]" in vocab and "[SEP]" in vocab:
            # Only used by the saved tokenizer.json, so `transformers` adds [CLS]/[SEP] as BERT does.
            tok.post_processor = processors.BertProcessing(
                ("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"])
            )
        return tok

    # ------------------------------------------------------------------ the Tokenizer protocol

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    def continuation_mask(self) -> np.ndarray:
        """(V,) bool, True for pieces that continue a word ('##ing'): whole-word masking uses it."""
        mask = np.zeros(self._vocab_size, dtype=bool)
        for token, i in self._tok.get_vocab(with_added_tokens=False).items():
            if token.startswith(PREFIX) and len(token) > len(PREFIX):
                mask[i] = True
        return mask

    def fingerprint(self) -> str:
        """sha256 of the vocabulary (token -> id) and of everything that turns text into pieces.

        It is computed from the tokenizer itself, so a vocab.txt and the tokenizer.json of the
        same model, with the same normalisation, share one fingerprint."""
        if self._fingerprint is None:
            spec = json.loads(self._tok.to_str())
            model = {k: v for k, v in (spec.get("model") or {}).items() if k != "vocab"}
            vocab = sorted(self._tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
            payload = {
                "vocab": vocab,
                "normalizer": spec.get("normalizer"),
                "pre_tokenizer": spec.get("pre_tokenizer"),
                "model": model,
            }
            blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")
            self._fingerprint = hashlib.sha256(blob).hexdigest()
        return self._fingerprint

    def describe(self) -> str:
        """A short human name for error messages: its source file."""
        return self.config.vocab or self.config.tokenizer_json or NAME

    # ------------------------------------------------------------------ saving

    def save_hf(self, directory: str | Path) -> None:
        """tokenizer.json + tokenizer_config.json + special_tokens_map.json: the folder loads with
        `transformers.AutoTokenizer.from_pretrained` and gives these ids (plus [CLS]/[SEP])."""
        extra = {"do_lower_case": self.config.lowercase} if self.config.vocab is not None else {}
        write_hf(self._tok, directory, self._special, extra=extra)

    def save(self, directory: str | Path) -> None:
        """Write vocab.txt, the `save_hf` files (loadable by `transformers`) and
        tp_tokenizer.json."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        by_id = sorted(self._tok.get_vocab(with_added_tokens=True).items(), key=lambda kv: kv[1])
        (out / "vocab.txt").write_text("".join(f"{t}\n" for t, _ in by_id), encoding="utf-8")
        self.save_hf(out)
        options = self.config.model_dump()
        options.update(vocab=None, tokenizer_json="tokenizer.json")
        write_saved(out, NAME, options, self.config.model_dump(), self.fingerprint())

    @classmethod
    def from_saved(cls, directory: str | Path) -> "WordPieceTokenizer":
        """Rebuild a tokenizer written by `save`."""
        return cls(WordPieceConfig(**read_saved(directory, NAME)), Path(directory))
