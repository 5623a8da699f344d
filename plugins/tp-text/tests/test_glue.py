"""GLUE reading: the original TSV layouts of all nine tasks, errors, and the Hub's parquet copy."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from tp_text.glue_data import GLUE_TASKS, Example, get_task, read_glue
from tpcli.errors import DataError, TpError
from tpcli.testing.hub_server import HubServer

T = "\t"
MNLI_TRAIN_HEAD = ("index promptID pairID genre sentence1_binary_parse sentence2_binary_parse "
                   "sentence1_parse sentence2_parse sentence1 sentence2 label1 gold_label")
MNLI_DEV_HEAD = MNLI_TRAIN_HEAD.replace("label1 gold_label",
                                        "label1 label2 label3 label4 label5 gold_label")
MNLI_TEST_HEAD = MNLI_TRAIN_HEAD.replace(" label1 gold_label", "")
STSB_HEAD = "index genre filename year old_index source1 source2 sentence1 sentence2 score"


def _mnli(i: int, s1: str, s2: str, labels: list[str]) -> str:
    return T.join([str(i), "31193", f"{i}n", "government", "( x )", "( y )", "(ROOT x)",
                   "(ROOT y)", s1, s2, *labels])


def _sts(i: int, s1: str, s2: str, score: str | None) -> str:
    cells = [str(i), "main-captions", "MSRvid", "2012test", f"000{i}", "none", "none", s1, s2]
    return T.join(cells + ([score] if score is not None else []))


# The original GLUE layout: headers, column orders, CoLA's header-less train/dev, the BOM that
# MRPC's train/dev inherit from Microsoft's file, and MRPC's unbalanced quotes.
GLUE_FILES: dict[str, dict[str, list[str]]] = {
    "CoLA": {
        "train.tsv": ["gj04\t1\t\tOur friends won't buy this analysis, let alone the next one.",
                      "gj04\t0\t*\tOne more pseudo generalization and I'm giving up."],
        "dev.tsv": ["gj04\t1\t\tThe sailors rode the breeze clear of the rocks.",
                    "gj04\t0\t*\tThe more we study verbs, the crazier they get get."],
        "test.tsv": ["index\tsentence", "0\tBill whistled past the house."],
    },
    "SST-2": {
        "train.tsv": ["sentence\tlabel", "hide new secretions from the parental units \t0",
                      "that loves its characters \t1"],
        "dev.tsv": ["sentence\tlabel", "it 's a charming and often affecting journey . \t1"],
        "test.tsv": ["index\tsentence", "0\tuneasy mishmash of styles and genres ."],
    },
    "MRPC": {
        "train.tsv": ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String",
                      '1\t702876\t702977\tAmrozi accused his brother , whom he called " the '
                      'witness " , of deliberately distorting his evidence .\tReferring to him '
                      'as only " the witness " , Amrozi accused his brother .',
                      "0\t2108705\t2108831\tYucaipa owned Dominick 's \" before selling .\t"
                      "Yucaipa bought Dominick 's in 1995 ."],
        "dev.tsv": ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String",
                    "1\t1355540\t1355592\tHe said the foodservice pie business fit .\t"
                    "The foodservice pie business did not fit ."],
        "test.tsv": ["index\t#1 ID\t#2 ID\t#1 String\t#2 String",
                     "0\t1089874\t1089925\tPCCW 's chief will leave .\tThe chief will leave ."],
    },
    "QQP": {
        "train.tsv": ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
                      "133273\t213221\t213222\tHow is the life of a math student?\t"
                      "Which level of prepration is enough for the exam jlpt5?\t0",
                      "402555\t536040\t536041\tHow do I control my horny emotions?\t"
                      "How do you control your horniness?\t1"],
        "dev.tsv": ["id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate",
                    "201359\t303345\t303346\tWhy are African-Americans so beautiful?\t"
                    "Why are hispanics so beautiful?\t0"],
        "test.tsv": ["id\tquestion1\tquestion2",
                     "0\tWould the idea of Trump and Putin be bad?\tTrump and Putin?"],
    },
    "STS-B": {
        "train.tsv": [STSB_HEAD.replace(" ", T),
                      _sts(0, "A plane is taking off.", "An air plane is taking off.", "5.000"),
                      _sts(1, "A man is playing a flute.", "A man is playing a flute.", "3.800")],
        "dev.tsv": [STSB_HEAD.replace(" ", T),
                    _sts(0, "A man with a hard hat is dancing.", "A man is dancing.", "4.750")],
        "test.tsv": [STSB_HEAD.replace(" score", "").replace(" ", T),
                     _sts(0, "A girl is styling her hair.", "A girl is brushing her hair.",
                          None)],
    },
    "MNLI": {
        "train.tsv": [MNLI_TRAIN_HEAD.replace(" ", T),
                      _mnli(0, "Conceptually cream skimming has two basic dimensions .",
                            "Product and geography are what make cream skimming work .",
                            ["neutral", "neutral"]),
                      _mnli(1, "you know during the season i guess",
                            "You lose the things to the following level .",
                            ["entailment", "entailment"])],
        "dev_matched.tsv": [MNLI_DEV_HEAD.replace(" ", T),
                            _mnli(0, "The new rights are nice enough",
                                  "Everyone really likes the newest benefits",
                                  ["neutral"] * 5 + ["neutral"])],
        "dev_mismatched.tsv": [MNLI_DEV_HEAD.replace(" ", T),
                               _mnli(0, "Your contribution helped make it possible.",
                                     "Your contributions were of no help.",
                                     ["contradiction"] * 5 + ["contradiction"])],
        "test_matched.tsv": [MNLI_TEST_HEAD.replace(" ", T),
                             _mnli(0, "Hierbas, ans seco, ans dulce are sweet.",
                                   "Hierbas is a name worth looking out for.", [])],
        "test_mismatched.tsv": [MNLI_TEST_HEAD.replace(" ", T),
                                _mnli(0, "What have you decided?", "Have you decided?", [])],
    },
    "QNLI": {
        "train.tsv": ["index\tquestion\tsentence\tlabel",
                      "0\tWhen did the third Digimon series begin?\tUnlike the two seasons "
                      "before it, Digimon Tamers takes a darker approach.\tnot_entailment"],
        "dev.tsv": ["index\tquestion\tsentence\tlabel",
                    "0\tWhat came into force after the new constitution?\tAs of that day, the "
                    "new constitution heralding the Second Republic came into force.\tentailment"],
        "test.tsv": ["index\tquestion\tsentence", "0\tWhat organization is devoted to Jihad?\t"
                     "For some decades prior, Islamist groups grew."],
    },
    "RTE": {
        "train.tsv": ["index\tsentence1\tsentence2\tlabel",
                      "0\tNo Weapons of Mass Destruction Found in Iraq Yet.\tWeapons of Mass "
                      "Destruction Found in Iraq.\tnot_entailment"],
        "dev.tsv": ["index\tsentence1\tsentence2\tlabel",
                    "0\tDana Reeve died of lung cancer.\tChristopher Reeve had an accident."
                    "\tnot_entailment"],
        "test.tsv": ["index\tsentence1\tsentence2",
                     "0\tMangla was built in 1967.\tMangla was built in 1967."],
    },
    "WNLI": {
        "train.tsv": ["index\tsentence1\tsentence2\tlabel",
                      "0\tI stuck a pin through a carrot. When I pulled the pin out, it had a "
                      "hole.\tThe carrot had a hole.\t1"],
        "dev.tsv": ["index\tsentence1\tsentence2\tlabel",
                    "0\tThe drain is clogged with hair. It has to be cleaned.\t"
                    "The hair has to be cleaned.\t0"],
        "test.tsv": ["index\tsentence1\tsentence2",
                     "0\tMaria took Susan's bread.\tSusan took the bread."],
    },
}


def write_glue(root: Path, files: dict[str, dict[str, list[str]]] = GLUE_FILES) -> Path:
    for folder, by_name in files.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name, lines in by_name.items():
            (root / folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture
def glue_root(tmp_path: Path) -> Path:
    return write_glue(tmp_path / "glue_data")


# (task, split) -> split name -> [(text_a, text_b, label)] as the TSV files above give them.
EXPECTED = {
    ("cola", "train"): {"train": [
        ("Our friends won't buy this analysis, let alone the next one.", None, "1"),
        ("One more pseudo generalization and I'm giving up.", None, "0")]},
    ("cola", "test"): {"test": [("Bill whistled past the house.", None, None)]},
    ("sst2", "train"): {"train": [("hide new secretions from the parental units ", None, "0"),
                                  ("that loves its characters ", None, "1")]},
    ("mrpc", "train"): {"train": [
        ('Amrozi accused his brother , whom he called " the witness " , of deliberately '
         'distorting his evidence .',
         'Referring to him as only " the witness " , Amrozi accused his brother .', "1"),
        ("Yucaipa owned Dominick 's \" before selling .", "Yucaipa bought Dominick 's in 1995 .",
         "0")]},
    ("mrpc", "test"): {"test": [("PCCW 's chief will leave .", "The chief will leave .", None)]},
    ("qqp", "dev"): {"dev": [("Why are African-Americans so beautiful?",
                              "Why are hispanics so beautiful?", "0")]},
    ("qqp", "test"): {"test": [("Would the idea of Trump and Putin be bad?", "Trump and Putin?",
                                None)]},
    ("stsb", "train"): {"train": [
        ("A plane is taking off.", "An air plane is taking off.", 5.0),
        ("A man is playing a flute.", "A man is playing a flute.", 3.8)]},
    ("stsb", "test"): {"test": [("A girl is styling her hair.", "A girl is brushing her hair.",
                                 None)]},
    ("mnli", "dev"): {
        "dev_matched": [("The new rights are nice enough",
                         "Everyone really likes the newest benefits", "neutral")],
        "dev_mismatched": [("Your contribution helped make it possible.",
                            "Your contributions were of no help.", "contradiction")]},
    ("mnli", "test"): {
        "test_matched": [("Hierbas, ans seco, ans dulce are sweet.",
                          "Hierbas is a name worth looking out for.", None)],
        "test_mismatched": [("What have you decided?", "Have you decided?", None)]},
    ("qnli", "dev"): {"dev": [("What came into force after the new constitution?",
                               "As of that day, the new constitution heralding the Second "
                               "Republic came into force.", "entailment")]},
    ("rte", "train"): {"train": [("No Weapons of Mass Destruction Found in Iraq Yet.",
                                  "Weapons of Mass Destruction Found in Iraq.",
                                  "not_entailment")]},
    ("wnli", "dev"): {"dev": [("The drain is clogged with hair. It has to be cleaned.",
                               "The hair has to be cleaned.", "0")]},
}


@pytest.mark.parametrize("task,split", sorted(EXPECTED))
def test_reads_original_layout(glue_root: Path, task: str, split: str) -> None:
    got = read_glue(task, split, glue_root)
    want = EXPECTED[(task, split)]
    assert list(got) == list(want)
    for name, rows in want.items():
        assert [(e.text_a, e.text_b, e.label) for e in got[name]] == rows
        assert [e.guid for e in got[name]] == [f"{name}-{i}" for i in range(len(rows))]


@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_every_task_every_split_reads(glue_root: Path, task: str) -> None:
    spec = GLUE_TASKS[task]
    for split, files in spec.splits.items():
        got = read_glue(task, split, glue_root / spec.folder)  # the task folder itself works
        assert list(got) == [name for _, name in files]
        for examples in got.values():
            assert examples and all((e.text_b is None) == (spec.text_b is None) for e in examples)
            labels = {e.label for e in examples}
            assert labels == {None} if split == "test" else None not in labels


def test_task_table_matches_the_glue_paper() -> None:
    metrics = {t.name: t.metrics for t in GLUE_TASKS.values()}
    assert metrics == {"cola": ("matthews_corr",), "sst2": ("accuracy",),
                       "mrpc": ("f1", "accuracy"),
                       "qqp": ("f1", "accuracy"), "stsb": ("pearson", "spearman"),
                       "mnli": ("accuracy",), "qnli": ("accuracy",), "rte": ("accuracy",),
                       "wnli": ("accuracy",)}
    assert GLUE_TASKS["stsb"].is_regression and GLUE_TASKS["stsb"].labels is None
    assert GLUE_TASKS["mnli"].labels == ("entailment", "neutral", "contradiction")
    assert get_task("glue/SST-2").name == "sst2" and get_task("STS-B").name == "stsb"


def test_source_points_to_the_line(glue_root: Path) -> None:
    ex = read_glue("mrpc", "train", glue_root)["train"][1]
    assert ex.source == f"{glue_root / 'MRPC' / 'train.tsv'}:3"


def test_wrong_column_count_names_file_and_line(glue_root: Path) -> None:
    path = glue_root / "QQP" / "train.tsv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2] + ["402555\t536040\tHow do I control my horny"] +
                              lines[2:]) + "\n")
    with pytest.raises(DataError, match=rf"{path}:3: expected 6 tab-separated fields, got 3") as e:
        read_glue("qqp", "train", glue_root)
    assert "skip_malformed" in (e.value.hint or "")


def test_skip_malformed_keeps_the_hub_numbering(glue_root: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    path = glue_root / "QQP" / "train.tsv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2] + ["402555\t536040\tshort"] + lines[2:]) + "\n")
    with caplog.at_level(logging.WARNING):
        got = read_glue("qqp", "train", glue_root, skip_malformed=True)["train"]
    assert [e.guid for e in got] == ["train-0", "train-2"]
    assert "skipped 1 malformed line(s) (first: line 3)" in caplog.text


def test_unknown_label_names_file_and_line(glue_root: Path) -> None:
    path = glue_root / "RTE" / "dev.tsv"
    path.write_text(path.read_text().replace("\tnot_entailment", "\tneutral"))
    with pytest.raises(DataError, match=rf"{path}:2: label 'neutral' is not one of the rte"):
        read_glue("rte", "dev", glue_root)


def test_missing_file_says_what_is_expected(glue_root: Path) -> None:
    (glue_root / "MNLI" / "dev_mismatched.tsv").unlink()
    with pytest.raises(DataError, match="dev_mismatched.tsv not found") as e:
        read_glue("mnli", "dev", glue_root)
    assert "dev_matched.tsv" in e.value.hint and "--data hub" in e.value.hint


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no folder .*CoLA") as e:
        read_glue("cola", "train", tmp_path)
    assert "download_glue_data.py" in e.value.hint


def test_folder_of_another_task(glue_root: Path) -> None:
    with pytest.raises(DataError, match="is the folder of sst2, not cola"):
        read_glue("cola", "train", glue_root / "SST-2")


def test_unknown_task_did_you_mean() -> None:
    with pytest.raises(TpError, match=r"unknown GLUE task 'glue/mrcp' \(did you mean 'glue/mrpc'"):
        read_glue("glue/mrcp", "train", "unused")
    with pytest.raises(TpError) as e:
        get_task("squad")
    assert "cola, sst2, mrpc, qqp, stsb, mnli, qnli, rte, wnli" in e.value.hint


# -- the Hub copy ------------------------------------------------------------------------------
try:  # the TSV tests above run without pyarrow; the Hub ones need it to write parquet
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError:
    pa = pq = None
needs_pyarrow = pytest.mark.skipif(pa is None, reason="pyarrow is not installed")

# The Hub's schema (nyu-mll/glue): text columns, label (ClassLabel int64, -1 when hidden;
# float32 for stsb), idx (int32). Rows written in the Hub's own encoding, not from the TSVs.
HUB_ROWS = {
    "cola/train": {"sentence": [e[0] for e in EXPECTED[("cola", "train")]["train"]],
                   "label": [1, 0]},
    "cola/validation": {"sentence": ["The sailors rode the breeze clear of the rocks.",
                                     "The more we study verbs, the crazier they get get."],
                        "label": [1, 0]},
    "cola/test": {"sentence": ["Bill whistled past the house."], "label": [-1]},
    "mnli/validation_matched": {"premise": ["The new rights are nice enough"],
                                "hypothesis": ["Everyone really likes the newest benefits"],
                                "label": [1]},
    "mnli/validation_mismatched": {"premise": ["Your contribution helped make it possible."],
                                   "hypothesis": ["Your contributions were of no help."],
                                   "label": [2]},
    "stsb/train": {"sentence1": ["A plane is taking off.", "A man is playing a flute."],
                   "sentence2": ["An air plane is taking off.", "A man is playing a flute."],
                   "label": [5.0, 3.8]},
    "stsb/test": {"sentence1": ["A girl is styling her hair."],
                  "sentence2": ["A girl is brushing her hair."], "label": [-1.0]},
}


def _parquet(columns: dict[str, list]) -> bytes:
    n = len(columns["label"])
    fields = {k: pa.array(v, pa.string()) for k, v in columns.items() if k != "label"}
    is_float = isinstance(columns["label"][0], float)
    fields["label"] = pa.array(columns["label"], pa.float32() if is_float else pa.int64())
    fields["idx"] = pa.array(range(n), pa.int32())
    sink = pa.BufferOutputStream()
    pq.write_table(pa.table(fields), sink)
    return sink.getvalue().to_pybytes()


@pytest.fixture
def hub() -> Iterator[HubServer]:
    files = {f"{k}-00000-of-00001.parquet": _parquet(v) for k, v in HUB_ROWS.items()}
    files["README.md"] = b"---\npretty_name: GLUE\n---\n"
    with HubServer({"datasets/nyu-mll/glue": files}) as server, server.activate():
        yield server


@needs_pyarrow
@pytest.mark.parametrize("task,split", [("cola", "train"), ("cola", "dev"), ("cola", "test"),
                                        ("mnli", "dev"), ("stsb", "train"), ("stsb", "test")])
def test_hub_gives_the_same_examples(hub: HubServer, glue_root: Path, tmp_path: Path,
                                     task: str, split: str) -> None:
    from_hub = read_glue(task, split, "hub", cache_dir=tmp_path / "hf")
    assert from_hub == read_glue(task, split, glue_root)
    example: Example = next(iter(from_hub.values()))[0]
    assert example.source.startswith("hf://datasets/nyu-mll/glue@")
    assert example.source.endswith(".parquet:1")


@needs_pyarrow
def test_hub_second_read_comes_from_the_cache(hub: HubServer, tmp_path: Path) -> None:
    first = read_glue("mnli", "dev", "hf://nyu-mll/glue@main", cache_dir=tmp_path)
    gets = hub.count(".parquet", method="GET")
    assert gets == 2  # validation_matched and validation_mismatched, nothing else
    assert read_glue("mnli", "dev", "hub", cache_dir=tmp_path) == first
    assert hub.count(".parquet", method="GET") == gets


@needs_pyarrow
def test_hub_unknown_revision_is_a_data_error(hub: HubServer, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"hf://nyu-mll/glue@v9") as e:
        read_glue("cola", "train", "hf://nyu-mll/glue@v9", cache_dir=tmp_path)
    assert "revision" in e.value.hint


@needs_pyarrow
def test_hub_split_missing_from_repo(hub: HubServer, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no qqp/train-\*\.parquet"):
        read_glue("qqp", "train", "hub", cache_dir=tmp_path)


@needs_pyarrow
def test_hub_parquet_branch_layout(hub: HubServer, glue_root: Path, tmp_path: Path) -> None:
    # The Hub's auto-converted branch keeps <task>/<split>/0000.parquet; a revision with slashes.
    branch = {"cola/validation/0000.parquet": _parquet(HUB_ROWS["cola/validation"])}
    hub.add_repo("nyu-mll/glue", branch, repo_type="dataset", refs=("refs/convert/parquet",))
    got = read_glue("cola", "dev", "hf://nyu-mll/glue@refs/convert/parquet", cache_dir=tmp_path)
    assert got == read_glue("cola", "dev", glue_root)
