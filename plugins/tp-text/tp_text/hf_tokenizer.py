"""Any Hugging Face `tokenizer.json` (WordPiece, BPE, Unigram, WordLevel), run as written.

Registered as `hf`. The tokens that play each role (pad, unk, cls, sep, mask, bos, eos) come from
the tokenizer itself: the recipe's explicit options first, then the `tokenizer_config.json`
beside the tokenizer.json (cls_token, sep_token, ...), then its post-processor (the tokens it puts
around a sequence), then its added tokens flagged special, recognised by their usual spelling.
Ids come back without special tokens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import Field

from tp_text.tokenizer_files import (
    ROLES,
    TokenizersBase,
    load_tokenizer_json,
    mark_special,
    parse_json,
    read_text,
    resolve_ref,
    resolve_roles,
    write_hf,
)
from tpcli.errors import TpError
from tpcli.model.module import ModuleConfig

NAME = "hf"
CONFIG_FILE = "tokenizer_config.json"
# the usual spelling of each role, matched only against tokens the file flags special
USUAL: dict[str, tuple[str, ...]] = {
    "pad": ("[PAD]", "<pad>", "<|pad|>", "<|padding|>"),
    "unk": ("[UNK]", "<unk>", "<|unk|>"),
    "cls": ("[CLS]", "<cls>"),
    "sep": ("[SEP]", "<sep>"),
    "mask": ("[MASK]", "<mask>", "<|mask|>"),
    "bos": ("<s>", "[BOS]", "<|begin_of_text|>", "<|startoftext|>", "<|endoftext|>"),
    "eos": ("</s>", "[EOS]", "<|end_of_text|>", "<|endoftext|>", "<|eot_id|>"),
}


class HfTokenizerConfig(ModuleConfig):
    """Options of the `hf` tokenizer: a tokenizer.json and, optionally, the role tokens."""

    tokenizer_json: str = Field(
        description="a Hugging Face tokenizer.json: path (relative to the recipe), "
        "pkg:PACKAGE/path or fsspec URL"
    )
    tokenizer_config: str | None = Field(
        None, description="its tokenizer_config.json (default: the one beside it, if any)"
    )
    pad_token: str | None = Field(None, description="padding token (default: from the files)")
    unk_token: str | None = Field(None, description="unknown token (default: from the files)")
    cls_token: str | None = Field(None, description="sequence-start token (default: files)")
    sep_token: str | None = Field(None, description="separator token (default: from the files)")
    mask_token: str | None = Field(None, description="masked-LM token (default: from the files)")
    bos_token: str | None = Field(None, description="beginning-of-text token (default: files)")
    eos_token: str | None = Field(None, description="end-of-text token (default: from the files)")
    special_tokens: list[str] = Field(
        default_factory=list,
        description="more special tokens kept whole in text; absent ones are appended in order",
    )


def _token_name(value: Any) -> str | None:
    """A tokenizer_config.json token entry: a string or {"content": ...}."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return str(value["content"])
    return None


def roles_from_post_processor(spec: dict[str, Any]) -> dict[str, str]:
    """cls/sep (or bos/eos) from the tokens a post-processor puts around one sequence."""
    pp = spec.get("post_processor") or {}
    kind = pp.get("type")
    if kind in ("BertProcessing", "RobertaProcessing"):
        return {"cls": pp["cls"][0], "sep": pp["sep"][0]}
    if kind == "Sequence":
        for inner in pp.get("processors") or []:
            found = roles_from_post_processor({"post_processor": inner})
            if found:
                return found
        return {}
    if kind != "TemplateProcessing":
        return {}
    single = pp.get("single") or []
    where = [i for i, p in enumerate(single) if "Sequence" in p]
    if not where:
        return {}
    before = [p["SpecialToken"]["id"] for p in single[:where[0]] if "SpecialToken" in p]
    after = [p["SpecialToken"]["id"] for p in single[where[0] + 1:] if "SpecialToken" in p]
    if before and after:
        return {"cls": before[0], "sep": after[-1]}
    if before:
        return {"bos": before[0]}
    if after:
        return {"eos": after[-1]}
    return {}


class HfTokenizer(TokenizersBase):
    """A Hugging Face tokenizer.json as it is, with its special tokens read from its files."""

    NAME = NAME
    Config = HfTokenizerConfig

    def __init__(self, config: HfTokenizerConfig, base_dir: Path | str = ".") -> None:
        self.config = config
        base = Path(base_dir)
        tok = load_tokenizer_json(config.tokenizer_json, base)
        self._hf_config = self._read_config(config, base)
        mark_special(tok, config.special_tokens)
        spec = json.loads(tok.to_str())
        specials = {a.content for a in tok.get_added_tokens_decoder().values() if a.special}
        roles: dict[str, str | None] = {}
        for role in ROLES:  # the lowest-priority source first, each later one overrides
            roles[role] = next((t for t in USUAL[role] if t in specials), None)
        roles.update(roles_from_post_processor(spec))
        for role in ROLES:
            named = _token_name(self._hf_config.get(f"{role}_token"))
            if named is not None:
                roles[role] = named
        required: set[str] = set()
        for role in ROLES:
            explicit = getattr(config, f"{role}_token")
            if explicit is not None:
                roles[role] = explicit
                required.add(role)
        self._special = resolve_roles(
            tok, roles, required, self.describe(),
            hint="name a token of the vocabulary, or add it with data.tokenizer.special_tokens")
        mark_special(tok, [str(roles[r]) for r in sorted(required)])  # kept whole in text
        self._roles = {r: str(tok.id_to_token(i)) for r, i in self._special.items()}
        self._tok = tok
        self._fingerprint = None

    @staticmethod
    def _read_config(config: HfTokenizerConfig, base: Path) -> dict[str, Any]:
        """tokenizer_config.json: the named one (must exist) or the one beside tokenizer.json."""
        if config.tokenizer_config is not None:
            ref, must = config.tokenizer_config, True
        else:
            # a path or URL, always with "/"; absolute, as it is read again against `base`
            where = resolve_ref(config.tokenizer_json, base.absolute())
            ref, must = where.rsplit("/", 1)[0] + "/" + CONFIG_FILE, False
        try:
            text = read_text(ref, base, "tokenizer_config")
        except TpError:
            if must:
                raise
            return {}
        data = parse_json(text, resolve_ref(ref, base), "tokenizer_config")
        if not isinstance(data, dict):
            raise TpError(f"tokenizer_config {resolve_ref(ref, base)} is not a JSON object",
                          hint="give the tokenizer_config.json written by `transformers`")
        return data

    def describe(self) -> str:
        return self.config.tokenizer_json

    def save_hf(self, directory: str | Path) -> None:
        """tokenizer.json as read, plus a tokenizer_config.json naming its role tokens."""
        keep = {k: v for k, v in self._hf_config.items()
                if k in ("model_max_length", "do_lower_case", "add_prefix_space")}
        write_hf(self._tok, directory, self._special, extra=keep)

    def _saved_options(self) -> dict[str, Any]:
        options = self.config.model_dump()
        # the saved tokenizer_config.json names the roles found; fix them as explicit options
        options.update(tokenizer_json="tokenizer.json", tokenizer_config=None,
                       **{f"{r}_token": t for r, t in self._roles.items()})
        return options
