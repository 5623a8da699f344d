"""Zoo cards: every shipped card validates (the card schema test), names and aliases are unique,
recipes and converters named by cards exist, and malformed cards are refused with the file and
the field named."""

from __future__ import annotations

from pathlib import Path

import pytest

from tpcli.cli.main import main
from tpcli.errors import TpError
from tpcli.plugins import make_plugins
from tpcli.recipes import builtin_recipes
from tpcli.zoo.card import COMMIT, load_catalog, read_card
from tpcli.zoo.formats import convertible
from tpcli.zoo.ops import catalog

REQUIRED = {"bert-base-uncased", "bert-large-uncased", "roberta-base", "roberta-large",
            "albert-base-v2", "gpt2", "t5-small", "t5-base", "bart-base", "xlm-roberta-base",
            "vit-base", "beit-large", "s2t-small-librispeech", "vilt-b32", "clip-vit-b16",
            "all-minilm-l6-v2"}


@pytest.fixture(scope="module")
def shipped() -> tuple[object, object]:
    plugins = make_plugins()
    return plugins, catalog(plugins)


def test_every_shipped_card_validates(shipped: tuple[object, object]) -> None:
    plugins, cat = shipped
    assert REQUIRED <= set(cat.cards)  # type: ignore[attr-defined]
    uer = [n for n in cat.cards if n.startswith("uer-")]  # type: ignore[attr-defined]
    assert len(uer) >= 5  # TencentPretrain's own weights, published under `uer`
    recipes = builtin_recipes(plugins)  # type: ignore[arg-type]
    for name, card in cat.cards.items():  # type: ignore[attr-defined]
        assert card.recipe is None or card.recipe in recipes, name
        if card.scheme == "hf":
            assert card.source.count("/") == 3, name  # hf://ORG/REPO
            assert card.revision == "main" or COMMIT.match(card.revision), name
        assert all(f.sha256 is None or len(f.sha256) == 64 for f in card.files), name
        assert any(f.path == "config.json" for f in card.files), name


def test_text_cards_convert_with_installed_converters(shipped: tuple[object, object]) -> None:
    """`tp zoo pull` delivers tp checkpoints for the text models the paper fine-tunes; vision,
    speech and multimodal weights stay in HF format until a plugin converts them."""
    plugins, cat = shipped
    for name in ("bert-base-uncased", "bert-large-uncased", "roberta-base", "roberta-large",
                 "albert-base-v2", "gpt2", "t5-small", "xlm-roberta-base", "all-minilm-l6-v2"):
        assert convertible(cat.cards[name], plugins) is None, name  # type: ignore[attr-defined]
    for name in ("vit-base", "s2t-small-librispeech", "clip-vit-b16"):
        why = convertible(cat.cards[name], plugins)  # type: ignore[attr-defined]
        assert why is not None and "no installed plugin converts" in why


def test_pinned_cards_hash_their_weights(shipped: tuple[object, object]) -> None:
    _, cat = shipped
    bert = cat.find("bert-base")  # type: ignore[attr-defined]
    assert bert.name == "bert-base-uncased" and bert.pinned
    weights = {f.path: f for f in bert.files}["model.safetensors"]
    assert weights.size == 440449768 and weights.sha256 is not None


def card_text(name: str, path: str = "config.json", extra: str = "") -> str:
    return (f"name: {name}\nmodality: text\ntasks: [fill-mask]\ndescription: x\n"
            f"source: hf://org/{name}\nfiles:\n  - path: {path}\nlicense: mit\n{extra}")


@pytest.mark.parametrize("path", ["../../evil.json", "/etc/passwd", "a/../../b", "C:/x",
                                  "a//b", "./config.json"])
def test_path_traversal_is_refused(tmp_path: Path, path: str) -> None:
    card = tmp_path / "bad.yaml"
    card.write_text(card_text("bad", f"'{path}'"))
    with pytest.raises(TpError) as exc:
        read_card(card)
    assert str(card) in str(exc.value) and "files.0.path" in str(exc.value)


def test_cli_names_the_bad_card(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "evil.yaml").write_text(card_text("evil", "../../../.bashrc"))
    monkeypatch.setenv("TP_ZOO_CARDS", str(tmp_path))
    assert main(["zoo", "list"]) == 1
    err = capsys.readouterr().err
    assert "evil.yaml" in err and "leaves the model folder" in err
    assert "Traceback" not in err


def test_schema_problems_are_listed_together(tmp_path: Path) -> None:
    card = tmp_path / "x.yaml"
    card.write_text("name: x\nmodality: smell\ntasks: []\ndescription: d\nsource: nowhere\n"
                    "files: [{path: a, sha256: XYZ}]\nlicense: mit\ncolour: red\n")
    with pytest.raises(TpError) as exc:
        read_card(card)
    msg = str(exc.value)
    for field in ("modality", "tasks", "source", "files.0.sha256", "colour"):
        assert field in msg, field


def test_name_must_match_the_file(tmp_path: Path) -> None:
    card = tmp_path / "other.yaml"
    card.write_text(card_text("mine"))
    with pytest.raises(TpError, match="must be mine.yaml"):
        read_card(card)


def test_a_name_defined_twice_names_both_files(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "one.yaml").write_text(card_text("one", extra="aliases: [shared]\n"))
    (b / "two.yaml").write_text(card_text("two", extra="aliases: [shared]\n"))
    with pytest.raises(TpError) as exc:
        load_catalog([str(a), str(b)])
    assert "'shared'" in str(exc.value) and "one.yaml" in str(exc.value)
    assert "two.yaml" in str(exc.value)


def test_unknown_name_suggests_the_closest(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zoo", "info", "robert-base"]) == 1
    err = capsys.readouterr().err
    assert "no zoo model named 'robert-base'; did you mean 'roberta-base'?" in err


def test_list_filters_and_info(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TP_HOME", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["zoo", "list", "--modality", "vision"]) == 0
    out = capsys.readouterr().out
    assert "vit-base" in out and "beit-large" in out and "bert-base-uncased" not in out
    assert main(["zoo", "list", "--task", "asr"]) == 0
    out = capsys.readouterr().out
    assert "s2t-small-librispeech" in out and "vit-base" not in out
    assert main(["zoo", "list", "--modality", "smell"]) == 1
    assert "unknown modality 'smell'" in capsys.readouterr().err
    assert main(["zoo", "info", "gpt2"]) == 0
    out = capsys.readouterr().out
    assert "source: hf://openai-community/gpt2" in out and "cached: no" in out


def test_zoo_list_imports_no_torch() -> None:
    import subprocess
    import sys

    code = ("import sys; from tpcli.cli.main import main; rc = main(['zoo', 'list']); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60).stdout
    assert out.strip().endswith("NO-TORCH 0")
