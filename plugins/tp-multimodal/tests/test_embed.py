"""Task `embed` on a tiny random CLIP converted from HF: `tp infer --task embed` writes the
normalised embeddings of a folder of images, a list of image paths and a text file as an (N, P)
float32 .npy (rows in input order, named by a JSONL beside it) or as JSONL. Each row equals HF
CLIPModel's get_image_features / get_text_features, normalised, within 1e-5 (a caption longer
than the model's 24 positions is cut keeping <|endoftext|>, as CLIPTokenizer's truncation)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from clip_models import PROJECTION, TEXT  # noqa: E402
from clip_tasks import (clip_checkpoint, fashion, hf_image_embeds,  # noqa: E402
                        hf_text_embeds, infer, read_jsonl, save_png, skimage_pictures)

TOL = 1e-5
TEXTS = ["a photo of a cat", "A DOG!", "", "an astronaut floating far above the earth, "
         "holding a flag", "cat"]  # a blank line (skipped); a caption too long for 24 tokens


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    ckpt = clip_checkpoint(tmp_path_factory)
    d = tmp_path_factory.mktemp("embed")
    paths = [save_png(d / "photos" / f"{name}.png", pixels)
             for name, pixels in skimage_pictures().items()]
    pixels, labels = fashion(3)
    paths += [save_png(d / "photos" / "fashion" / f"{i}-{label}.png", p)
              for i, (p, label) in enumerate(zip(pixels, labels))]
    (d / "captions.txt").write_text("\n".join(TEXTS) + "\n")
    return {**ckpt, "dir": d, "paths": paths}


def test_a_folder_of_images_as_npy_equals_hf_image_features(data: dict[str, Any]) -> None:
    """`tp infer` as a user runs it (a subprocess)."""
    from tpcli.testing.runs import run_tp

    out = data["dir"] / "out" / "photos.npy"
    done = run_tp("infer", str(data["tp"]), "--task", "embed", "--input",
                  str(data["dir"] / "photos"), "--out", str(out), "--json")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["shape"] == [len(data["paths"]), PROJECTION]
    assert summary["rows"] == str(data["dir"] / "out" / "photos.jsonl")
    array = np.load(out)
    assert array.dtype == np.float32 and array.shape == (len(data["paths"]), PROJECTION)
    rows = read_jsonl(Path(summary["rows"]))
    order = sorted(data["paths"])  # the folder is read recursively, in path order
    assert [r["path"] for r in rows] == [str(p) for p in order]
    assert [r["index"] for r in rows] == list(range(len(order)))
    want = hf_image_embeds(data["hf"], order).numpy()
    assert float(np.abs(array - want).max()) <= TOL
    assert np.allclose(np.linalg.norm(array, axis=1), 1, atol=1e-6)
    assert sorted(p.name for p in out.parent.iterdir()) == ["photos.jsonl", "photos.npy"]


def test_a_text_file_equals_hf_text_features(data: dict[str, Any]) -> None:
    out = data["dir"] / "captions.npy"
    code, printed = infer(str(data["tp"]), "--task", "embed", "--input",
                          str(data["dir"] / "captions.txt"), "--out", str(out))
    assert code == 0, printed
    texts = [t for t in TEXTS if t]
    rows = read_jsonl(data["dir"] / "captions.jsonl")
    assert [(r["line"], r["text"]) for r in rows] == [(1, texts[0]), (2, texts[1]),
                                                     (4, texts[2]), (5, texts[3])]
    array = np.load(out)
    want = hf_text_embeds(data["hf"], texts).numpy()
    assert array.shape == (4, PROJECTION)
    from tp_multimodal.clip_inputs import ClipTowers

    from tpcli.plugins import get_plugins
    from tpcli.train.checkpoint import load_checkpoint

    loaded = load_checkpoint(data["tp"], get_plugins())
    ids = ClipTowers(loaded.recipe.processor.options).text_ids(texts, loaded.tokenizer)
    assert len(ids[2]) == TEXT["max_position_embeddings"]  # the long caption was cut...
    assert ids[2][-1] == loaded.tokenizer.special_ids["eos"]  # ...keeping <|endoftext|>
    assert float(np.abs(array - want).max()) <= TOL


def test_a_list_of_paths_and_jsonl_output(data: dict[str, Any]) -> None:
    """A list of image paths (relative to its folder) embeds in the listed order; without .npy
    the output is one JSONL with each row's embedding; `inputs=texts` embeds the lines as
    texts."""
    chosen = [data["paths"][5], data["paths"][0], data["paths"][2]]
    listing = data["dir"] / "list.txt"
    listing.write_text("".join(f"{p.relative_to(data['dir'])}\n" for p in chosen))
    out = data["dir"] / "list.jsonl"
    code, printed = infer(str(data["tp"]), "--task", "embed", "--input", str(listing), "--out",
                          str(out))
    assert code == 0, printed
    rows = read_jsonl(out)
    assert [r["path"] for r in rows] == [str(p) for p in chosen]
    got = np.asarray([r["embedding"] for r in rows], np.float32)
    assert float(np.abs(got - hf_image_embeds(data["hf"], chosen).numpy()).max()) <= TOL
    code, printed = infer(str(data["tp"]), "--task", "embed", "finetune.task.inputs=texts",
                          "--input", str(listing), "--out", str(data["dir"] / "names.npy"))
    assert code == 0, printed
    lines = listing.read_text().splitlines()
    assert [r["text"] for r in read_jsonl(data["dir"] / "names.jsonl")] == lines
    want = hf_text_embeds(data["hf"], lines).numpy()
    assert float(np.abs(np.load(data["dir"] / "names.npy") - want).max()) <= TOL


def test_bad_inputs_exit_1_naming_the_problem(data: dict[str, Any], tmp_path: Path) -> None:
    tp = str(data["tp"])
    out = tmp_path / "out" / "e.npy"
    (tmp_path / "blank.txt").write_text("\n  \n")
    code, printed = infer(tp, "--task", "embed", "--input", str(tmp_path / "blank.txt"),
                          "--out", str(out))
    assert code == 1 and "has no lines to embed" in printed
    (tmp_path / "images").mkdir()
    save_png(tmp_path / "images" / "a.png", skimage_pictures()["camera"])
    (tmp_path / "images" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code, printed = infer(tp, "--task", "embed", "--input", str(tmp_path / "images"), "--out",
                          str(out))
    assert code == 1 and str(tmp_path / "images" / "b.png") in printed
    (tmp_path / "list.txt").write_text("images/a.png\nimages/gone.png\n")
    code, printed = infer(tp, "--task", "embed", "--input", str(tmp_path / "list.txt"), "--out",
                          str(out))
    assert code == 1 and f"{tmp_path / 'list.txt'}:2: image images/gone.png does not exist" \
        in printed
    (tmp_path / "empty").mkdir()
    code, printed = infer(tp, "--task", "embed", "--input", str(tmp_path / "empty"), "--out",
                          str(out))
    assert code == 1 and "holds no images" in printed
    assert not out.parent.exists()  # nothing written, not even a temp file


def test_a_checkpoint_that_is_not_a_dual_stream_clip_is_named(data: dict[str, Any],
                                                              tmp_path: Path) -> None:
    """The same weights with a single-stream processor (what ViLT reads): refused before any
    input is read, naming what the task needs."""
    import shutil

    import yaml

    ckpt = tmp_path / "ckpt"
    shutil.copytree(data["tp"], ckpt)
    recipe = yaml.safe_load((ckpt / "recipe.yaml").read_text())
    recipe["data"]["processor"]["layout"] = "single"
    (ckpt / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    code, printed = infer(str(ckpt), "--task", "embed", "--input", str(tmp_path / "nothing"),
                          "--out", str(tmp_path / "e.npy"))
    assert code == 1 and "task embed needs a CLIP model" in printed
    assert "with layout 'single', not image_text with layout dual" in printed


def test_fine_tuning_is_refused_with_the_command_to_run(data: dict[str, Any],
                                                         tmp_path: Path) -> None:
    from tpcli.errors import TpError
    from tpcli.plugins import get_plugins
    from tpcli.plugins.requests import TaskData

    registry = get_plugins().registry
    for name in ("zero_shot", "retrieval", "embed"):
        cls = registry.get("task", name)
        with pytest.raises(TpError) as e:
            cls(cls.Config(), None).load(TaskData(train="train.tsv", dev=["dev.tsv"]))
        assert f"tp infer CHECKPOINT --task {name}" in (e.value.hint or "")
