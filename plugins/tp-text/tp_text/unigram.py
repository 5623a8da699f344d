"""SentencePiece's Unigram tokenizer (T5, XLM-R, ALBERT), built on Hugging Face `tokenizers`.

Sources: a Hugging Face `tokenizer.json` with a Unigram model (e.g. the shipped
`recipes/_tokenizers/unigram-8k.json`, see scripts/train_unigram.py), or a SentencePiece `.model`
file, read directly (its pieces, scores, normalisation table and special pieces; no
`sentencepiece` package needed). T5's sentinels `<extra_id_N>` are exposed by `sentinel_ids()`.
Ids come back without special tokens (no trailing `</s>`): processors add what they need.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
from tokenizers import processors

from tp_text.tokenizer_files import (
    TokenizersBase,
    load_tokenizer_json,
    mark_special,
    model_type,
    read_bytes,
    resolve_ref,
    resolve_roles,
    sentinel_ids_of,
)
from tpcli.errors import TpError
from tpcli.model.module import ModuleConfig

NAME = "unigram"
SPM_NORMAL, SPM_UNKNOWN, SPM_CONTROL, SPM_USER, SPM_UNUSED, SPM_BYTE = 1, 2, 3, 4, 5, 6


class UnigramConfig(ModuleConfig):
    """Options of the `unigram` tokenizer: one source plus the tokens that play each role."""

    tokenizer_json: str | None = Field(
        None, description="a Hugging Face tokenizer.json with a Unigram model: path (relative to "
        "the recipe), pkg:PACKAGE/path or fsspec URL"
    )
    model: str | None = Field(None, description="a SentencePiece .model file (Unigram type)")
    pad_token: str | None = Field("<pad>", description="padding token")
    eos_token: str | None = Field("</s>", description="end-of-sequence token")
    unk_token: str | None = Field("<unk>", description="unknown-piece token")
    bos_token: str | None = Field("<s>", description="beginning-of-sequence token (if any)")
    mask_token: str | None = Field("<mask>", description="masked-LM token (if any)")
    cls_token: str | None = Field(None, description="sequence-start token (XLM-R: <s>)")
    sep_token: str | None = Field(None, description="separator token (XLM-R: </s>)")
    special_tokens: list[str] = Field(
        default_factory=list,
        description="more special tokens kept whole in text; absent ones are appended in order",
    )

    @model_validator(mode="after")
    def _one_source(self) -> "UnigramConfig":
        if (self.tokenizer_json is None) == (self.model is None):
            raise ValueError("give exactly one of 'tokenizer_json' or 'model' (SentencePiece)")
        return self


# ------------------------------------------------------------------ SentencePiece .model files


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> list[tuple[int, Any]]:
    """(field number, value) of a protobuf message: ints for varints/fixed, bytes otherwise."""
    out: list[tuple[int, Any]] = []
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        num, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire}")
        if pos > len(data):
            raise ValueError("truncated message")
        out.append((num, value))
    return out


def parse_spm_model(data: bytes, where: str) -> dict[str, Any]:
    """The parts of a SentencePiece ModelProto a Unigram tokenizer needs."""
    try:
        pieces: list[tuple[str, float, int]] = []
        trainer: dict[int, Any] = {}
        normalizer: dict[int, Any] = {}
        for num, value in _fields(data):
            if num == 1:  # SentencePiece {piece = 1, score = 2, type = 3}
                p = dict(_fields(value))
                score = struct.unpack("<f", p[2])[0] if 2 in p else 0.0
                pieces.append((p.get(1, b"").decode("utf-8"), score, int(p.get(3, SPM_NORMAL))))
            elif num == 2:
                trainer = dict(_fields(value))
            elif num == 3:
                normalizer = dict(_fields(value))
    except (ValueError, UnicodeDecodeError, struct.error) as e:
        raise TpError(f"tokenizer model file {where} is not a SentencePiece model: {e}",
                      hint="give the .model file written by spm_train (or its tokenizer.json)"
                      ) from e
    if not pieces:
        raise TpError(f"tokenizer model file {where} holds no pieces",
                      hint="give the .model file written by spm_train")
    if int(trainer.get(3, 1)) != 1:  # TrainerSpec.model_type: 1 = UNIGRAM, 2 = BPE, ...
        raise TpError(f"tokenizer model file {where} is not a Unigram model",
                      hint="the unigram tokenizer reads Unigram SentencePiece models only")
    return {
        "pieces": pieces,
        "unk_id": int(trainer.get(40, 0)),
        "byte_fallback": bool(trainer.get(35, 0)),
        "charsmap": normalizer.get(2, b""),
        "add_dummy_prefix": bool(normalizer.get(3, 1)),
        "remove_extra_whitespaces": bool(normalizer.get(4, 1)),
    }


def tokenizer_from_spm(spm: dict[str, Any]) -> Tokenizer:
    """The `tokenizers` pipeline equivalent to a SentencePiece Unigram model."""
    pieces = spm["pieces"]
    tok = Tokenizer(models.Unigram([(p, s) for p, s, _ in pieces], unk_id=spm["unk_id"],
                                   byte_fallback=spm["byte_fallback"]))
    steps: list[normalizers.Normalizer] = []
    if spm["charsmap"]:
        steps.append(normalizers.Precompiled(spm["charsmap"]))
    if spm["remove_extra_whitespaces"]:
        # sentencepiece drops leading and trailing whitespace and folds inner runs
        steps += [normalizers.Replace(Regex(" {2,}"), " "), normalizers.Strip()]
    if steps:
        tok.normalizer = normalizers.Sequence(steps)
    scheme = "always" if spm["add_dummy_prefix"] else "never"
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme)
    parts: list[decoders.Decoder] = []
    if spm["byte_fallback"]:
        parts += [decoders.ByteFallback()]
    parts += [decoders.Metaspace(replacement="▁", prepend_scheme=scheme)]
    tok.decoder = decoders.Sequence(parts) if len(parts) > 1 else parts[0]
    # control pieces (<s>, </s>, <pad>) and the unknown piece are special tokens; user-defined
    # pieces (a <mask>) stay in the model, where their score 0 keeps them whole, as sentencepiece
    # matches them inside the text
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False)
                            for p, _, t in pieces if t in (SPM_CONTROL, SPM_UNKNOWN)])
    return tok


class UnigramTokenizer(TokenizersBase):
    """SentencePiece Unigram (T5, XLM-R)."""

    NAME = NAME
    Config = UnigramConfig

    def __init__(self, config: UnigramConfig, base_dir: Path | str = ".") -> None:
        self.config = config
        base = Path(base_dir)
        if config.tokenizer_json is not None:
            tok = load_tokenizer_json(config.tokenizer_json, base)
            kind = model_type(tok)
            if kind != "Unigram":
                raise TpError(f"tokenizer_json {config.tokenizer_json} holds a {kind} model, "
                              "not Unigram", hint="use the `hf` tokenizer for any tokenizer.json")
        else:
            data = read_bytes(str(config.model), base, "model")
            tok = tokenizer_from_spm(parse_spm_model(data, resolve_ref(str(config.model), base)))
        mark_special(tok, config.special_tokens)
        roles = {"pad": config.pad_token, "eos": config.eos_token, "unk": config.unk_token,
                 "bos": config.bos_token, "mask": config.mask_token, "cls": config.cls_token,
                 "sep": config.sep_token}
        required = {r for r in roles if f"{r}_token" in config.model_fields_set}
        self._special = resolve_roles(
            tok, roles, required, self.describe(),
            hint="name a token of the vocabulary, or add it with data.tokenizer.special_tokens")
        if config.tokenizer_json is not None:  # role tokens and sentinels stay whole in text
            mark_special(tok, [str(tok.id_to_token(i)) for i in self._special.values()]
                         + [str(tok.id_to_token(i)) for i in sentinel_ids_of(tok)])
        # what `transformers` adds around a sequence (tp's ids never carry it): XLM-R wraps it
        # in <s> ... </s> when the recipe names cls and sep; T5 ends it with </s>. A
        # tokenizer.json keeps its own otherwise.
        cls_id, sep_id, eos_id = (self._special.get(k) for k in ("cls", "sep", "eos"))
        named_pair = bool({"cls_token", "sep_token"} & config.model_fields_set)
        if config.model is not None or named_pair:
            if cls_id is not None and sep_id is not None:
                cls_t, sep_t = str(tok.id_to_token(cls_id)), str(tok.id_to_token(sep_id))
                tok.post_processor = processors.TemplateProcessing(
                    single=f"{cls_t} $A {sep_t}", pair=f"{cls_t} $A {sep_t} {sep_t} $B {sep_t}",
                    special_tokens=[(cls_t, cls_id), (sep_t, sep_id)])
            elif eos_id is not None and config.model is not None:
                eos_t = str(tok.id_to_token(eos_id))
                tok.post_processor = processors.TemplateProcessing(
                    single=f"$A {eos_t}", pair=f"$A {eos_t} $B {eos_t}",
                    special_tokens=[(eos_t, eos_id)])
        self._tok = tok
        self._fingerprint = None

    def describe(self) -> str:
        return str(self.config.tokenizer_json or self.config.model or NAME)

    def _saved_options(self) -> dict[str, Any]:
        options = self.config.model_dump()
        options.update(model=None, tokenizer_json="tokenizer.json")
        for role in ("pad", "eos", "unk", "bos", "mask", "cls", "sep"):  # defaults it lacked
            if role not in self._special:
                options[f"{role}_token"] = None
        return options
