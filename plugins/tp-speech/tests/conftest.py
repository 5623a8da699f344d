"""What tp-speech's tests share: tiny random HF Speech2Text models with unusual settings, a
SentencePiece tokenizer trained on the spot (no download), HF model folders as save_pretrained
writes them, and the `tp` command in a subprocess."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable

import pytest
import torch

from tpcli.testing.runs import run_tp

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# 3 conv layers with mixed kernels, odd channel count, 40 features, 3 encoder / 2 decoder
# layers with different head counts, tied output
ODD = dict(vocab_size=71, d_model=24, encoder_layers=3, decoder_layers=2,
           encoder_attention_heads=2, decoder_attention_heads=3, encoder_ffn_dim=40,
           decoder_ffn_dim=36, num_conv_layers=3, conv_kernel_sizes=[3, 5, 3], conv_channels=26,
           input_feat_per_channel=40, max_source_positions=100, max_target_positions=64)
# one conv layer of kernel 7, 24 features, no embedding scale, gelu, an untied output
PLAIN = dict(vocab_size=71, d_model=16, encoder_layers=1, decoder_layers=3,
             encoder_attention_heads=4, decoder_attention_heads=2, encoder_ffn_dim=20,
             decoder_ffn_dim=28, num_conv_layers=1, conv_kernel_sizes=[7], conv_channels=10,
             input_feat_per_channel=24, max_source_positions=50, max_target_positions=30,
             scale_embedding=False, activation_function="gelu", tie_word_embeddings=False)

TEXT = """he hoped there would be stew for dinner turnips and carrots and bruised potatoes
and fat mutton pieces to be ladled out in thick peppered flour fattened sauce
stuff it into you his belly counselled him after early nightfall the yellow lamps
would light up here and there the squalid quarter of the brothels
hello bertie any good in your mind number ten fresh nelly is waiting on you
good night husband the music came nearer and he recalled the words""".splitlines()
SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")  # fairseq's dictionary: ids 0..3


def random_s2t(options: dict[str, Any], arch: str = "Speech2TextForConditionalGeneration",
               scale: float = 0.05) -> Any:
    """A tiny random HF Speech2Text model (eval mode), every float tensor moved by N(0, scale)
    (HF starts biases at 0 and norms at 1, which would hide swapped keys)."""
    import transformers

    from tpcli.testing.convert import perturbed

    torch.manual_seed(0)
    model = getattr(transformers, arch)(transformers.Speech2TextConfig(**options))
    return perturbed(model, scale=scale)


def write_s2t_tokenizer(folder: Path) -> Path:
    """A Speech2TextTokenizer's files in `folder`: a 67-piece SentencePiece unigram model
    trained on TEXT (its ids: <unk>=0, <s>=1, </s>=2, pieces) and vocab.json in fairseq's order
    (<s>, <pad>, </s>, <unk>, then the pieces), so the two numberings differ, as the tokenizer
    writes them with save_pretrained."""
    import sentencepiece as spm
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXT * 3), model_writer=buf,
                                   vocab_size=70, model_type="unigram", character_coverage=1.0,
                                   minloglevel=2)
    sp = spm.SentencePieceProcessor(model_proto=buf.getvalue())
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for i in range(sp.get_piece_size()):
        vocab.setdefault(sp.id_to_piece(i), len(vocab))
    with tempfile.TemporaryDirectory() as raw:
        (Path(raw) / "sp.model").write_bytes(buf.getvalue())
        (Path(raw) / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
        tok = transformers.Speech2TextTokenizer(str(Path(raw) / "vocab.json"),
                                                str(Path(raw) / "sp.model"))
        tok.save_pretrained(str(folder))
    return folder


def save_hf_folder(model: Any, folder: Path, tokenizer: bool = True) -> Path:
    """`model` as save_pretrained writes it, with its feature extractor's config and (optional)
    the tokenizer's files."""
    import transformers

    model.save_pretrained(str(folder))
    bins = model.config.input_feat_per_channel
    transformers.Speech2TextFeatureExtractor(feature_size=bins, num_mel_bins=bins).save_pretrained(
        str(folder))
    if tokenizer:
        write_s2t_tokenizer(folder)
    return folder


@pytest.fixture(scope="session")
def s2t() -> Any:
    """The helpers above as one object: `s2t.random(options, arch)`, `s2t.save(model, folder,
    tokenizer=True)`, `s2t.tokenizer(folder)`, `s2t.ODD`, `s2t.PLAIN`, `s2t.TEXT`."""
    from types import SimpleNamespace

    return SimpleNamespace(random=random_s2t, save=save_hf_folder, tokenizer=write_s2t_tokenizer,
                           ODD=ODD, PLAIN=PLAIN, TEXT=TEXT)


@pytest.fixture(scope="session")
def tp() -> Callable[..., subprocess.CompletedProcess]:
    """`tp(*args)`: see `run_tp`."""
    return run_tp
