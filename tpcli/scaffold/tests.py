'''The test files `tp plugins new` writes: one test module per kind (templates, as in
`tpcli.scaffold.modules`), and the recipe test that builds the example recipe. Each checks
behaviour (numbers, round trips, a loss that falls), not just that something ran.
'''

HEAD = '''"""Tests of `__NAME__` (__KIND__). tests/conftest.py runs tp's module contract (build,
forward, backward, state dict, Config) over this distribution's embeddings, encoders and
targets."""

from __future__ import annotations

import pytest
__TORCH__
from __PKG__ import plugin
from __PKG__.__NAME__ import __SYMBOL__
from tpcli.plugins import Plugins, make_plugins


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> Plugins:
    """tp's built-in text and encoder modules, and this plugin registered in-process (its
    installed copy, if any, is left out so the two cannot clash)."""
    monkeypatch.setenv("TP_LOAD_PLUGINS", "text,encoders")
    return make_plugins(extra=[plugin])


def test_registered(plugins: Plugins) -> None:
    assert plugins.registry.get("__KIND__", "__NAME__") is __SYMBOL__
'''

TRAIN = '''

def train(model: dict, steps: int = 30) -> list[float]:
    """Losses of `steps` AdamW steps on one fixed batch of a tiny model built from `model`."""
    from tpcli.model import build_model
    from tpcli.recipes.config import build_recipe

    registry = make_plugins(extra=[plugin]).registry
    recipe = build_recipe({"model": {"hidden_size": 32, "dropout": 0.0, **model},
                           "data": {"processor": {"name": "lm"}}}, registry)
    torch.manual_seed(0)
    net = build_model(recipe.model, registry, 50, {"pad": 0})
    ids = torch.randint(5, 50, (4, 12))
    ids[2, 9:] = 0  # padding
    batch = {"input_ids": ids, "attention_mask": ids != 0}
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = net(batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
'''

MODEL_TESTS = {
    "embedding": '''

def test_scale_and_padding() -> None:
    from tpcli.model.module import BuildContext

    emb = __CLASS__Embedding(__CLASS__Embedding.Config(scale=2.0),
                             BuildContext(hidden_size=8, vocab_size=20, special_ids={"pad": 0}))
    ids = torch.tensor([[3, 0]])
    out = emb({"input_ids": ids})
    torch.testing.assert_close(out[0, 0], 2.0 * emb.word_weight[3])
    assert torch.count_nonzero(out[0, 1]) == 0  # the pad row embeds to zero


def test_a_model_with_it_learns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TP_LOAD_PLUGINS", "text,encoders")
    losses = train({"embedding": ["__NAME__", "pos"], "target": ["lm"],
                    "encoder": {"name": "transformer", "layers": 1, "heads": 2,
                                "ffn_size": 64, "mask": "causal"}})
    assert losses[-1] < 0.7 * losses[0], losses
''',
    "encoder": '''

def test_causal_and_padding_safe() -> None:
    """Changing a later token or a padded one leaves earlier outputs unchanged."""
    from tpcli.model.module import BuildContext

    torch.manual_seed(0)
    enc = __CLASS__Encoder(__CLASS__Encoder.Config(layers=2, ffn_size=16),
                           BuildContext(hidden_size=8, vocab_size=20, dropout=0.0)).eval()
    x = torch.randn(1, 6, 8)
    mask = torch.tensor([[True] * 4 + [False] * 2])
    y = enc(x, mask)
    x2 = x.clone()
    x2[0, 3] += torch.randn(8)  # a later real token
    x2[0, 5] += 5 * torch.randn(8)  # a padded position
    y2 = enc(x2, mask)
    torch.testing.assert_close(y[0, :3], y2[0, :3])
    assert not torch.allclose(y[0, 3], y2[0, 3])


def test_a_model_with_it_learns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TP_LOAD_PLUGINS", "text,encoders")
    losses = train({"embedding": ["word", "pos"], "target": ["lm"],
                    "encoder": {"name": "__NAME__", "layers": 2, "ffn_size": 64}})
    assert losses[-1] < 0.7 * losses[0], losses
''',
    "target": '''

def test_loss_is_next_token_cross_entropy() -> None:
    from tpcli.model.module import BuildContext, Features

    torch.manual_seed(0)
    t = __CLASS__Target(__CLASS__Target.Config(), BuildContext(hidden_size=8, vocab_size=20))
    ids = torch.tensor([[5, 6, 7, 0]])
    mask = ids != 0
    f = Features(torch.randn(1, 4, 8), mask)
    out = t(f, {"input_ids": ids, "attention_mask": mask})
    logits = t.predict(f, {})
    expected = torch.nn.functional.cross_entropy(logits[0, :2], ids[0, 1:3])
    torch.testing.assert_close(out.loss, expected)
    assert out.metrics["count"].item() == 2  # 5->6, 6->7; nothing predicts the padding


def test_a_model_with_it_learns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TP_LOAD_PLUGINS", "text,encoders")
    losses = train({"embedding": ["word", "pos"], "target": ["__NAME__"],
                    "encoder": {"name": "transformer", "layers": 1, "heads": 2,
                                "ffn_size": 64, "mask": "causal"}})
    assert losses[-1] < 0.7 * losses[0], losses
''',
}

OTHER_TESTS = {
    "tokenizer": '''

def test_round_trip_and_specials(tmp_path) -> None:
    tok = __CLASS__Tokenizer()
    text = "Grüße, tp!"
    ids = tok.encode_batch([text])[0]
    assert len(ids) == len(text.encode("utf-8")) and min(ids) >= 5
    assert tok.decode(ids) == text
    assert tok.special_ids == {"pad": 0, "unk": 1, "cls": 2, "sep": 3, "mask": 4}
    lower = __CLASS__Tokenizer(__CLASS__Tokenizer.Config(lowercase=True))
    assert lower.decode(lower.encode_batch(["ABC"])[0]) == "abc"
    assert lower.fingerprint() != tok.fingerprint()
    lower.save(tmp_path)
    again = __CLASS__Tokenizer.from_saved(tmp_path)
    assert again.fingerprint() == lower.fingerprint()
''',
    "processor": '''

def test_examples_are_cropped_documents(tmp_path) -> None:
    from tpcli.data.format import Reader, Writer

    class Specials:  # what the dataset reads of a tokenizer
        vocab_size = 100
        special_ids = {"pad": 0, "cls": 2, "sep": 3}

    with Writer(tmp_path / "data", 100, {}) as w:
        w.append_document([list(range(10, 30))])  # 20 tokens
        w.append_document([[40, 41], [42]])  # two lines: one document
        w.finish()
    proc = __CLASS__Processor(__CLASS__Processor.Config(seq_length=8))
    ds = proc.dataset(Reader(tmp_path / "data"), Specials(), seed=1)
    assert len(ds) == 2
    assert ds[1]["input_ids"].tolist() == [2, 40, 41, 42, 3]
    first = ds[0]["input_ids"].tolist()
    full = [2, *range(10, 30), 3]
    assert len(first) == 8 and any(full[i:i + 8] == first for i in range(len(full) - 7))
    assert ds[0]["input_ids"].tolist() == first  # the same (seed, epoch, index): the same crop
    batch = ds.collate([ds[0], ds[1]])
    assert batch["input_ids"].shape == (2, 8) and batch["attention_mask"][1].sum() == 5
''',
    "task": '''

def test_fit_encode_evaluate(tmp_path) -> None:
    from tpcli.plugins.requests import TaskData

    (tmp_path / "train.tsv").write_text("pos\\tgood film\\nneg\\tbad film\\n")
    (tmp_path / "dev.tsv").write_text("neg\\tawful\\n")
    task = __CLASS__Task(__CLASS__Task.Config(), None)
    splits = task.load(TaskData(train=str(tmp_path / "train.tsv"),
                                dev=[str(tmp_path / "dev.tsv")]))
    task.fit(splits.train)
    assert task.labels == ["neg", "pos"] and task.target() == {"cls": {"labels": 2}}

    class Tok:  # a tokenizer's interface: one id per character, cls 2, sep 3
        vocab_size = 300
        special_ids = {"pad": 0, "cls": 2, "sep": 3}

        def encode_batch(self, texts):
            return [[ord(c) % 290 + 5 for c in t] for t in texts]

    rows = task.encode(splits.train, Tok(), max_length=6)
    assert rows[0]["input_ids"].tolist()[:2] == [2, ord("g") % 290 + 5]
    assert len(rows[0]["input_ids"]) == 6 and rows[0]["labels"].item() == 1
    preds = task.decode(torch.tensor([[0.1, 0.9]]), splits.dev["dev"])
    assert task.evaluate(preds, splits.dev["dev"])["accuracy"] == 0.0  # said pos, gold neg
''',
    "converter": '''

def test_reads_and_writes_the_model_type(plugins: Plugins) -> None:
    from tpcli.recipes.config import build_recipe

    hf = {"model_type": "__NAME__", "vocab_size": 100, "hidden_size": 32,
          "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
          "max_position_embeddings": 64, "type_vocab_size": 2, "hidden_act": "gelu"}
    model = __SYMBOL__.config_to_recipe(hf)
    assert model["hidden_size"] == 32
    recipe = build_recipe({"model": model, "data": {"processor": {"name": "mlm"}}},
                          plugins.registry)
    back = __SYMBOL__.recipe_to_config(recipe.model, 100)
    assert back["model_type"] == "__NAME__"
    assert back["num_hidden_layers"] == 2 and back["intermediate_size"] == 64
''',
}

RECIPE_TEST = '''"""The example recipe (recipes/__RECIPE__) builds with this plugin's modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from __PKG__ import plugin
from tpcli.plugins import make_plugins

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "__RECIPE__"


def test_the_example_recipe_resolves(monkeypatch: pytest.MonkeyPatch) -> None:
    from tpcli.recipes.resolved import show

    monkeypatch.setenv("TP_LOAD_PLUGINS", "text,encoders")
    got = show(str(RECIPE), [], make_plugins(extra=[plugin]))
    model, data = got["recipe"]["model"], got["recipe"]["data"]
    assert 10_000 < got["parameters"] < 1_000_000
__ASSERTS__
'''
