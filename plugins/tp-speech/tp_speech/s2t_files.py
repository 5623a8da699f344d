"""What the S2T converter carries beside the weights: HF's feature extractor
(preprocessor_config.json, Speech2TextFeatureExtractor) and tokenizer (Speech2TextTokenizer:
a SentencePiece model + vocab.json).

Feature extractor. HF -> tp reads preprocessor_config.json into the recipe's `speech` processor
section (the fbank options and utterance CMVN); tp -> HF writes the preprocessor_config.json of
the recipe's processor, so `AutoFeatureExtractor.from_pretrained` computes the features tp's
pipeline computes.

Tokenizer. Speech2TextTokenizer cuts text with the SentencePiece model and numbers the pieces
through vocab.json (fairseq's dictionary: <s>=0, <pad>=1, </s>=2, <unk>=3, then the pieces),
whose ids need not be the SentencePiece model's. tp's `unigram` tokenizer takes a
`tokenizers` pipeline: `s2t_tokenizer` builds the SentencePiece model's pipeline (its
normaliser, pre-tokeniser and scores) over vocab.json's pieces in vocab.json's order, so tp's ids
are HF's. The two HF files are kept beside it in the checkpoint's tokenizer folder
(`tokenizer_from_hf`), and `to_hf` writes them back unchanged; a tokenizer trained in tp has no
such files and is exported as the SentencePiece model `spm_model_bytes` writes from its
pipeline.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tpcli.errors import DataError, TpError

log = logging.getLogger(__name__)

PROCESSOR_FILE = "preprocessor_config.json"
SPM_FILE, VOCAB_FILE, TOKENIZER_CONFIG = "sentencepiece.bpe.model", "vocab.json", \
    "tokenizer_config.json"
HF_FILES = (SPM_FILE, VOCAB_FILE)
ROLES = {"bos": "<s>", "pad": "<pad>", "eos": "</s>", "unk": "<unk>"}  # HF's defaults


def read_json(path: Path, what: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(f"cannot read {path}: {e}",
                        hint=f"save the {what} again (save_pretrained(DIR))") from e
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a JSON object", hint=f"is it a {what}?")
    return data


# ------------------------------------------------------------------------ feature extractor

def processor_section(fe: dict[str, Any], upper_case: bool = False) -> dict[str, Any]:
    """The recipe's `speech` processor section of an HF Speech2TextFeatureExtractor config
    (`upper_case`: the tokenizer upper-cases what it decodes, so its vocabulary is lower case
    and transcripts are lower-cased before tokenizing)."""
    means = bool(fe.get("normalize_means", True))
    variances = bool(fe.get("normalize_vars", True))
    cmvn = bool(fe.get("do_ceptral_normalize", True)) and (means or variances)
    if cmvn and not (means and variances):
        log.warning("the feature extractor normalises only the %s; tp's utterance CMVN "
                    "normalises means and variances", "means" if means else "variances")
    features = {"num_mel_bins": int(fe.get("num_mel_bins", fe.get("feature_size", 80))),
                "dither": float(fe.get("dither", 0.0))}
    section = {"name": "speech", "sample_rate": int(fe.get("sampling_rate", 16000)),
               "features": features, "cmvn": cmvn}
    if upper_case:
        section["case"] = "lower"
    return section


def feature_extractor_config(options: Any) -> dict[str, Any]:
    """preprocessor_config.json (Speech2TextFeatureExtractor) of a `speech` processor's
    options: its fbank's bins, rate and dither, and CMVN (means and variances) or none."""
    fbank = options.features
    cmvn = bool(options.cmvn)
    return {"feature_extractor_type": "Speech2TextFeatureExtractor",
            "feature_size": fbank.num_mel_bins, "num_mel_bins": fbank.num_mel_bins,
            "sampling_rate": options.sample_rate, "dither": float(fbank.dither),
            "padding_value": 0.0, "padding_side": "right", "return_attention_mask": True,
            "do_ceptral_normalize": cmvn, "normalize_means": cmvn, "normalize_vars": cmvn}


# ------------------------------------------------------------------------ tokenizer

def s2t_tokenizer(spm_bytes: bytes, vocab: dict[str, int], where: str) -> Any:
    """The `tokenizers` pipeline of a Speech2TextTokenizer: the SentencePiece model's
    normaliser, pre-tokeniser, decoder and piece scores, with the pieces numbered as vocab.json
    numbers them. A piece of vocab.json the model lacks keeps score 0 (kept whole when it
    occurs); a piece of the model vocab.json lacks is dropped (HF maps it to <unk>)."""
    from tp_text.unigram import SPM_CONTROL, SPM_NORMAL, SPM_UNKNOWN, parse_spm_model, \
        tokenizer_from_spm

    spm = parse_spm_model(spm_bytes, where)
    scores = {p: s for p, s, _ in spm["pieces"]}
    order = sorted(vocab.items(), key=lambda kv: kv[1])
    if [i for _, i in order] != list(range(len(order))):
        raise DataError(f"{where}: vocab.json's ids are not 0..{len(order) - 1}",
                        hint="give the vocab.json saved with the model")
    unk = vocab.get(ROLES["unk"])
    if unk is None:
        raise DataError(f"{where}: vocab.json has no {ROLES['unk']}")
    specials = set(ROLES.values())
    pieces = [(p, scores.get(p, 0.0) if p not in specials else 0.0,
               SPM_UNKNOWN if p == ROLES["unk"] else SPM_CONTROL if p in specials
               else SPM_NORMAL) for p, _ in order]
    return tokenizer_from_spm({**spm, "pieces": pieces, "unk_id": unk})


def tokenizer_from_hf(folder: Path, directory: Path) -> tuple[Any, dict[str, Any]] | None:
    """The folder's Speech2TextTokenizer as a tp `unigram` tokenizer saved in `directory`
    (with the HF files beside it, for the way back), and the recipe's data.tokenizer section;
    None when the folder has no tokenizer."""
    from tp_text.unigram import UnigramConfig, UnigramTokenizer

    if not all((folder / name).is_file() for name in HF_FILES):
        return None
    config = read_json(folder / TOKENIZER_CONFIG, "tokenizer") \
        if (folder / TOKENIZER_CONFIG).is_file() else {}
    if config.get("lang_codes"):
        raise TpError(f"{folder}: a multilingual Speech2Text tokenizer (lang_codes "
                      f"{config['lang_codes']!r}) prefixes a language token; tp carries "
                      "single-language tokenizers only", hint="convert an ASR checkpoint")
    vocab = {str(k): int(v) for k, v in read_json(folder / VOCAB_FILE, "tokenizer").items()}
    # do_lower_case is stored but not applied by Speech2TextTokenizer (transformers 5): the
    # text is cut as given, here too
    tok = s2t_tokenizer((folder / SPM_FILE).read_bytes(), vocab, str(folder / SPM_FILE))
    if config.get("do_upper_case"):
        log.warning("%s: Speech2TextTokenizer upper-cases decoded text (do_upper_case); tp's "
                    "decoded text keeps the pieces' case (the recipe's speech processor "
                    "lower-cases transcripts: case=lower)", folder)
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    roles = {f"{r}_token": str(config.get(f"{r}_token") or t) for r, t in ROLES.items()}
    section = {"name": "unigram", "tokenizer_json": "tokenizer.json", **roles,
               "mask_token": None}
    tokenizer = UnigramTokenizer(UnigramConfig(**{k: v for k, v in section.items()
                                                  if k != "name"}), directory)
    tokenizer.save(str(directory))
    for name in (*HF_FILES, TOKENIZER_CONFIG):
        if (folder / name).is_file():
            shutil.copy(folder / name, directory / f"hf_{name}")
    return tokenizer, {**section, "tokenizer_json": "tokenizer/tokenizer.json"}


def tokenizer_to_hf(source: Path, folder: Path) -> bool:
    """The HF tokenizer files kept by `tokenizer_from_hf` in checkpoint tokenizer folder
    `source`, written to `folder`; False when there are none."""
    if not all((source / f"hf_{name}").is_file() for name in HF_FILES):
        return False
    for name in (*HF_FILES, TOKENIZER_CONFIG):
        if (source / f"hf_{name}").is_file():
            shutil.copy(source / f"hf_{name}", folder / name)
    if not (folder / TOKENIZER_CONFIG).is_file():
        config = {"tokenizer_class": "Speech2TextTokenizer", **{
            f"{r}_token": t for r, t in ROLES.items()}}
        (folder / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return True


# ------------------------------------------------------------------------ SentencePiece writer
# A tokenizer trained or built in tp keeps only its `tokenizers` pipeline; Speech2TextTokenizer
# needs a SentencePiece model file. The few ModelProto fields a Unigram model's encoding and
# decoding read are written by hand (protobuf wire format): the pieces with scores and types,
# the trainer's model type, special ids and byte fallback, the normaliser's character map and
# whitespace rules. Field numbers are sentencepiece_model.proto's.

SPM_NORMAL, SPM_UNKNOWN, SPM_CONTROL, SPM_USER = 1, 2, 3, 4


def _varint(value: int) -> bytes:
    value &= (1 << 64) - 1  # negative int32 (an absent id, -1) as protobuf writes it
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, value: int | bytes | float) -> bytes:
    """One protobuf field: an int (varint), bytes (length-delimited) or float (fixed32)."""
    import struct

    if isinstance(value, bool) or isinstance(value, int):
        return _varint(number << 3) + _varint(int(value))
    if isinstance(value, float):
        return _varint(number << 3 | 5) + struct.pack("<f", value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _normaliser(spec: dict[str, Any] | None, where: str) -> tuple[bytes, bool]:
    """(precompiled character map, remove_extra_whitespaces) of the pipelines
    `tp_text.unigram.tokenizer_from_spm` builds; TpError for normalisers SentencePiece lacks."""
    import base64

    steps = [] if spec is None else spec.get("normalizers", [spec]) \
        if spec.get("type") == "Sequence" else [spec]
    charsmap, squeeze, strip = b"", False, False
    for step in steps:
        kind = step.get("type")
        if kind == "Precompiled":
            charsmap = base64.b64decode(step.get("precompiled_charsmap") or "")
        elif kind == "Replace" and step.get("pattern") == {"Regex": " {2,}"} \
                and step.get("content") == " ":
            squeeze = True
        elif kind == "Strip" and step.get("strip_left") and step.get("strip_right"):
            strip = True
        else:
            raise TpError(f"{where}: its normaliser {kind} has no SentencePiece counterpart, so "
                          "Speech2TextTokenizer cannot be written",
                          hint="use a tokenizer read from a SentencePiece .model (the unigram "
                          "tokenizer's `model` option)")
    return charsmap, squeeze and strip


def spm_model_bytes(tok: Any, special_ids: dict[str, int], where: str) -> bytes:
    """A SentencePiece Unigram model file that cuts text into the pieces `tok` (a
    `tokenizers.Tokenizer` with a Unigram model, Metaspace pre-tokeniser) does, with its ids."""
    spec = json.loads(tok.to_str())
    model = spec.get("model", {})
    if model.get("type") != "Unigram":
        raise TpError(f"{where} is a {model.get('type')} tokenizer; Speech2TextTokenizer needs "
                      "a SentencePiece Unigram model", hint="train the vocabulary as Unigram")
    charsmap, squeeze = _normaliser(spec.get("normalizer"), where)
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") != "Metaspace":
        raise TpError(f"{where}: pre-tokeniser {pre.get('type')} is not SentencePiece's")
    added = {a["content"]: a.get("special", False) for a in spec.get("added_tokens", [])}
    unk = model.get("unk_id")
    pieces = b""
    for i, (piece, score) in enumerate(model["vocab"]):
        kind = SPM_UNKNOWN if i == unk else (SPM_CONTROL if added.get(piece) else
                                             SPM_USER if piece in added else SPM_NORMAL)
        pieces += _field(1, _field(1, piece.encode("utf-8")) + _field(2, float(score))
                         + _field(3, kind))
    ids = {role: special_ids.get(role, -1) for role in ("unk", "bos", "eos", "pad")}
    ids["unk"] = -1 if unk is None else int(unk)
    trainer = (_field(3, 1) + _field(4, len(model["vocab"]))
               + _field(35, bool(model.get("byte_fallback")))
               + b"".join(_field(40 + n, ids[r]) for n, r in enumerate(("unk", "bos", "eos",
                                                                           "pad"))))
    normaliser = (_field(1, b"nmt_nfkc" if charsmap else b"identity") + _field(2, charsmap)
                  + _field(3, pre.get("prepend_scheme", "always") != "never")
                  + _field(4, squeeze) + _field(5, True))
    return pieces + _field(2, trainer) + _field(3, normaliser)


def write_s2t_tokenizer(tokenizer: Any, folder: Path) -> None:
    """A tp tokenizer as Speech2TextTokenizer's files: sentencepiece.bpe.model (`spm_model_bytes`)
    and vocab.json with the same ids."""
    tok = tokenizer.backend
    where = f"the checkpoint's tokenizer ({tokenizer.describe()})"
    model = spm_model_bytes(tok, tokenizer.special_ids, where)
    vocab = {piece: i for i, (piece, _) in enumerate(json.loads(tok.to_str())["model"]["vocab"])}
    names = {f"{role}_token": tok.id_to_token(i) for role, i in tokenizer.special_ids.items()
             if role in ROLES}
    (folder / SPM_FILE).write_bytes(model)
    (folder / VOCAB_FILE).write_text(json.dumps(vocab, ensure_ascii=False, indent=2) + "\n",
                                     encoding="utf-8")
    config = {"tokenizer_class": "Speech2TextTokenizer", "do_lower_case": False,
              "do_upper_case": False, **names}
    (folder / TOKENIZER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


# ------------------------------------------------------------------------ the converter's part

@dataclass(frozen=True)
class S2tPreprocessing:
    """The S2T converter's `preprocessing` (see `tpcli.convert.Converter`)."""

    def from_hf(self, folder: Path, hf_config: dict[str, Any]) -> dict[str, Any]:
        """The recipe's data section: the `speech` processor of the folder's
        preprocessor_config.json (HF's defaults, with a warning, when it has none)."""
        path = Path(folder) / PROCESSOR_FILE
        if path.is_file():
            fe = read_json(path, "feature extractor")
        else:
            log.warning("%s has no %s: assuming Speech2TextFeatureExtractor's defaults (80 "
                        "bins, 16 kHz, utterance CMVN)", folder, PROCESSOR_FILE)
            fe = {}
        config = Path(folder) / TOKENIZER_CONFIG
        upper = config.is_file() and bool(read_json(config, "tokenizer").get("do_upper_case"))
        section = processor_section(fe, upper)
        bins = section["features"]["num_mel_bins"]
        reads = hf_config.get("input_feat_per_channel", 80) * hf_config.get("input_channels", 1)
        if bins != reads:
            raise DataError(f"{path} makes {bins} features per frame, but the model reads "
                            f"{reads} (input_feat_per_channel)",
                            hint="save the feature extractor that belongs to the model")
        return {"processor": section}

    def tokenizer_from_hf(self, folder: Path, hf_config: dict[str, Any], directory: Path
                          ) -> tuple[Any, dict[str, Any]] | None:
        """(tp tokenizer saved in `directory`, data.tokenizer section) of the folder's
        Speech2TextTokenizer files; None without them."""
        return tokenizer_from_hf(Path(folder), Path(directory))

    def to_hf(self, recipe: Any, folder: Path, hf_config: dict[str, Any]) -> None:
        """preprocessor_config.json of the recipe's processor, and the tokenizer files the
        checkpoint kept (see the module docstring)."""
        config = feature_extractor_config(recipe.processor.options)
        features = hf_config.get("input_feat_per_channel", config["feature_size"])
        if config["feature_size"] != features:
            raise TpError(f"the recipe's speech processor makes {config['feature_size']} "
                          f"features per frame, the model reads {features}",
                          hint="set the processor's num_mel_bins to the speech embedding's "
                          "features")
        folder = Path(folder)
        if recipe.tokenizer is not None and recipe.path is not None:
            from tpcli.plugins import get_plugins

            saved = Path(recipe.path) / "tokenizer"
            cls = get_plugins().registry.get("tokenizer", recipe.tokenizer.name)
            tokenizer = cls.from_saved(saved)
            special_ids(tokenizer.special_ids, folder / "config.json")
            if not tokenizer_to_hf(saved, folder):  # a tokenizer built in tp
                write_s2t_tokenizer(tokenizer, folder)
            # AutoProcessor then gives Speech2TextProcessor (features + tokenizer)
            config["processor_class"] = "Speech2TextProcessor"
        (folder / PROCESSOR_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n",
                                             encoding="utf-8")


def special_ids(ids: dict[str, int], config_json: Path) -> None:
    """The tokenizer's special ids into the exported config.json: HF numbers the decoder's
    positions by the pad id, which S2T's offset of 2 fixes at 1 (another pad id is refused), and
    decoding starts from the end-of-sequence token (fairseq's S2T, tp's speech processor)."""
    pad = ids.get("pad")
    if pad != 1:
        raise TpError(f"the checkpoint's tokenizer has pad id {pad}; Speech2Text numbers "
                      "positions from pad id 1 (its offset of 2)",
                      hint="use a vocabulary in S2T's layout (<s>=0, <pad>=1, </s>=2, <unk>=3), "
                      "e.g. scripts/train_speech_vocab.py's")
    data = json.loads(config_json.read_text(encoding="utf-8")) if config_json.is_file() else {}
    if "eos" in ids:
        data["eos_token_id"] = data["decoder_start_token_id"] = ids["eos"]
    if "bos" in ids:
        data["bos_token_id"] = ids["bos"]
    if config_json.is_file():
        config_json.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
