"""The `ctc` target: its loss against a hand computation, a reference forward algorithm and
torch's F.ctc_loss called directly; labels from lm_labels; greedy decoding; the gradient; and a
tiny S2T model with [lm, ctc] that learns a fixed batch until CTC decodes it."""

from __future__ import annotations

import math
from typing import Iterator

import pytest
import torch
import torch.nn.functional as F

from tp_speech.ctc import CtcTarget, ctc_greedy, ctc_labels
from tpcli.data.batch import IGNORE
from tpcli.errors import DataError, TpError
from tpcli.model import build_model
from tpcli.model.module import BuildContext, Features
from tpcli.plugins import get_plugins
from tpcli.recipes.config import build_recipe
from tpcli.testing.convert import DATA

SPECIAL = {"bos": 0, "pad": 1, "eos": 2, "unk": 3}  # S2T's ids: the blank is <pad> = 1
BLANK, EOS = 1, 2


def identity_ctc(v: int, **options: object) -> CtcTarget:
    """A ctc target whose projection is the identity (H = V): the hidden states are logits."""
    ctx = BuildContext(hidden_size=v, vocab_size=v, special_ids=dict(SPECIAL))
    m = CtcTarget(CtcTarget.Config(**options), ctx)
    with torch.no_grad():
        m.proj.weight.copy_(torch.eye(v))
        m.proj.bias.zero_()
    return m


def reference_nll(log_probs: torch.Tensor, labels: list[int], blank: int) -> float:
    """-log p(labels | frames) by the CTC forward recursion (Graves et al. 2006) over the
    blank-interleaved labels, in float64 probabilities: log_probs (S, V)."""
    p = log_probs.double().exp().tolist()
    ext = [blank]
    for t in labels:
        ext += [t, blank]
    alpha = [0.0] * len(ext)
    alpha[0] = p[0][ext[0]]
    if len(ext) > 1:
        alpha[1] = p[0][ext[1]]
    for frame in p[1:]:
        prev = alpha
        alpha = []
        for s, token in enumerate(ext):
            a = prev[s] + (prev[s - 1] if s >= 1 else 0.0)
            if s >= 2 and token != blank and token != ext[s - 2]:
                a += prev[s - 2]  # skip the blank between two different tokens
            alpha.append(a * frame[token])
    total = alpha[-1] + (alpha[-2] if len(ext) > 1 else 0.0)
    return -math.log(total)


def test_hand_computed_two_frames() -> None:
    """Transcript "a" over two frames: the paths a a, a -, - a."""
    logits = torch.tensor([[[0.0, 0.5, 0.0, 1.5], [0.0, 1.0, 0.0, 0.2]]])  # (1, 2, V=4)
    p = logits.softmax(-1)[0]
    a, b = 3, BLANK
    by_hand = -math.log(p[0, a] * p[1, a] + p[0, a] * p[1, b] + p[0, b] * p[1, a])
    out = identity_ctc(4)(Features(logits), {"lm_labels": torch.tensor([[a, EOS]])})
    assert out.loss.item() == pytest.approx(by_hand, rel=1e-6)
    assert out.metrics["count"].item() == 1.0


@pytest.fixture
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(logits (3, 9, 7), mask (3, 9), lm_labels (3, 6)): padded frames, a repeated token,
    eos and -100 padding in the labels."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 9, 7, generator=g) * 2
    mask = torch.ones(3, 9, dtype=torch.bool)
    mask[1, 7:], mask[2, 4:] = False, False
    labels = torch.tensor([[4, 5, 5, 6, EOS, IGNORE],
                           [6, 4, 0, 3, 4, EOS],  # 0 (bos) and 3 (unk) are ordinary labels
                           [5, EOS, IGNORE, IGNORE, IGNORE, IGNORE]])
    return logits, mask, labels


def test_labels_drop_ignore_and_eos(batch: tuple[torch.Tensor, ...]) -> None:
    _, _, labels = batch
    flat, lengths = ctc_labels(labels, (EOS,))
    assert flat.tolist() == [4, 5, 5, 6, 6, 4, 0, 3, 4, 5]
    assert lengths.tolist() == [4, 5, 1]


def test_loss_equals_reference_and_torch(batch: tuple[torch.Tensor, ...]) -> None:
    logits, mask, labels = batch
    log_probs = logits.log_softmax(-1)
    rows = [[4, 5, 5, 6], [6, 4, 0, 3, 4], [5]]
    frames = mask.sum(1).tolist()
    ref = [reference_nll(log_probs[b, :frames[b]], rows[b], BLANK) for b in range(3)]
    feats = Features(logits, mask)
    tokens = identity_ctc(7)(feats, {"lm_labels": labels}).loss.item()
    assert tokens == pytest.approx(sum(ref) / 10, rel=1e-5)  # 10 transcript tokens
    per_batch = identity_ctc(7, reduction="batch")(feats, {"lm_labels": labels}).loss.item()
    assert per_batch == pytest.approx(sum(ref) / 3, rel=1e-5)
    mean = identity_ctc(7, reduction="mean")(feats, {"lm_labels": labels}).loss.item()
    assert mean == pytest.approx(sum(r / len(t) for r, t in zip(ref, rows)) / 3, rel=1e-5)
    # torch's own function on the same inputs, called directly
    args = (log_probs.transpose(0, 1), torch.tensor(sum(rows, [])), mask.sum(1),
            torch.tensor([4, 5, 1]))
    assert tokens == pytest.approx(
        F.ctc_loss(*args, blank=BLANK, reduction="sum").item() / 10, rel=1e-6)
    assert mean == pytest.approx(F.ctc_loss(*args, blank=BLANK, reduction="mean").item(),
                                 rel=1e-6)


def test_memory_of_a_seq2seq_model_is_read(batch: tuple[torch.Tensor, ...]) -> None:
    """With memory present (seq2seq), the decoder's hidden states are not what is aligned."""
    logits, mask, labels = batch
    decoder_out = torch.randn(3, 5, 7)
    seq2seq = Features(decoder_out, torch.ones(3, 5, dtype=torch.bool), memory=logits,
                       memory_mask=mask)
    m = identity_ctc(7)
    assert m(seq2seq, {"lm_labels": labels}).loss.item() == pytest.approx(
        m(Features(logits, mask), {"lm_labels": labels}).loss.item())
    with pytest.raises(TpError, match="encoder-decoder"):
        identity_ctc(7, source="memory")(Features(logits, mask), {"lm_labels": labels})


def test_infeasible_rows_count_zero(batch: tuple[torch.Tensor, ...]) -> None:
    """A row with fewer frames than its alignment needs (5 tokens, one repeat: 6 frames) is 0
    with zero_infinity and inf without; `infeasible` reports its share."""
    logits, mask, labels = batch
    mask = mask.clone()
    mask[0, 4:] = False  # row 0: 4 tokens with a repeat need 5 frames; it has 4
    out = identity_ctc(7)(Features(logits, mask), {"lm_labels": labels})
    assert out.metrics["infeasible"].item() == pytest.approx(1 / 3)
    assert torch.isfinite(out.loss)
    inf = identity_ctc(7, zero_infinity=False)(Features(logits, mask), {"lm_labels": labels})
    assert math.isinf(inf.loss.item())
    mask[0, 4] = True  # 5 frames: just enough
    out = identity_ctc(7)(Features(logits, mask), {"lm_labels": labels})
    assert out.metrics["infeasible"].item() == 0.0


def test_greedy_decoding_on_crafted_log_probs() -> None:
    """Repeats collapse, blanks drop, a blank between two equal tokens keeps both; frames past
    a row's length are not read."""
    frames = [[4, 4, BLANK, 4, 5, 5, BLANK, BLANK, 6, 6],
              [BLANK, 7, BLANK, BLANK, 7, 7, 8, 9, 9, 9]]
    log_probs = torch.full((2, 10, 10), -5.0)
    for b, row in enumerate(frames):
        for t, token in enumerate(row):
            log_probs[b, t, token] = -0.1
    assert ctc_greedy(log_probs, None, BLANK) == [[4, 4, 5, 6], [7, 7, 8, 9]]
    assert ctc_greedy(log_probs, torch.tensor([4, 7]), BLANK) == [[4, 4], [7, 7, 8]]
    assert ctc_greedy(log_probs[:, :0], None, BLANK) == [[], []]


def test_refusals(batch: tuple[torch.Tensor, ...]) -> None:
    logits, mask, labels = batch
    with pytest.raises(DataError, match="blank id 1"):
        identity_ctc(7)(Features(logits, mask), {"lm_labels": labels.masked_fill(labels == 0,
                                                                                  BLANK)})
    with pytest.raises(DataError, match="lm_labels"):
        identity_ctc(7)(Features(logits, mask), {})
    no_pad = BuildContext(hidden_size=4, vocab_size=7, special_ids={"eos": 2})
    with pytest.raises(TpError, match="no pad token"):
        CtcTarget(CtcTarget.Config(), no_pad)
    assert CtcTarget(CtcTarget.Config(blank=0), no_pad).blank == 0
    with pytest.raises(TpError, match="outside the vocabulary"):
        CtcTarget(CtcTarget.Config(blank=7), no_pad)
    with pytest.raises(TpError, match="end-of-sentence"):
        CtcTarget(CtcTarget.Config(blank=2), no_pad)


# ----------------------------------------------------------------------------- in a model


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Tiny matmuls: a second thread only adds contention on a shared machine (measured with
    other jobs running: the 200 steps below took 4 s with one thread, 27 s with two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_s2t(targets: dict, vocab: int = 12, hidden: int = 32, decoder: bool = True):
    """A 1+1-layer S2T (speech embedding with two stride-2 convolutions over 8 bins)."""
    model = {"hidden_size": hidden, "dropout": 0.0, "norm_eps": 1e-5, "embedding_norm": "none",
             "embedding": {"speech": {"features": 8, "kernel_sizes": [3, 3],
                                      "conv_channels": 16, "scale": hidden ** 0.5}},
             "encoder": {"name": "transformer", "layers": 1, "heads": 2, "ffn_size": 64,
                         "pre_norm": True},
             "target": targets}
    if decoder:
        model |= {"tgt_embedding": {"word": {"scale": hidden ** 0.5},
                                    "sinusoidalpos": {"offset": 2, "padding_aware": True}},
                  "decoder": {"name": "transformer", "layers": 1, "heads": 2, "ffn_size": 64,
                              "pre_norm": True}}
    registry = get_plugins().registry
    recipe = build_recipe({"model": model, "data": DATA, "pretrain": {}}, registry)
    return build_model(recipe.model, registry, vocab, SPECIAL)


def speech_batch() -> dict[str, torch.Tensor]:
    """Three utterances of 40, 30 and 20 frames (10, 8 and 5 after subsampling), transcripts
    of 4, 3 (one repeat) and 1 tokens laid out as the speech processor lays them out."""
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(3, 40, dtype=torch.bool)
    mask[1, 30:], mask[2, 20:] = False, False
    labels = torch.tensor([[4, 5, 6, 7, EOS], [8, 8, 9, EOS, IGNORE],
                           [10, EOS, IGNORE, IGNORE, IGNORE]])
    tgt = torch.tensor([[EOS, 4, 5, 6, 7], [EOS, 8, 8, 9, BLANK], [EOS, 10, BLANK, BLANK, BLANK]])
    return {"input_features": torch.randn(3, 40, 8, generator=g) * mask[..., None],
            "attention_mask": mask, "tgt_input_ids": tgt,
            "tgt_attention_mask": torch.tensor([[1] * 5, [1] * 4 + [0], [1] * 2 + [0] * 3]),
            "lm_labels": labels}


def test_gradient_reaches_the_encoder_only(one_thread: None) -> None:
    torch.manual_seed(0)
    model = tiny_s2t({"lm": {}, "ctc": {}}).train()
    batch = speech_batch()
    out = model(batch)
    out.losses["ctc"].backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["targets.ctc.proj.weight"].abs().sum() > 0
    assert grads["stack.embedding.parts.speech.convs.0.weight"].abs().sum() > 0
    assert all(g.abs().sum() > 0 for n, g in grads.items() if n.startswith("stack.encoder."))
    # CTC reads the encoder: nothing of the decoder side is in its graph
    assert all(g is None for n, g in grads.items() if n.startswith(("decoder.", "tgt_")))


def test_joint_training_learns_a_fixed_batch(one_thread: None) -> None:
    """lm weight 0.7, ctc 0.3 (ESPnet's mtlalpha), Adam 1e-3: after 60 steps both losses are
    well down (measured: lm 2.53 -> 1.07, ctc 5.16 -> 1.91); after 200 CTC's greedy decoding
    of the encoder gives the three transcripts back, the repeated token included."""
    torch.manual_seed(0)
    model = tiny_s2t({"lm": {"weight": 0.7}, "ctc": {"weight": 0.3}}).train()
    batch = speech_batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    first = model(batch)
    assert first.metrics["ctc.count"].item() == 8.0
    assert first.loss.item() == pytest.approx(0.7 * first.losses["lm"].item()
                                              + 0.3 * first.losses["ctc"].item(), rel=1e-6)
    history = []
    for _ in range(200):
        out = model(batch)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        history.append({k: v.item() for k, v in out.losses.items()})
    assert history[59]["ctc"] < 0.5 * history[0]["ctc"]
    assert history[59]["lm"] < 0.6 * history[0]["lm"]
    assert history[-1]["ctc"] < 0.3 and history[-1]["lm"] < 0.3
    model.eval()
    feats = model.features(batch)
    log_probs = model.predict(batch)["ctc"]  # (B, S, V) over the encoder's frames
    assert log_probs.shape == (3, 10, 12)
    assert ctc_greedy(log_probs, feats.memory_mask.sum(1), BLANK) == [[4, 5, 6, 7], [8, 8, 9],
                                                                      [10]]


def test_encoder_only_model_aligns_its_hidden_states(one_thread: None) -> None:
    """A CTC-only recogniser (no decoder): the target reads hidden / mask."""
    torch.manual_seed(0)
    model = tiny_s2t({"ctc": {}}, decoder=False).train()
    batch = {k: v for k, v in speech_batch().items() if not k.startswith("tgt_")}
    out = model(batch)
    assert torch.isfinite(out.loss) and out.metrics["ctc.infeasible"].item() == 0.0
    assert model.predict(batch)["ctc"].shape == (3, 10, 12)
