"""GPT-2's byte-level BPE, built on Hugging Face `tokenizers`.

Three sources: a tiktoken rank file (`ranks`, e.g. `pkg:whisper/assets/gpt2.tiktoken`: base64
token and rank per line; the merges are derived from the ranks), GPT-2's `vocab.json` +
`merges.txt`, or a Hugging Face `tokenizer.json` with a BPE model. Text is split by GPT-2's regex,
each piece's bytes are mapped to GPT-2's printable byte alphabet and merged by rank. `<|endoftext|>`
(id 50256 for GPT-2) is bos, eos and pad unless the recipe names others. Ids come back without
special tokens.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors

from tp_text.tokenizer_files import (
    TokenizersBase,
    load_tokenizer_json,
    model_type,
    parse_json,
    read_text,
    resolve_roles,
)
from tpcli.errors import TpError
from tpcli.model.module import ModuleConfig

NAME = "bpe"
ENDOFTEXT = "<|endoftext|>"


class BpeConfig(ModuleConfig):
    """Options of the `bpe` tokenizer: one source of ranks/merges plus its special tokens."""

    ranks: str | None = Field(
        None, description="tiktoken rank file (base64 token, rank per line): path, pkg: or URL"
    )
    vocab: str | None = Field(None, description="GPT-2 vocab.json (with `merges`)")
    merges: str | None = Field(None, description="GPT-2 merges.txt (with `vocab`)")
    tokenizer_json: str | None = Field(
        None, description="a Hugging Face tokenizer.json with a BPE model (kept as written)"
    )
    add_prefix_space: bool = Field(
        False, description="put a space before the text, so its first word is split like the "
        "others (RoBERTa/BART option; not for tokenizer_json)"
    )
    special_tokens: list[str] | None = Field(
        None,
        description="special tokens kept whole in text; those not in the vocabulary are appended "
        "in this order (RoBERTa/BART: ['<s>', '<pad>', '</s>', '<unk>', '<mask>']). Default: "
        "['<|endoftext|>'] for ranks (a tiktoken file lacks it), none for the other sources",
    )
    bos_token: str | None = Field(ENDOFTEXT, description="beginning-of-text token")
    eos_token: str | None = Field(ENDOFTEXT, description="end-of-text token")
    pad_token: str | None = Field(None, description="padding token (default: the eos token)")
    unk_token: str | None = Field(None, description="unknown token (byte-level BPE needs none)")
    cls_token: str | None = Field(None, description="sequence-start token of pairs (RoBERTa <s>)")
    sep_token: str | None = Field(None, description="separator token of pairs (RoBERTa </s>)")
    mask_token: str | None = Field(None, description="masked-LM token (RoBERTa <mask>)")

    @model_validator(mode="after")
    def _one_source(self) -> "BpeConfig":
        given = [n for n in ("ranks", "vocab", "tokenizer_json") if getattr(self, n) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one source: 'ranks' (tiktoken), 'vocab' + 'merges', "
                             "or 'tokenizer_json'")
        if (self.vocab is None) != (self.merges is None):
            raise ValueError("'vocab' (vocab.json) and 'merges' (merges.txt) go together")
        return self


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte alphabet: printable Latin-1 bytes stand for themselves, the 68 others
    (control characters, space, ...) map to U+0100 onwards in byte order."""
    keep = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
            + list(range(ord("®"), ord("ÿ") + 1)))
    table: dict[int, str] = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def parse_tiktoken(text: str, where: str) -> dict[bytes, int]:
    """A tiktoken rank file -> {token bytes: rank}."""
    ranks: dict[bytes, int] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token_b64, rank = line.split()
            ranks[base64.b64decode(token_b64, validate=True)] = int(rank)
        except (ValueError, binascii.Error) as e:
            raise TpError(f"tokenizer ranks file {where}, line {n}: not 'BASE64 RANK' ({line!r})",
                          hint="give a tiktoken .tiktoken rank file") from e
    return ranks


def _bpe_split(ranks: dict[bytes, int], token: bytes, max_rank: int) -> list[bytes]:
    """tiktoken's byte-pair merge of `token` using only merges ranked below `max_rank`."""
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 1:
        best, best_rank = -1, max_rank
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best, best_rank = i, r
        if best < 0:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    return parts


def merges_from_ranks(ranks: dict[bytes, int], where: str) -> list[tuple[bytes, bytes]]:
    """The merge list that reproduces tiktoken: each multi-byte token, in rank order, is the
    merge of the two pieces tiktoken's own procedure reaches just before the token's rank."""
    merges: list[tuple[bytes, bytes]] = []
    for token, rank in sorted(ranks.items(), key=lambda kv: kv[1]):
        if len(token) == 1:
            continue
        parts = _bpe_split(ranks, token, rank)
        if len(parts) != 2:
            raise TpError(f"tokenizer ranks file {where}: token {token!r} (rank {rank}) is not "
                          "the merge of two lower-ranked tokens",
                          hint="the file is not a byte-pair rank table")
        merges.append((parts[0], parts[1]))
    return merges


@functools.lru_cache(maxsize=4)
def vocab_and_merges(text: str, where: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """GPT-2's vocab.json and merges.txt (byte alphabet) from a tiktoken rank file's text; the
    derivation takes a second, so a process that builds the tokenizer again reuses it."""
    ranks = parse_tiktoken(text, where)
    if not ranks:
        raise TpError(f"tokenizer ranks file {where} is empty")
    alphabet = bytes_to_unicode()

    def show(b: bytes) -> str:
        return "".join(alphabet[x] for x in b)

    vocab = {show(t): r for t, r in ranks.items()}
    return vocab, [(show(a), show(b)) for a, b in merges_from_ranks(ranks, where)]


class BpeTokenizer(TokenizersBase):
    """Byte-level BPE (GPT-2, RoBERTa, BART)."""

    NAME = NAME
    Config = BpeConfig

    def __init__(self, config: BpeConfig, base_dir: Path | str = ".") -> None:
        self.config = config
        base = Path(base_dir)
        if config.tokenizer_json is not None:
            tok = load_tokenizer_json(config.tokenizer_json, base)
            if model_type(tok) != "BPE":
                raise TpError(f"tokenizer_json {config.tokenizer_json} holds a "
                              f"{model_type(tok)} model, not BPE",
                              hint="use the `hf` tokenizer for any tokenizer.json")
        elif config.ranks is not None:
            vocab, merges = vocab_and_merges(read_text(config.ranks, base, "ranks"), config.ranks)
            tok = self._byte_level(dict(vocab), list(merges), config)
        else:
            vocab_text = read_text(str(config.vocab), base, "vocab")
            vocab = parse_json(vocab_text, str(config.vocab), "vocab")
            if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
                raise TpError(f"tokenizer vocab {config.vocab} is not a JSON object token -> id",
                              hint="give GPT-2's vocab.json")
            merges = []
            for n, line in enumerate(read_text(str(config.merges), base, "merges").splitlines()):
                if n == 0 and line.startswith("#version"):
                    continue
                if not line.strip():
                    continue
                pair = line.split(" ")
                if len(pair) != 2:
                    raise TpError(f"tokenizer merges {config.merges}, line {n + 1}: not two "
                                  f"tokens ({line!r})", hint="give GPT-2's merges.txt")
                merges.append((pair[0], pair[1]))
            tok = self._byte_level(vocab, merges, config)
        extra = config.special_tokens
        if extra is None:
            extra = [ENDOFTEXT] if config.ranks is not None else []
        self._add_special(tok, extra, config)
        roles = {"bos": config.bos_token, "eos": config.eos_token, "unk": config.unk_token,
                 "cls": config.cls_token, "sep": config.sep_token, "mask": config.mask_token,
                 "pad": config.pad_token if config.pad_token is not None else config.eos_token}
        required = {r for r in roles if f"{r}_token" in config.model_fields_set}
        self._special = resolve_roles(
            tok, roles, required, self.describe(),
            hint="add it to data.tokenizer.special_tokens, or name another token")
        # role tokens of a vocab.json (GPT-2's <|endoftext|>) stay whole in text, as in HF
        self._add_special(tok, [str(tok.id_to_token(i)) for i in self._special.values()], config)
        cls_id, sep_id = self._special.get("cls"), self._special.get("sep")
        if config.tokenizer_json is None:
            # what `transformers` adds around a sequence (our ids never carry it)
            if cls_id is not None and sep_id is not None:
                tok.post_processor = processors.RobertaProcessing(
                    (str(tok.id_to_token(sep_id)), sep_id), (str(tok.id_to_token(cls_id)), cls_id),
                    trim_offsets=True, add_prefix_space=config.add_prefix_space)
            else:
                tok.post_processor = processors.ByteLevel(trim_offsets=False)
        self._tok = tok
        self._fingerprint = None

    @staticmethod
    def _add_special(tok: Tokenizer, tokens: list[str], config: BpeConfig) -> None:
        """Make tokens special (appending those not in the vocabulary, in order); RoBERTa/BART's
        mask token takes the space before it (" <mask>" is one token)."""
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False,
                                           lstrip=t == config.mask_token)
                                for t in dict.fromkeys(tokens) if t])

    @staticmethod
    def _byte_level(vocab: dict[str, int], merges: list[tuple[str, str]],
                    config: BpeConfig) -> Tokenizer:
        tok = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, unk_token=config.unk_token))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(  # GPT-2's regex, then bytes -> alphabet
            add_prefix_space=config.add_prefix_space, use_regex=True)
        tok.decoder = decoders.ByteLevel()
        return tok

    def describe(self) -> str:
        c = self.config
        return str(c.ranks or c.vocab or c.tokenizer_json or NAME)

    def merges(self) -> list[tuple[str, str]]:
        """The merge list in rank order (GPT-2 alphabet), as in a merges.txt."""
        spec = json.loads(self._tok.to_str())
        return [tuple(m.split(" ", 1)) if isinstance(m, str) else (m[0], m[1])  # type: ignore
                for m in spec["model"]["merges"]]

    def _saved_options(self) -> dict[str, Any]:
        options = self.config.model_dump()
        options.update(ranks=None, vocab=None, merges=None, tokenizer_json="tokenizer.json")
        for role in ("bos", "eos", "unk", "cls", "sep", "mask"):  # defaults the vocab lacked
            if role not in self._special:
                options[f"{role}_token"] = None
        return options
