"""Image datasets from the Hugging Face Hub, served by tp's local Hub under the real repo ids
(uoft-cs/cifar10, uoft-cs/cifar100) with the real layouts: images and labels read back equal
what was written, class names from the parquet metadata / the card, the cache, offline mode,
missing splits, streaming memory, and the two consumers (tp preprocess, image_classification)."""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tp_vision import hub_images
from tp_vision.hub_images import HubBlobs, is_hub_corpus, parse_source, read_hub_images
from tp_vision.images import ImageError, decode, fit
from tpcli.errors import DataError, TpError
from tpcli.testing.hub_server import HubServer

pa = pytest.importorskip("pyarrow")  # the Hub's parquet files: the whole module needs it
pq = pytest.importorskip("pyarrow.parquet")

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck"]
FINE = ("apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus "
        "butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach "
        "couch crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house "
        "kangaroo keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle "
        "mountain mouse mushroom oak_tree orange orchid otter palm_tree pear pickup_truck "
        "pine_tree plain plate poppy porcupine possum rabbit raccoon ray road rocket rose sea "
        "seal shark shrew skunk skyscraper snail snake spider squirrel streetcar sunflower "
        "sweet_pepper table tank telephone television tiger tractor train trout tulip turtle "
        "wardrobe whale willow_tree wolf woman worm").split()
COARSE = ("aquatic_mammals fish flowers food_containers fruit_and_vegetables "
          "household_electrical_devices household_furniture insects large_carnivores "
          "large_man-made_outdoor_things large_natural_outdoor_scenes "
          "large_omnivores_and_herbivores medium_mammals non-insect_invertebrates people "
          "reptiles small_mammals trees vehicles_1 vehicles_2").split()
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # datasets' Image feature


def photos(n: int, seed: int) -> list[np.ndarray]:
    """32x32 RGB crops of scikit-image's photographs (CIFAR's size)."""
    from skimage import data

    rng = np.random.default_rng(seed)
    sources = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    out = []
    for i in range(n):
        a = sources[i % len(sources)]
        y, x = rng.integers(0, a.shape[0] - 32), rng.integers(0, a.shape[1] - 32)
        out.append(np.ascontiguousarray(a[y:y + 32, x:x + 32]))
    return out


def digits(n: int) -> list[np.ndarray]:
    """scikit-learn's 8x8 digits as greyscale arrays (stored as mode-L PNGs)."""
    from sklearn.datasets import load_digits

    return [(d * 255 / 16).astype(np.uint8) for d in load_digits().images[:n]]


def png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def parquet(columns: dict[str, pa.Array], names: dict[str, list[str]] | None = None,
            row_group: int = 4) -> bytes:
    """One parquet file as `datasets` writes it: the features in the `huggingface` metadata."""
    table = pa.table(columns)
    if names is not None:
        features = {c: {"_type": "Image"} for c in columns if columns[c].type == IMAGE}
        features |= {c: {"names": n, "_type": "ClassLabel"} for c, n in names.items()}
        table = table.replace_schema_metadata(
            {"huggingface": json.dumps({"info": {"features": features}})})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=row_group)
    return sink.getvalue().to_pybytes()


def images(blobs: list[bytes]) -> pa.Array:
    return pa.array([{"bytes": b, "path": None} for b in blobs], IMAGE)


def card(config: str, labels: dict[str, list[str]], splits: tuple[str, ...]) -> str:
    """A dataset card header as on the Hub (features with class_label names, configs)."""
    lines = ["---", "pretty_name: test", "dataset_info:", f"  config_name: {config}",
             "  features:", "  - name: img", "    dtype: image"]
    for column, names in labels.items():
        lines += [f"  - name: {column}", "    dtype:", "      class_label:", "        names:"]
        lines += [f"          '{i}': {n}" for i, n in enumerate(names)]
    lines += ["configs:", f"- config_name: {config}", "  data_files:"]
    for s in splits:
        lines += [f"  - split: {s}", f"    path: {config}/{s}-*"]
    return "\n".join(lines + ["  default: true", "---", "# Dataset Card", ""])


# Written data: CIFAR-10 train in two files (7 + 5 rows), test of digits; CIFAR-100 train.
TRAIN = photos(12, seed=0)
TRAIN_LABELS = [3, 0, 9, 3, 1, 5, 2, 8, 7, 6, 4, 0]
TEST = digits(5)
TEST_LABELS = [0, 1, 2, 1, 0]
FINE_LABELS, COARSE_LABELS = [4, 99, 30, 0, 55, 72], [0, 19, 0, 4, 0, 0]
C100 = photos(6, seed=1)


def cifar10_files() -> dict[str, bytes | str]:
    blobs = [png(a) for a in TRAIN]
    part = [(blobs[:7], TRAIN_LABELS[:7]), (blobs[7:], TRAIN_LABELS[7:])]
    files: dict[str, bytes | str] = {
        f"plain_text/train-0000{i}-of-00002.parquet":
            parquet({"img": images(b), "label": pa.array(y, pa.int64())}, {"label": CIFAR10})
        for i, (b, y) in enumerate(part)}
    files["plain_text/test-00000-of-00001.parquet"] = parquet(
        {"img": images([png(a) for a in TEST]), "label": pa.array(TEST_LABELS, pa.int64())},
        {"label": CIFAR10})
    files["README.md"] = card("plain_text", {"label": CIFAR10}, ("train", "test"))
    return files


def cifar100_files() -> dict[str, bytes | str]:
    # no schema metadata here: the class names must come from the card
    table = parquet({"img": images([png(a) for a in C100]),
                     "fine_label": pa.array(FINE_LABELS, pa.int64()),
                     "coarse_label": pa.array(COARSE_LABELS, pa.int64())})
    return {"cifar100/train-00000-of-00001.parquet": table, "README.md": card(
        "cifar100", {"fine_label": FINE, "coarse_label": COARSE}, ("train", "test"))}


@pytest.fixture
def hub() -> Iterator[HubServer]:
    with HubServer() as server, server.activate():
        server.add_repo("uoft-cs/cifar10", cifar10_files(), repo_type="dataset")
        server.add_repo("uoft-cs/cifar100", cifar100_files(), repo_type="dataset")
        yield server


def requests(hub: HubServer) -> int:
    return sum(hub.requests.values())


def test_cifar10_images_labels_and_classes_are_what_was_written(
        hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_images, "BATCH_ROWS", 3)  # batches straddle row groups and files
    got = read_hub_images("hf://datasets/uoft-cs/cifar10:train", cache_dir=tmp_path)
    assert got.classes == CIFAR10 and got.labels == TRAIN_LABELS and got.paths == []
    assert list(got.blobs) == [png(a) for a in TRAIN]
    for blob, a in zip(got.blobs, TRAIN):
        np.testing.assert_array_equal(decode(blob), a)
    sources = list(got.sources)
    assert len(sources) == 12 and sources[6].endswith("/plain_text/train-00000-of-00002.parquet:7")
    assert sources[7].endswith("/plain_text/train-00001-of-00002.parquet:1")
    assert sources[0].startswith("hf://datasets/uoft-cs/cifar10@")
    test = read_hub_images("cifar10:test", cache_dir=tmp_path)
    assert test.labels == TEST_LABELS
    grey = [decode(b) for b in test.blobs]  # (8, 8, 3): the digit in every channel
    np.testing.assert_array_equal(np.stack(grey)[..., 1], np.stack(TEST))


def test_every_spelling_reads_the_same_commit(hub: HubServer, tmp_path: Path) -> None:
    sha = hub.add_repo("uoft-cs/cifar10", cifar10_files(), repo_type="dataset")
    spellings = ["cifar10:test", "hf://uoft-cs/cifar10:test", f"cifar10@{sha}:test",
                 "hf://datasets/uoft-cs/cifar10@main:test"]
    reads = [read_hub_images(s, cache_dir=tmp_path) for s in spellings]
    for r in reads:
        assert (r.labels, r.classes, list(r.blobs)) == (reads[0].labels, CIFAR10,
                                                        list(reads[0].blobs))
        assert r.sources[0].startswith(f"hf://datasets/uoft-cs/cifar10@{sha[:12]}/")
    assert parse_source("cifar100@refs/convert/parquet:test?label=coarse_label") == \
        hub_images.HubSource("uoft-cs/cifar100", "refs/convert/parquet", "test",
                             label="coarse_label")


def test_second_read_comes_from_the_cache(hub: HubServer, tmp_path: Path) -> None:
    sha = hub.add_repo("uoft-cs/cifar10", cifar10_files(), repo_type="dataset")
    read_hub_images(f"cifar10@{sha}:train", cache_dir=tmp_path)
    assert hub.count(".parquet", method="GET") == 2 and hub.count("README.md") == 1
    before = requests(hub)
    again = read_hub_images(f"cifar10@{sha}:train", cache_dir=tmp_path)  # pinned: no request
    assert requests(hub) == before and again.labels == TRAIN_LABELS
    read_hub_images("cifar10:train", cache_dir=tmp_path)  # main: one revision lookup, no file
    assert requests(hub) == before + 1 and hub.count("/revision/main") >= 1
    assert hub.count(".parquet", method="GET") == 2


def test_offline_reads_the_cache_and_says_what_is_missing(
        hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError, match=r"not in the Hugging Face cache, and HF_HUB_OFFLINE") as e:
        read_hub_images("cifar10:train", cache_dir=tmp_path)
    assert "HF_HUB_OFFLINE=0" in e.value.hint and requests(hub) == 0
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    online = read_hub_images("cifar10:train", cache_dir=tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    before = requests(hub)
    offline = read_hub_images("cifar10:train", cache_dir=tmp_path)
    assert requests(hub) == before
    assert (offline.labels, list(offline.blobs)) == (online.labels, list(online.blobs))
    with pytest.raises(DataError, match=r"plain_text/test-\*.*HF_HUB_OFFLINE"):
        read_hub_images("cifar10:test", cache_dir=tmp_path)  # never fetched


def test_missing_split_revision_repo_and_bad_spellings(hub: HubServer, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"no split 'validation' \(config plain_text\)") as e:
        read_hub_images("cifar10:validation", cache_dir=tmp_path)
    assert "its splits are train, test" in e.value.hint and "cifar10@main:train" in e.value.hint
    with pytest.raises(DataError, match=r"cifar10@v9:train: no revision 'v9'") as e:
        read_hub_images("cifar10@v9:train", cache_dir=tmp_path)
    assert "revision" in e.value.hint
    with pytest.raises(DataError, match=r"nobody/nothing@main:train: no dataset nobody/nothing"):
        read_hub_images("hf://datasets/nobody/nothing:train", cache_dir=tmp_path)
    for bad, why in [("cifar10", "no split"), ("hf://datasets/cifar10:train", "not <org>/<name>"),
                     ("cifar10:train?lable=x", "unknown option 'lable'")]:
        with pytest.raises(TpError, match=why):
            read_hub_images(bad, cache_dir=tmp_path)
    with pytest.raises(DataError, match=r"no label column 'nope' \(columns: img, fine_label"):
        read_hub_images("cifar100:train?label=nope", cache_dir=tmp_path)
    hub.require_token("uoft-cs/cifar100", "secret", repo_type="dataset")  # gated, as ImageNet
    with pytest.raises(DataError, match=r"private or gated: `hf auth login`"):
        read_hub_images("cifar100:train", cache_dir=tmp_path / "fresh")  # (a cached copy is served)


def test_cifar100_fine_by_default_coarse_by_option_names_from_the_card(
        hub: HubServer, tmp_path: Path) -> None:
    fine = read_hub_images("cifar100:train", cache_dir=tmp_path)
    assert fine.classes == FINE and len(FINE) == 100 and fine.labels == FINE_LABELS
    coarse = read_hub_images("cifar100:train?label=coarse_label", cache_dir=tmp_path)
    assert coarse.classes == COARSE and len(COARSE) == 20 and coarse.labels == COARSE_LABELS
    assert [FINE[y] for y in fine.labels] == ["beaver", "worm", "dolphin", "apple", "otter",
                                              "seal"]
    assert list(coarse.blobs) == [png(a) for a in C100]


def test_other_layouts_convert_branch_and_push_to_hub(hub: HubServer, tmp_path: Path) -> None:
    # refs/convert/parquet: <config>/<split>/0000.parquet, no card: names from the metadata
    test = cifar10_files()["plain_text/test-00000-of-00001.parquet"]
    hub.add_repo("uoft-cs/cifar10", {"plain_text/test/0000.parquet": test}, repo_type="dataset",
                 refs=("refs/convert/parquet",))
    got = read_hub_images("cifar10@refs/convert/parquet:test", cache_dir=tmp_path)
    assert got.classes == CIFAR10 and got.labels == TEST_LABELS
    # push_to_hub without a card's configs: data/<split>-*.parquet; string labels, binary images
    rows = {"image": pa.array([png(a) for a in TEST], pa.binary()),
            "label": pa.array(["one", "two", "three", "two", "one"])}
    hub.add_repo("me/digits", {"data/train-00000-of-00001.parquet": parquet(rows)},
                 repo_type="dataset")
    got = read_hub_images("hf://datasets/me/digits:train", cache_dir=tmp_path)
    assert got.classes == ["one", "three", "two"] and got.labels == [0, 2, 1, 2, 0]


def test_an_unlabelled_split_is_refused_for_training_but_read_for_prediction(
        hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    from tp_vision.image_classification import read_images

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    rows = {"image": images([png(a) for a in TEST[:3]]), "label": pa.array([-1] * 3, pa.int64())}
    hub.add_repo("me/photos", {"data/test-00000-of-00001.parquet": parquet(
        rows, {"label": ["cat", "dog"]})}, repo_type="dataset")  # as ImageNet's test split
    with pytest.raises(DataError, match=r"test-00000-of-00001.parquet:1: the image has no label"):
        read_hub_images("hf://datasets/me/photos:test")
    got = read_images("hf://datasets/me/photos:test", False)  # tp infer, or finetune's --test
    assert [e.label for e in got] == [None] * 3 and got[2].fields["image"] == png(TEST[2])


def test_a_fixed_class_list_reorders_and_rejects_unknown_classes(hub: HubServer,
                                                                 tmp_path: Path) -> None:
    order = list(reversed(CIFAR10))
    got = read_hub_images("cifar10:test", order, cache_dir=tmp_path)
    assert got.classes == order and [order[y] for y in got.labels] == \
        [CIFAR10[y] for y in TEST_LABELS]
    with pytest.raises(DataError, match="classes the model does not know: automobile"):
        read_hub_images("cifar10:test", ["airplane", "bird"], cache_dir=tmp_path)




def test_tp_preprocess_reads_a_hub_split(hub: HubServer, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          tiny_vit: Callable[..., Path]) -> None:
    from huggingface_hub import constants

    from tpcli.data.arrays import ArrayReader
    from tpcli.data.preprocess import run_preprocess
    from tpcli.plugins.requests import PreprocessRequest

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # the default cache
    tiny_vit(tmp_path / "recipe", labels=10)
    done = run_preprocess(PreprocessRequest(str(tmp_path / "recipe"), "cifar10:train",
                                            str(tmp_path / "data"), [], 2))
    store = ArrayReader(tmp_path / "data")
    assert done["examples"] == 12 and store.meta["contents"]["classes"] == CIFAR10
    np.testing.assert_array_equal(store.column("label"), TRAIN_LABELS)
    for i, a in enumerate(TRAIN):
        np.testing.assert_array_equal(store.example(i)["pixels"], fit(a, 16))


def test_a_corrupt_row_is_named_or_skipped(hub: HubServer, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    from tp_vision.image_processor import ImageProcessor, ImageProcessorConfig

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    blobs = [png(a) for a in TEST]
    blobs[2] = blobs[2][:-30]  # truncated
    hub.add_repo("uoft-cs/cifar10", {"plain_text/test-00000-of-00001.parquet": parquet(
        {"img": images(blobs), "label": pa.array(TEST_LABELS, pa.int64())}, {"label": CIFAR10}),
        "README.md": card("plain_text", {"label": CIFAR10}, ("test",))}, repo_type="dataset")
    strict = ImageProcessor(ImageProcessorConfig(size=8))
    with pytest.raises(ImageError, match=r"image hf://datasets/uoft-cs/cifar10@\w{12}/plain_text/"
                       r"test-00000-of-00001.parquet:3 is corrupt or truncated") as e:
        list(strict.records("cifar10:test", None, 2))
    assert "on_error: skip" in e.value.hint
    lenient = ImageProcessor(ImageProcessorConfig(size=8, on_error="skip"))
    kept = list(lenient.records("cifar10:test", None, 2))
    assert [int(r["label"]) for r in kept] == [0, 1, 1, 0]
    assert lenient.contents()["skipped"] == 1
    assert lenient.contents()["skipped_files"][0].startswith("hf://datasets/uoft-cs/cifar10@")


def test_image_classification_reads_and_encodes_hub_images(hub: HubServer, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    from huggingface_hub import constants

    from tp_vision.image_classification import (ImageClassificationConfig,
                                                ImageClassificationTask, read_images)
    from tp_vision.image_processor import ImageProcessorConfig

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    examples = read_images("cifar10:test", True)
    assert [e.label for e in examples] == [CIFAR10[y] for y in TEST_LABELS]
    assert examples[1].fields["path"] == examples[1].source and \
        examples[1].source.endswith("test-00000-of-00001.parquet:2")
    task = ImageClassificationTask(ImageClassificationConfig(workers=1), None)
    task.processor, task.image_size = ImageProcessorConfig(size=8), 8
    task.fit(examples)
    assert task.classes == ["airplane", "automobile", "bird"]
    rows = task.encode(examples, None, 0)
    transform = task.eval_transform()
    for row, a, y in zip(rows, TEST, TEST_LABELS):
        np.testing.assert_array_equal(row["pixel_values"].numpy(),
                                      transform(np.repeat(a[..., None], 3, -1)).numpy())
        assert task.classes[int(row["labels"])] == CIFAR10[y]
    train = task.train_dataset(examples, seed=0)
    np.testing.assert_array_equal(train.store.pixels[4], fit(np.repeat(TEST[4][..., None], 3, -1),
                                                             8))


def test_streaming_holds_one_batch_not_the_split(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_images, "BATCH_ROWS", 50)
    rng = np.random.default_rng(0)
    blobs = [rng.bytes(16_000) for _ in range(1200)]  # 19.2 MB of "images", 50 per row group
    path = tmp_path / "train.parquet"
    path.write_bytes(parquet({"img": images(blobs), "label": pa.array([0] * 1200, pa.int64())},
                             row_group=50))
    part = hub_images.Part(path, "x", 1200)
    start, peak, n = pa.total_allocated_bytes(), 0, 0
    for got, want in zip(HubBlobs([part], "img"), blobs):
        assert got == want
        n += 1
        peak = max(peak, pa.total_allocated_bytes() - start)
    # measured: 3.2 MB (a row group read and decoded); the whole file would be over 19.2 MB
    assert n == 1200 and peak < 19_200_000 / 4, peak


def test_local_files_are_never_taken_for_hub_corpora(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert is_hub_corpus("cifar10:train") and is_hub_corpus("hf://datasets/a/b:test")
    (tmp_path / "cifar10:train").mkdir()
    assert not is_hub_corpus("cifar10:train") and not is_hub_corpus(tmp_path)
    assert not is_hub_corpus("cifar1000:train") and not is_hub_corpus("train.tsv")
