"""What every tokenizer built on Hugging Face `tokenizers` shares: reading its files, the saved
folder (`tp_tokenizer.json` + a `transformers`-loadable tokenizer.json), fingerprints, special ids.

A file reference is a path relative to the recipe folder, an absolute path, `pkg:PACKAGE/rel/path`
(a file shipped inside an installed Python package) or any fsspec URL.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import struct
from importlib import resources
from itertools import chain
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from tokenizers import AddedToken, Tokenizer

from tpcli.errors import TpError

SAVED_FILE = "tp_tokenizer.json"  # what `from_saved` reads: registry name and options
ROLES = ("pad", "unk", "cls", "sep", "mask", "bos", "eos")  # keys of `special_ids`
SENTINEL = re.compile(r"^<extra_id_(\d+)>$")  # T5's span-corruption sentinels


def resolve_ref(ref: str, base_dir: Path) -> str:
    """A file reference as a local path or an fsspec URL (not checked for existence)."""
    if ref.startswith("pkg:"):
        package, _, rel = ref[4:].partition("/")
        return str(_package_dir(package, ref) / rel)
    if "://" in ref:
        return ref
    path = Path(ref).expanduser()
    return str(path if path.is_absolute() else base_dir / path)


def _package_dir(package: str, ref: str) -> Path:
    """The folder of an installed package, found without importing it (importing e.g. `whisper`
    would pull in its heavy dependencies only to read a data file)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError) as e:
        spec = None
        cause: Exception | None = e
    else:
        cause = None
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    if spec is not None and spec.origin and spec.origin not in ("built-in", "frozen"):
        return Path(spec.origin).parent
    if spec is not None:
        try:
            return Path(str(resources.files(package)))
        except (ModuleNotFoundError, TypeError) as e:
            cause = e
    raise TpError(
        f"tokenizer file {ref!r}: no installed Python package {package!r}",
        hint="install the package, or give a path or URL instead",
    ) from cause


def read_bytes(ref: str, base_dir: Path, what: str) -> bytes:
    """The bytes of a tokenizer file; a missing or unreadable file is a TpError naming it."""
    import fsspec

    where = resolve_ref(ref, base_dir)
    try:
        with fsspec.open(where, "rb") as f:
            data: bytes = f.read()
    except FileNotFoundError as e:
        raise TpError(
            f"tokenizer {what} file not found: {where}",
            hint=f"check data.tokenizer.{what} in the recipe (relative paths resolve against "
            f"the recipe folder {base_dir})",
        ) from e
    except IsADirectoryError as e:
        raise TpError(f"tokenizer {what} file {where} is a folder, not a file",
                      hint=f"point data.tokenizer.{what} at the file inside it") from e
    except (OSError, ValueError, ImportError) as e:
        raise TpError(f"cannot read tokenizer {what} file {where}: {e}") from e
    return data


def read_text(ref: str, base_dir: Path, what: str) -> str:
    """The UTF-8 text of a tokenizer file; a missing or unreadable file is a TpError naming it."""
    data = read_bytes(ref, base_dir, what)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        where = resolve_ref(ref, base_dir)
        raise TpError(f"tokenizer {what} file {where} is not UTF-8 text: {e}") from e


def parse_vocab(text: str) -> dict[str, int]:
    """vocab.txt -> {token: id}; the id is the line number (as BERT and `tokenizers` read it)."""
    vocab: dict[str, int] = {}
    for i, line in enumerate(text.splitlines()):
        vocab[line.rstrip()] = i
    return vocab


def parse_json(text: str, where: str, what: str) -> Any:
    """JSON text of a tokenizer file; broken JSON is a TpError naming the file and the line."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise TpError(f"tokenizer {what} file {where} is not valid JSON: {e}",
                      hint="the file is corrupt or truncated: download or write it again") from e


def load_tokenizer_json(ref: str, base_dir: Path, what: str = "tokenizer_json") -> Tokenizer:
    """A `tokenizers.Tokenizer` from a tokenizer.json reference, its padding/truncation off."""
    text = read_text(ref, base_dir, what)
    where = resolve_ref(ref, base_dir)
    spec = parse_json(text, where, what)
    if not isinstance(spec, dict) or not isinstance(spec.get("model"), dict):
        raise TpError(f"tokenizer {what} file {where} is not a Hugging Face tokenizer.json "
                      "(no 'model' section)",
                      hint="give the tokenizer.json written by `tokenizers` or `transformers`")
    try:
        tok = Tokenizer.from_str(text)
    except Exception as e:  # the Rust parser raises a bare Exception on a bad spec
        raise TpError(f"tokenizer {what} file {where} is corrupt: {e}",
                      hint="the file is damaged or from an incompatible `tokenizers` version; "
                      "write it again") from e
    # A tokenizer.json may carry a fixed padding/truncation (BERT's 128): ids must be raw.
    tok.no_padding()
    tok.no_truncation()
    return tok


def model_type(tok: Tokenizer) -> str:
    """The tokenizer.json model type: 'BPE', 'Unigram', 'WordPiece' or 'WordLevel'."""
    spec = json.loads(tok.to_str())
    return str((spec.get("model") or {}).get("type", ""))


def full_vocab(tok: Tokenizer) -> dict[str, int]:
    return tok.get_vocab(with_added_tokens=True)


def vocab_size_of(tok: Tokenizer) -> int:
    """One more than the largest id (ids may have gaps only in broken files)."""
    vocab = full_vocab(tok)
    return max(vocab.values()) + 1 if vocab else 0


def mark_special(tok: Tokenizer, tokens: Iterable[str]) -> None:
    """Make each token an added special token (kept whole in text, skippable when decoding);
    tokens absent from the vocabulary are appended to it, in order."""
    wanted = [t for t in dict.fromkeys(tokens) if t]
    if wanted:
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in wanted])


def resolve_roles(tok: Tokenizer, roles: dict[str, str | None], required: set[str],
                  source: str, hint: str) -> dict[str, int]:
    """special_ids from role -> token; a role in `required` whose token is absent is an error."""
    vocab = full_vocab(tok)
    out: dict[str, int] = {}
    for role in ROLES:
        token = roles.get(role)
        if token is None:
            continue
        if token in vocab:
            out[role] = vocab[token]
        elif role in required:
            raise TpError(f"tokenizer {source}: the {role} token {token!r} is not in the "
                          "vocabulary", hint=hint)
    return out


def sentinel_ids_of(tok: Tokenizer) -> list[int]:
    """Ids of `<extra_id_N>` in N order (T5 sentinels); empty when the vocabulary has none."""
    found = {int(m.group(1)): i for t, i in full_vocab(tok).items() if (m := SENTINEL.match(t))}
    return [found[n] for n in sorted(found)]


def continuation_mask_of(tok: Tokenizer) -> np.ndarray:
    """(V,) bool, True for pieces that continue the previous piece's word: WordPiece pieces with
    the continuing prefix ('##ing'); for byte-level BPE ('Ġ' = a leading space) and SentencePiece
    ('▁' = a word start) the letter/digit pieces without that mark. Special tokens never."""
    spec = json.loads(tok.to_str())
    model = spec.get("model") or {}
    mask = np.zeros(vocab_size_of(tok), dtype=bool)
    specials = {a.content for a in tok.get_added_tokens_decoder().values() if a.special}
    prefix = model.get("continuing_subword_prefix") if model.get("type") == "WordPiece" else None
    for token, i in tok.get_vocab(with_added_tokens=False).items():
        if token in specials or not token:
            continue
        if prefix:
            mask[i] = token.startswith(prefix) and len(token) > len(prefix)
        else:
            mask[i] = token[0] not in ("Ġ", "▁", " ") and token[0].isalnum()
    return mask


def fingerprint_of(tok: Tokenizer) -> str:
    """sha256 of the vocabulary (token -> id, special flags) and of every step that turns text
    into ids: normaliser, pre-tokeniser and model (merges, scores, options)."""
    spec = json.loads(tok.to_str())
    model = {k: v for k, v in (spec.get("model") or {}).items() if k != "vocab"}
    if isinstance((spec.get("model") or {}).get("vocab"), list):  # Unigram: [piece, score] pairs
        # at float32 precision, SentencePiece's own: a saved and reloaded tokenizer.json can
        # spell a score's last float64 digits differently (-3.7497644424438477 comes back as
        # -3.749764442443848), and the token ids cannot depend on them
        model["scores"] = [struct.unpack("f", struct.pack("f", s))[0]
                           for _, s in spec["model"]["vocab"]]
    added = sorted((a["id"], a["content"], a.get("special", False), a.get("normalized", False),
                    a.get("single_word", False), a.get("lstrip", False), a.get("rstrip", False))
                   for a in spec.get("added_tokens") or [])
    payload = {
        "vocab": sorted(full_vocab(tok).items(), key=lambda kv: kv[1]),
        "added": added,
        "normalizer": spec.get("normalizer"),
        "pre_tokenizer": spec.get("pre_tokenizer"),
        "model": model,
    }
    blob = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()


def write_hf(tok: Tokenizer, directory: str | Path, special_ids: dict[str, int],
             extra: dict[str, Any] | None = None) -> None:
    """Write tokenizer.json + tokenizer_config.json + special_tokens_map.json so that
    `transformers.AutoTokenizer.from_pretrained(directory)` gives the same ids (plus whatever
    the tokenizer.json post-processor adds when `add_special_tokens=True`)."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    names = {f"{role}_token": tok.id_to_token(i) for role, i in special_ids.items()}
    extra_specials = [
        a.content for a in tok.get_added_tokens_decoder().values()
        if a.special and a.content not in names.values()
    ]
    special_map: dict[str, Any] = dict(names)
    if extra_specials:
        special_map["additional_special_tokens"] = extra_specials
    config: dict[str, Any] = {
        # the plain fast tokenizer: it runs tokenizer.json as written, nothing rebuilt from a
        # model-specific class
        "tokenizer_class": "PreTrainedTokenizerFast",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 1_000_000_000_000_000_019_884_624_838_656,
        **special_map,
        **(extra or {}),
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False)
                                               + "\n", encoding="utf-8")
    (out / "special_tokens_map.json").write_text(
        json.dumps(special_map, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_saved(directory: str | Path, name: str, options: dict[str, Any],
                source: dict[str, Any], fingerprint: str) -> None:
    """The `tp_tokenizer.json` that `from_saved` reads back."""
    info = {"name": name, "options": options, "source": source, "fingerprint": fingerprint}
    (Path(directory) / SAVED_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")


def read_saved(directory: str | Path, name: str) -> dict[str, Any]:
    """The options stored by `write_saved`, checked to belong to tokenizer `name`."""
    folder = Path(directory)
    meta_path = folder / SAVED_FILE
    try:
        info = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise TpError(
            f"{folder} holds no saved tokenizer ({SAVED_FILE} is missing)",
            hint="point at a folder written by the tokenizer's save()",
        ) from e
    except (OSError, json.JSONDecodeError) as e:
        raise TpError(f"cannot read saved tokenizer {meta_path}: {e}") from e
    if info.get("name") != name:
        raise TpError(f"{meta_path} holds tokenizer {info.get('name')!r}, not {name!r}")
    options: dict[str, Any] = info["options"]
    return options


class TokenizerCalls:
    """The ids half of the Tokenizer protocol over a `tokenizers.Tokenizer` in `self._tok` with
    roles in `self._special`: encoding, decoding and token <-> id look-ups."""

    _tok: Tokenizer
    _special: dict[str, int]

    @property
    def special_ids(self) -> dict[str, int]:
        return dict(self._special)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Ids of each text, without special tokens; the batch is split over all cores."""
        return [e.ids for e in self._tok.encode_batch_fast(texts, add_special_tokens=False)]

    def encode_batch_arrays(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """`encode_batch` as arrays: every text's ids back to back (int64) and each one's count.
        What `tp preprocess` writes from: no list of Python ints is kept for the batch."""
        encodings = self._tok.encode_batch_fast(texts, add_special_tokens=False)
        lengths = np.fromiter(map(len, encodings), dtype=np.int64, count=len(encodings))
        ids = chain.from_iterable(e.ids for e in encodings)
        return np.fromiter(ids, dtype=np.int64, count=int(lengths.sum())), lengths

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self._tok.id_to_token(i)


class TokenizersBase(TokenizerCalls):
    """The Tokenizer protocol over a `tokenizers.Tokenizer` in `self._tok` with roles in
    `self._special`. Subclasses set NAME, Config, build both in __init__ and give
    `_saved_options()` (their options with the source replaced by the saved tokenizer.json)."""

    NAME = ""
    _fingerprint: str | None = None
    config: Any

    @property
    def vocab_size(self) -> int:
        return vocab_size_of(self._tok)

    @property
    def backend(self) -> Tokenizer:
        """The underlying `tokenizers.Tokenizer` (with the post-processor `transformers` uses)."""
        return self._tok

    def sentinel_ids(self) -> list[int]:
        """Ids of `<extra_id_0>`, `<extra_id_1>`, ... in N order; empty when there are none."""
        return sentinel_ids_of(self._tok)

    def continuation_mask(self) -> np.ndarray:
        """(V,) bool, True for pieces that continue a word (whole-word masking uses it)."""
        return continuation_mask_of(self._tok)

    def fingerprint(self) -> str:
        if self._fingerprint is None:
            self._fingerprint = fingerprint_of(self._tok)
        return self._fingerprint

    def describe(self) -> str:
        """A short human name for error messages."""
        return self.NAME

    def _saved_options(self) -> dict[str, Any]:
        raise NotImplementedError

    def save_hf(self, directory: str | Path) -> None:
        """tokenizer.json + tokenizer_config.json + special_tokens_map.json for `transformers`."""
        write_hf(self._tok, directory, self._special)

    def save(self, directory: str | Path) -> None:
        """The `transformers` files of `save_hf` plus tp_tokenizer.json for `from_saved`."""
        self.save_hf(directory)
        write_saved(directory, self.NAME, self._saved_options(), self.config.model_dump(),
                    self.fingerprint())

    @classmethod
    def from_saved(cls, directory: str | Path) -> Any:
        """Rebuild a tokenizer written by `save`."""
        options = read_saved(directory, cls.NAME)
        return cls(cls.Config(**options), Path(directory))  # type: ignore[attr-defined]
