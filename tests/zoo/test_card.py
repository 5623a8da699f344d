"""Zoo cards: every shipped card validates (the card schema test), names and aliases are unique,
recipes and converters named by cards exist, and malformed cards are refused with the file and
the field named."""

from __future__ import annotations

import json
import os
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


def test_cards_convert_with_installed_converters(shipped: tuple[object, object]) -> None:
    """`tp zoo pull` delivers tp checkpoints for the text, vision, speech and image-text models
    the paper fine-tunes (CLIP through tp-multimodal's clip converter)."""
    plugins, cat = shipped
    for name in ("bert-base-uncased", "bert-large-uncased", "roberta-base", "roberta-large",
                 "albert-base-v2", "gpt2", "t5-small", "xlm-roberta-base", "all-minilm-l6-v2",
                 "vit-base", "beit-large", "s2t-small-librispeech", "clip-vit-b16"):
        assert convertible(cat.cards[name], plugins) is None, name  # type: ignore[attr-defined]


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


BAD_CARDS = {  # file -> what the warning and the error say about it
    "evil.yaml": (card_text("evil", "../../../.bashrc"), "files.0.path: Value error, file path "
                  "'../../../.bashrc' leaves the model folder"),
    "broken.yaml": ("name: broken\nfiles: [unclosed\n", "cannot be read"),
    "listy.yaml": ("- a\n- b\n", "is not a YAML mapping"),
    "misnamed.yaml": (card_text("other"), "the file must be other.yaml"),
}


def test_a_malformed_card_is_skipped_with_a_warning(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """One bad file in TP_ZOO_CARDS must not take down every zoo command: each is named on
    stderr and skipped, the good cards (here the shipped ones and `good`) still list."""
    for file, (text, _) in BAD_CARDS.items():
        (tmp_path / file).write_text(text)
    (tmp_path / "good.yaml").write_text(card_text("good"))
    monkeypatch.setenv("TP_ZOO_CARDS", str(tmp_path))
    monkeypatch.setenv("TP_HOME", str(tmp_path / "home"))
    assert main(["zoo", "list", "--json"]) == 0
    out, err = capsys.readouterr()
    names = {row["name"] for row in json.loads(out)}
    assert {"good", "bert-base-uncased"} <= names and not names & {"evil", "broken", "listy"}
    warnings = err.strip().splitlines()
    assert len(warnings) == len(BAD_CARDS)  # one line per bad file
    for file, (_, why) in BAD_CARDS.items():
        (line,) = [w for w in warnings if f"{tmp_path / file}" in w]
        assert line.startswith("tp: warning: zoo card ") and why in line, line
        assert line.endswith("the card was skipped")
    assert "Traceback" not in err


@pytest.mark.parametrize("action", ["info", "pull"])
def test_using_a_malformed_card_says_why(action: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "evil.yaml").write_text(BAD_CARDS["evil.yaml"][0])
    monkeypatch.setenv("TP_ZOO_CARDS", str(tmp_path))
    monkeypatch.setenv("TP_HOME", str(tmp_path / "home"))
    assert main(["zoo", action, "evil"]) == 1
    err = capsys.readouterr().err
    assert f"error: zoo model 'evil' cannot be used: zoo card {tmp_path / 'evil.yaml'} has" in err
    assert BAD_CARDS["evil.yaml"][1] in err
    assert "hint: fix the card" in err and "Traceback" not in err
    assert not (tmp_path / "home").exists()  # nothing was pulled or locked


def test_a_missing_cards_folder_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "no-such-folder"
    monkeypatch.setenv("TP_ZOO_CARDS", f"{missing}{os.pathsep}{tmp_path}")
    assert main(["zoo", "list", "--json"]) == 0
    err = capsys.readouterr().err
    assert err == (f"tp: warning: TP_ZOO_CARDS names {missing}, which does not exist; it was "
                   "ignored\n")


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
    cat = load_catalog([str(a), str(b)])  # the first card keeps the name; the second is skipped
    assert cat.find("shared").name == "one"
    with pytest.raises(TpError) as exc:
        cat.find("two")
    assert "'shared'" in str(exc.value) and str(a / "one.yaml") in str(exc.value)
    assert str(b / "two.yaml") in str(exc.value)


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


def test_zoo_list_shows_a_size_or_parameter_count_for_every_card(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """Every shipped card says something true of its size: the parameter count (approximate,
    `~`), and the download size where the card knows it (`>=` where it knows some files');
    piped, the lines are never cut."""
    monkeypatch.setenv("TP_HOME", str(tmp_path))
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "MODALITY", "PARAMS", "SIZE", "LICENSE", "CACHED", "TASKS"]
    rows = {r[0]: r for r in plain_rows(out)}
    assert len(rows) == len(lines) - 1 >= 24 and "…" not in out
    assert all(r[2].startswith("~") for r in rows.values())  # PARAMS, for every card
    assert rows["bert-base-uncased"][2:4] == ["~110M", "441.1 MB"]
    assert rows["roberta-base"][3] == ">=498.8 MB" and rows["vit-base"][3] == "unknown"
    assert rows["uer-chinese-roberta-l2-h128"][2] == "~3.2M"
    tasks = ", ".join(json_card("bert-base-uncased")["tasks"])
    assert rows["bert-base-uncased"][6] == tasks  # the whole task list, not cut
    assert main(["zoo", "list", "--json"]) == 0
    got = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert got["bert-base-uncased"]["params"] == 110_000_000
    assert got["bert-base-uncased"]["size"] == {"bytes": 440449768 + 570 + 466062 + 48 + 231508,
                                                "exact": True}
    assert got["vit-base"]["size"] is None and got["gpt2"]["size"]["exact"] is False


def plain_rows(out: str) -> list[list[str]]:
    """The cells of piped (plain, aligned) output, cut where the header's columns start."""
    header, *lines = out.splitlines()
    starts = [i for i, c in enumerate(header) if c != " " and (i == 0 or header[i - 1] == " ")]
    bounds = list(zip(starts, starts[1:] + [None]))
    return [[line[a:b].strip() for a, b in bounds] for line in lines]


def json_card(name: str) -> dict[str, object]:
    import yaml

    return yaml.safe_load((Path(__file__).resolve().parents[2] / "zoo" / f"{name}.yaml")
                          .read_text())


def test_zoo_info_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TP_HOME", str(tmp_path))
    assert main(["zoo", "info", "bert-base", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["card"]["name"] == "bert-base-uncased" and got["card"]["params"] == 110_000_000
    assert got["pinned"] is True and got["cached"] is False and got["cache"] == []


def test_zoo_list_imports_no_torch() -> None:
    import subprocess
    import sys

    code = ("import sys; from tpcli.cli.main import main; rc = main(['zoo', 'list']); "
            "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60).stdout
    assert out.strip().endswith("NO-TORCH 0")
