"""The image-text recipes train reproducibly: golden losses of vilt-b32 (mlm + itm) and
clip-vit-b16 (clr), each shrunk by overrides, on a fixed corpus of real photographs, and an exact
resume of each with its load-time randomness on (ViLT: whole-word masking and ITM negatives;
CLIP: random crops), as tests/train does for text.

The corpus: tp_multimodal.testing's six scikit-image photographs with their captions, as a TSV,
preprocessed by the recipes' `image_text` processor at 32 px. The shipped tokenizers are kept
(BERT's uncased WordPiece, CLIP's 49,408-id BPE), the towers shrunk to width 32 (CLIP's image
tower 48), two layers, 8-pixel patches. Runs are in-process (`tpcli.verbs`), single-threaded, fp32
on the CPU, data loaded in the training process. Each recipe runs twice: once straight through
(its losses are the golden ones) and once stopped like Ctrl-C after step 10 and resumed from its
step-8 checkpoint. The CLIP run's checkpoint then classifies photographs through `tp infer`
with no --task (the recipe's finetune.task is zero_shot). Regenerate a golden list only when a
change is meant to alter training, and say why.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import pytest
import torch

from tp_multimodal.testing import write_corpus
from tpcli.plugins import make_plugins
from tpcli.testing.runs import assert_same_losses, quiet_machine, stop_and_resume
from tpcli.testing.runs import logged_losses as losses
from tpcli.verbs import PreprocessRequest, PretrainRequest, preprocess, pretrain

RUN = ["pretrain.batch_size=4", "pretrain.steps=12", "pretrain.save_every=4",
       "pretrain.keep_last=5", "pretrain.log_every=1", "pretrain.device=cpu",
       "pretrain.precision=fp32", "pretrain.seed=3", "pretrain.data_workers=0",
       "pretrain.warmup_steps=2"]
ENCODER = {"layers": 2, "heads": 2, "ffn_size": 64}
SHRINK = {
    "vilt-b32": [
        "model.hidden_size=32", *(f"model.encoder.{k}={v}" for k, v in ENCODER.items()),
        "model.embedding.word_patch.image_size=32", "model.embedding.word_patch.patch_size=8",
        "data.processor.size=32", "data.processor.patch_size=8", "pretrain.lr=3e-3"],
    "clip-vit-b16": [
        "model.hidden_size=32", "model.stream_1.hidden_size=48",
        *(f"model.stream_{s}.encoder.{k}={v}" for s in (0, 1) for k, v in ENCODER.items()),
        "model.stream_1.embedding.patch.image_size=32",
        "model.stream_1.embedding.patch.patch_size=8",
        "model.stream_1.embedding.pos.max_length=17",  # 16 patches + the class token
        "model.target.clr.projection_dim=16", "data.processor.size=32", "pretrain.lr=1e-3"],
}

# The 12 losses of a run, batch 4 of the 6 pairs, seed 3, torch 2.13 CPU fp32, one thread.
# vilt-b32 at lr 3e-3: mlm over BERT's 30,522 pieces + itm, from ln(30522) + ln(2) = 11.02 (a
# fresh model predicts near uniformly) to 10.13.
VILT_GOLDEN = [11.03557, 11.02215, 10.88006, 10.81744, 10.62767, 10.63494, 10.37093, 10.52205,
               10.4773, 10.49044, 10.26426, 10.12793]
# clip-vit-b16 at lr 1e-3: InfoNCE over a batch of 4 (chance: ln 4 = 1.39). A fresh CLIP starts
# above chance (random embeddings, sharpened by exp(logit_scale) = 14.3) and falls below it.
CLIP_GOLDEN = [2.22592, 1.42147, 1.40596, 1.43359, 1.49345, 1.30562, 1.26154, 1.25606, 1.39126,
               1.38279, 1.1845, 1.37671]
# golden losses, loss at step 1 (None: not checked), least drop of the mean loss of steps 10-12
# below that of steps 1-3
GOLDEN = {"vilt-b32": (VILT_GOLDEN, math.log(30522) + math.log(2), 0.5),
          "clip-vit-b16": (CLIP_GOLDEN, None, 0.3)}


@pytest.fixture(scope="module", autouse=True)
def quiet() -> Iterator[None]:
    with quiet_machine():
        yield


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("pairs"))["tsv"]


def run(recipe: str, data: Path, out: Path, plugins: object = None) -> dict[int, float]:
    pretrain(PretrainRequest(recipe, data, out, [*SHRINK[recipe], *RUN], progress=False,
                             plugins=plugins or make_plugins()))
    return losses(out)


@pytest.mark.parametrize("recipe", ["vilt-b32", "clip-vit-b16"])
def test_golden_losses_learning_and_exact_resume(recipe: str, corpus: Path,
                                                 tmp_path: Path) -> None:
    data = tmp_path / "data"
    preprocess(PreprocessRequest(recipe, str(corpus), data, SHRINK[recipe]))
    got = run(recipe, data, tmp_path / "ref")
    assert sorted(got) == list(range(1, 13))
    golden, first, drop = GOLDEN[recipe]
    assert [round(got[s], 5) for s in range(1, 13)] == pytest.approx(golden, abs=2e-4), got
    if first is not None:
        assert got[1] == pytest.approx(first, abs=0.1)
    else:
        assert got[1] > math.log(4)  # no better than chance at first
    early = sum(got[s] for s in range(1, 4)) / 3
    late = sum(got[s] for s in range(10, 13)) / 3
    assert late < early - drop, got

    # stopped after step 10: steps 9 and 10 ran after the last checkpoint (step 8)
    resumed = stop_and_resume(lambda out, plugins: run(recipe, data, out, plugins),
                              tmp_path / "stopped", 10)
    assert_same_losses(resumed, got)

    if recipe == "clip-vit-b16":  # the recipe's finetune.task: `tp infer RUN` classifies zero-shot
        from tpcli.verbs import InferRequest, infer

        photos = tmp_path / "photos.tsv"
        rows = [line.split("\t") for line in corpus.read_text().splitlines()[1:]]
        photos.write_text("".join(f"{text.split()[-1]}\t{corpus.parent / path}\n"
                                  for text, path in rows))
        result = infer(InferRequest(str(tmp_path / "ref"), str(photos), tmp_path / "zs.jsonl",
                                    overrides=["finetune.task.workers=1"],
                                    plugins=make_plugins()))
        predictions = (tmp_path / "zs.jsonl").read_text().splitlines()
        assert len(predictions) == 6 and 0.0 <= result["metrics"]["accuracy"] <= 1.0


def test_vilt_run_masks_whole_words_and_draws_negatives(corpus: Path, tmp_path: Path) -> None:
    """What the ViLT run above trained on: the recipe's own processor options (no override
    switches them on) mask whole words and swap images, per (seed, epoch, index)."""
    from tp_multimodal.image_text_processor import ImageTextDataset
    from tpcli.data import build_tokenizer
    from tpcli.data.arrays import open_store
    from tpcli.data.batch import IGNORE
    from tpcli.recipes import load_recipe

    plugins = make_plugins()
    recipe = load_recipe("vilt-b32", SHRINK["vilt-b32"], plugins)
    options = recipe.processor.options
    assert (options.mlm, options.itm, options.itm_negatives, options.whole_word_masking,
            options.mask_prob) == (True, True, 0.5, True, 0.15)
    data = tmp_path / "data"
    preprocess(PreprocessRequest("vilt-b32", str(corpus), data, SHRINK["vilt-b32"],
                                 plugins=plugins))
    dataset = ImageTextDataset(open_store(data), build_tokenizer(recipe, plugins), 3, options)
    examples = [dataset[i] for i in range(6)]
    assert {int(e["itm_labels"]) for e in examples} == {0, 1}
    assert all((e["mlm_labels"] != IGNORE).any() for e in examples)
    again = [dataset[i] for i in range(6)]  # the same draws for the same (seed, epoch, index)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(examples, again))
