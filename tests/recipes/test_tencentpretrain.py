"""TencentPretrain's model config files load as tp recipes, as written.

Every text config of the TencentPretrain repository (copies under tests/recipes/tencentpretrain)
builds a tp model with the parameter count TencentPretrain's own code builds from it
(`parameters.json`, written by scripts/tencentpretrain_counts.py from a TencentPretrain checkout);
a config tp cannot honour is refused naming each key and why; and one runs `tp preprocess` and
`tp pretrain` as written.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tpcli.errors import ConfigError
from tpcli.plugins import get_plugins
from tpcli.recipes import load_recipe
from tpcli.recipes.resolved import parameter_count
from tpcli.recipes.tencentpretrain import from_tencentpretrain, is_tencentpretrain_config
from tpcli.testing.runs import run_tp

HERE = Path(__file__).resolve().parent / "tencentpretrain"
COUNTS = json.loads((HERE / "parameters.json").read_text())
FAMILIES = {"bert", "albert", "gpt2", "t5", "t5-v1_1", "bart", "xlm-roberta", "llama", "llama2",
            "rnn", "sbert"}


def test_every_text_config_of_the_repository_has_a_reference_count() -> None:
    configs = {str(p.relative_to(HERE)) for p in (HERE / "models").glob("*/*.json")
               if p.parent.name in FAMILIES}
    assert configs == set(COUNTS) and len(configs) == 43
    # the families the issue names are all there, the RNN configs included
    assert {"models/rnn/lstm_config.json", "models/rnn/gru_config.json",
            "models/rnn/bilstm_config.json", "models/rnn/siamese_lstm_config.json",
            "models/t5-v1_1/small_config.json", "models/llama/65b_config.json"} <= configs


@pytest.mark.parametrize("config", sorted(COUNTS))
def test_config_builds_tencentpretrains_parameter_count(config: str) -> None:
    plugins = get_plugins()
    ref = COUNTS[config]
    recipe = load_recipe(str(HERE / config), [f"model.vocab_size={ref['vocab_size']}"], plugins)
    assert parameter_count(recipe, plugins) == ref["parameters"]


def test_keys_map_onto_tps_modules() -> None:
    """What a few of TencentPretrain's keys become, spelled out."""
    t5 = from_tencentpretrain(json.loads((HERE / "models/t5-v1_1/small_config.json").read_text()))
    m = t5["model"]
    enc = m["encoder"]
    assert (enc["pre_norm"], enc["norm"], enc["bias"], enc["ffn_gate"], enc["position"],
            enc["scale_attention"], enc["activation"], enc["head_size"]) == (
        True, "rmsnorm", False, True, "relative", False, "gelu_tanh", 64)
    assert m["decoder"]["layers"] == 8 and m["share_embeddings"] is True
    assert m["embedding_norm"] == "none" and m["norm_eps"] == 1e-6
    assert t5["data"]["processor"] == {"name": "t5"}
    bert = from_tencentpretrain(json.loads((HERE / "models/bert/base_config.json").read_text()))
    assert bert["model"]["embedding"] == {"word": {}, "pos": {"max_length": 512},
                                          "seg": {"types": 3}}
    assert list(bert["model"]["target"]) == ["mlm", "sp"] and bert["model"]["tie_weights"]
    albert = from_tencentpretrain(
        json.loads((HERE / "models/albert/base_config.json").read_text()))["model"]
    assert albert["embedding_size"] == 128 and albert["encoder"]["share_layers"] is True
    # a seq2seq config sharing its embeddings keeps TencentPretrain's separate output matrix
    bart = from_tencentpretrain(json.loads((HERE / "models/bart/base_config.json").read_text()))
    assert bart["model"]["tie_weights"] is False and bart["model"]["target"]["lm"]["bias"]


def test_only_flat_configs_are_read_as_tencentpretrains() -> None:
    assert is_tencentpretrain_config(json.loads((HERE / "models/gpt2/config.json").read_text()))
    assert not is_tencentpretrain_config({"model": {"encoder": "transformer"}, "data": {}})


@pytest.mark.parametrize("config, keys", [
    ("models/bloom/1b1_config.json", ["alibi_position_embedding", "layer_number_scale"]),
    ("models/cnn/gatedcnn_9_config.json", ["block_size", "encoder", "kernel_size"]),
    ("models/vit/base-16-224_config.json",
     ["data_processor", "embedding", "image_height", "image_width", "patch_size"]),
])
def test_a_config_tp_cannot_honour_names_each_key(config: str, keys: list[str]) -> None:
    with pytest.raises(ConfigError) as e:
        load_recipe(str(HERE / config), [], get_plugins())
    assert sorted(p.path for p in e.value.problems) == keys
    assert "TencentPretrain config" in e.value.message and e.value.hint


def test_the_cli_refuses_an_unknown_key_in_one_paragraph(tmp_path: Path) -> None:
    bad = json.loads((HERE / "models/bert/tiny_config.json").read_text())
    bad["feedforward_sise"] = 512
    path = tmp_path / "bad_config.json"
    path.write_text(json.dumps(bad))
    r = run_tp("recipes", "show", str(path))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "feedforward_sise: tp does not read TencentPretrain's 'feedforward_sise'" in r.stderr


def test_bert_tiny_config_preprocesses_and_pretrains_as_written(tmp_path: Path) -> None:
    """`tp preprocess` and `tp pretrain` with TencentPretrain's file itself (BERT, mlm + sp on
    sentence pairs, a 3-row segment table), two steps."""
    config = str(HERE / "models/bert/tiny_config.json")
    corpus = tmp_path / "corpus.txt"
    docs = [" ".join(f"sentence {d} {i} says that the {w} word is here." for i in range(3))
            for d, w in enumerate("first second third fourth fifth sixth seventh".split())]
    corpus.write_text("\n\n".join("\n".join(d.split(". ")) for d in docs) + "\n")
    shown = run_tp("recipes", "show", config, "--json")
    assert shown.returncode == 0, shown.stderr
    summary = json.loads(shown.stdout)
    assert summary["parameters"] == COUNTS["models/bert/tiny_config.json"]["parameters"]
    assert summary["source"] == config and summary["name"] == "tiny_config"
    over = ["data.processor.seq_length=32"]
    r = run_tp("preprocess", config, *over, "--corpus", str(corpus), "--out",
               str(tmp_path / "data"))
    assert r.returncode == 0, r.stderr
    r = run_tp("pretrain", config, "--data", str(tmp_path / "data"), "--out",
               str(tmp_path / "run"), "--no-progress", *over, "pretrain.steps=2",
               "pretrain.batch_size=4",
               "pretrain.log_every=1")
    assert r.returncode == 0, r.stderr
    saved = (tmp_path / "run" / "recipe.yaml").read_text()
    assert "types: 3" in saved and "norm_eps: 1.0e-06" in saved
