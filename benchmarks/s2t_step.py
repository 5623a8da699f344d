"""S2T-small training step, tp against Hugging Face `Speech2TextForConditionalGeneration`.

One run prints a markdown table: for an S2T-small step (the paper's and fairseq's
s2t_transformer_s: 12 encoder and 6 decoder layers of width 256, 4 heads, feed-forward 2048, a
two-layer convolutional subsampler with 1024 channels, 10,000-piece vocabulary) on a padded
batch of utterances of different lengths (default 8 of 9-12 s: 900-1200 frames of 80 log-mel
features, transcripts of 24-40 tokens), in fp32 and in bf16 autocast, the median step time of tp
and of HF and the ratio HF time / tp time (the issue's goal: >= 1.2 in both precisions).
Then, with --padding, the padding waste of tp's frame-bucketed batches (`pretrain.batch_units`,
fairseq's max_tokens) against batches of the same sizes in random order, on real utterance
lengths (the pocketsphinx LibriVox recordings, when installed, repeated; or a LibriSpeech-like
length distribution).

A step = zero_grad + forward (loss) + backward + AdamW step, as in `throughput.py` (tp and HF
alternate, warm-up rounds are not timed, medians with min-max). Both models hold the same
weights: tp's is built and loaded from HF's random model by the registered `speech_to_text`
converter (tp-speech), and the first step's losses show they compute the same thing (label
smoothing off, as HF's loss has none). Run::

    python benchmarks/s2t_step.py                     # fp32 + bf16, 3 timed steps (2 cores)
    python benchmarks/s2t_step.py --threads 1 --steps 5
    python benchmarks/s2t_step.py --quick             # 2 + 1 layers, short utterances
    python benchmarks/s2t_step.py --device cuda --steps 20 --batch 32
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from cases import Case, registered_converter  # noqa: E402
from throughput import case_report, start_report, step_options  # noqa: E402
from tpcli.testing.convert import tp_from_hf  # noqa: E402

VOCAB = 10_000
FEATURES = 80
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


def hf_s2t_config(quick: bool) -> Any:
    """fairseq's s2t_transformer_s (facebook/s2t-small-librispeech-asr's shapes), no dropout."""
    import transformers

    layers = (2, 1) if quick else (12, 6)
    return transformers.Speech2TextConfig(
        vocab_size=VOCAB, d_model=256, encoder_layers=layers[0], decoder_layers=layers[1],
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=2048,
        decoder_ffn_dim=2048, conv_channels=1024, conv_kernel_sizes=[5, 5],
        input_feat_per_channel=FEATURES, input_channels=1, max_source_positions=6000,
        max_target_positions=1024, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
        scale_embedding=True, activation_function="relu")


def no_label_smoothing(section: dict[str, Any]) -> None:
    """The translated model section's label smoothing off, as HF's loss has none."""
    for options in section.get("target", {}).values():
        if isinstance(options, dict) and "label_smoothing" in options:
            options["label_smoothing"] = 0.0


def s2t_case(batch: int, quick: bool) -> Case:
    """A padded batch: utterance i of 1200 - 300 i / (batch - 1) frames (120 frames shorter
    with --quick) and 40 - 16 i / (batch - 1) target tokens."""
    import transformers

    torch.manual_seed(0)
    hf = transformers.Speech2TextForConditionalGeneration(hf_s2t_config(quick))
    tp = tp_from_hf(registered_converter("speech_to_text", "tp-speech"), hf,
                    {"processor": {"name": "speech"}}, VOCAB, edit=no_label_smoothing)
    g = torch.Generator().manual_seed(4)
    longest, tokens = (300, 12) if quick else (1200, 40)
    frames = [longest - (longest // 4) * i // max(batch - 1, 1) for i in range(batch)]
    lengths = [tokens - (tokens * 2 // 5) * i // max(batch - 1, 1) for i in range(batch)]
    feats = torch.randn(batch, longest, FEATURES, generator=g)
    mask = torch.zeros(batch, longest, dtype=torch.long)
    labels = torch.full((batch, tokens), -100, dtype=torch.long)
    for i, (f, n) in enumerate(zip(frames, lengths)):
        feats[i, f:] = 0.0
        mask[i, :f] = 1
        labels[i, :n - 1] = torch.randint(4, VOCAB, (n - 1,), generator=g)
        labels[i, n - 1] = 2  # </s>
    start = torch.full((batch, 1), 2, dtype=torch.long)  # decoder start = </s>
    decoder_ids = torch.cat([start, labels[:, :-1].clamp(min=1)], dim=1)  # -100 -> pad 1
    hf_batch = {"input_features": feats, "attention_mask": mask, "labels": labels,
                "decoder_input_ids": decoder_ids}
    tp_batch = {"input_features": feats, "attention_mask": mask,
                "tgt_input_ids": decoder_ids, "tgt_attention_mask": (labels != -100).long(),
                "lm_labels": labels}
    case = Case(f"S2T-small{' (2+1 layers)' if quick else ''}",
                f"{batch} x {frames[-1]}-{longest} frames", sum(frames), tp, hf,
                tp_batch, hf_batch)
    case.notes.append("tp model and weights from HF's by the registered `speech_to_text` "
                      "converter")
    case.notes.append(f"HF attention implementation `{hf.config._attn_implementation}`")
    return case


def utterance_frames(count: int) -> Iterator[tuple[np.ndarray, str]]:
    """Frames (10 ms) of `count` utterances: LibriSpeech train-clean's shape (1-35 s, mean ~12 s)
    drawn at random, and the pocketsphinx LibriVox recordings' lengths repeated with a +-20%
    jitter (when installed)."""
    rng = np.random.default_rng(0)
    yield ((np.clip(rng.gamma(4.0, 3.0, count), 1, 35) * 100).astype(np.int64),
           "LibriSpeech-like lengths (gamma, 1-35 s)")
    if LIBRIVOX.is_dir():
        import soundfile

        seconds = [soundfile.info(str(p)).duration for p in sorted(LIBRIVOX.glob("*.wav"))]
        if seconds:
            base = np.resize(np.asarray(seconds), count)
            yield ((base * rng.uniform(0.8, 1.2, count) * 100).astype(np.int64),
                   f"the {len(seconds)} pocketsphinx LibriVox recordings' lengths, +-20%")


class Sized:
    """A dataset of sizes alone (what the bucketing reads)."""

    def __init__(self, frames: np.ndarray) -> None:
        self.frames = frames

    def __len__(self) -> int:
        return len(self.frames)

    def sizes(self) -> np.ndarray:
        return self.frames


def padding_table(units: list[int], count: int) -> Iterator[str]:
    """Padding waste of BucketSampler's plans against the same batch sizes in random order."""
    from tpcli.train.batches import BucketSampler, DataPosition, padding_waste

    yield "| utterances | batch_units (frames) | batches / epoch | utterances / batch (mean) | " \
          "padding waste, bucketed | padding waste, same sizes in random order |"
    yield "|---|---:|---:|---:|---:|---:|"
    for sizes, source in utterance_frames(count):
        for u in units:
            plan = BucketSampler(Sized(sizes), 7, DataPosition(), units=u, cap=10_000).plan(0)
            order = np.random.default_rng(1).permutation(len(sizes))
            random_batches = np.split(order, np.cumsum([len(b) for b in plan])[:-1])
            yield (f"| {count:,}: {source}, mean {sizes.mean() / 100:.1f} s | {u:,} | "
                   f"{len(plan):,} | {statistics.mean(len(b) for b in plan):.1f} | "
                   f"{100 * padding_waste(sizes, plan):.1f}% | "
                   f"{100 * padding_waste(sizes, random_batches):.1f}% |")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    step_options(p, "utterances", "2 + 1 layers, short inputs")
    p.add_argument("--no-padding", action="store_true", help="skip the padding-waste table")
    args = p.parse_args(argv)
    args.steps = args.steps or (1 if args.quick else 3)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    start = time.perf_counter()
    device = start_report(args, "S2T-small training step: tp vs Hugging Face")
    case_report(args, device, s2t_case, args.batch, args.quick, rate="frames/s")
    if not args.no_padding:
        print("## Padding waste of frame-bucketed batches\n")
        for line in padding_table([10_000, 20_000, 40_000], 2_000 if args.quick else 20_000):
            print(line, flush=True)
    print(f"\n(total {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
