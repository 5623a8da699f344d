"""The image-text corpus readers: TSV, JSONL and WebDataset shards give the same pairs; shard
patterns; a cut-off shard and every malformed line are DataErrors naming where."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from tp_multimodal.testing import CAPTIONS, write_corpus, write_tar
from tp_multimodal.pairs import read_pairs
from tpcli.errors import DataError


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_corpus(tmp_path_factory.mktemp("pairs"))


def image_bytes(pair) -> bytes:  # type: ignore[no-untyped-def]
    return pair.image if isinstance(pair.image, bytes) else Path(pair.image).read_bytes()


def test_three_layouts_give_the_same_pairs(corpus: dict[str, Path]) -> None:
    read = {k: list(read_pairs(p)) for k, p in corpus.items()}
    for layout, pairs in read.items():
        assert [p.text for p in pairs] == CAPTIONS, layout
    files = [image_bytes(p) for p in read["tsv"]]
    assert [image_bytes(p) for p in read["jsonl"]] == files
    assert [image_bytes(p) for p in read["shards"]] == files  # .json sidecars ignored
    assert read["tsv"][0].source == f"{corpus['tsv']}:2"  # line 1 is the header
    assert read["jsonl"][1].source == f"{corpus['jsonl']}:2"
    assert read["shards"][3].source == f"{corpus['shards'] / '00001.tar'}:000010003.png"


def test_shard_patterns(corpus: dict[str, Path]) -> None:
    shards = corpus["shards"]
    one = [p.text for p in read_pairs(shards / "00001.tar")]
    assert one == CAPTIONS[3:]
    for pattern in (f"{shards}/{{00000..00001}}.tar", f"{shards}/*.tar",
                    f"{shards}/{{00000,00001}}.tar", f"{shards}/0000[01].tar"):
        assert [p.text for p in read_pairs(pattern)] == CAPTIONS, pattern
    assert [p.text for p in read_pairs(f"{shards}/{{00001,00000}}.tar")] == CAPTIONS[3:] + \
        CAPTIONS[:3]  # braces keep their order
    with pytest.raises(DataError, match=r"shard .*00002.tar \(of the pattern .*\) does not exist"):
        list(read_pairs(f"{shards}/{{00000..00002}}.tar"))
    with pytest.raises(DataError, match="matches no shard"):
        list(read_pairs(f"{shards}/*.tgz"))


def test_a_corpus_on_another_filesystem(corpus: dict[str, Path]) -> None:
    """fsspec URLs (memory:// standing in for s3:// or https://): shards by pattern and a
    JSONL whose images are fetched as bytes; the same pairs as on disk."""
    import fsspec

    fs = fsspec.filesystem("memory")
    root = corpus["tsv"].parent
    for file in [*root.glob("img/*"), *root.glob("shards/*.tar"), root / "pairs.jsonl"]:
        fs.pipe(f"/captions/{file.relative_to(root)}", file.read_bytes())
    try:
        files = [image_bytes(p) for p in read_pairs(corpus["tsv"])]
        for url in ("memory://captions/shards/{00000..00001}.tar", "memory://captions/shards",
                    "memory://captions/pairs.jsonl"):
            pairs = list(read_pairs(url))
            assert [p.text for p in pairs] == CAPTIONS, url
            assert [p.image for p in pairs] == files, url
        assert pairs[1].source == "memory:///captions/pairs.jsonl:2"  # fsspec's spelling
        fs.rm("/captions/img/4.jpg")
        with pytest.raises(DataError, match=r"pairs.jsonl:5: image img/4.jpg does not exist "
                           r"\(looked at memory:///captions/img/4.jpg\)"):
            list(read_pairs("memory://captions/pairs.jsonl"))
        shard = fs.cat_file("/captions/shards/00001.tar")
        fs.pipe("/captions/shards/00001.tar", shard[:1500])
        with pytest.raises(DataError, match=r"shard memory:///captions/shards/00001.tar is cut"):
            list(read_pairs("memory://captions/shards/*.tar"))
    finally:
        fs.rm("/captions", recursive=True)


def test_folder_of_shards_skips_metadata_only_samples(tmp_path: Path) -> None:
    """WebDataset's keys: a sample of only a .json is skipped; `b.seg.png` is field `seg.png`
    of sample `b` (the extension starts at the first dot), not its image."""
    write_tar(tmp_path / "00000.tar", [("a/0.jpg", b"JPEG"), ("a/0.txt", b" a dog "),
                                       ("a/0.json", b"{}"), ("a/1.json", b"{}"),
                                       ("b.png", b"PNG"), ("b.seg.png", b"MASK"),
                                       ("b.txt", b"x.y")])
    (tmp_path / "_stats.json").write_text("{}")  # img2dataset writes these beside the shards
    pairs = list(read_pairs(tmp_path))
    assert [(p.text, p.image, p.source.rsplit(":", 1)[1]) for p in pairs] == [
        ("a dog", b"JPEG", "a/0.jpg"), ("x.y", b"PNG", "b.png")]


@pytest.mark.parametrize("cut", ["in a member", "in a header", "between members"])
def test_cut_off_shard_is_refused(tmp_path: Path, cut: str) -> None:
    write_tar(tmp_path / "whole.tar", [("0.jpg", b"J" * 700), ("0.txt", b"a cat"),
                                       ("1.jpg", b"J" * 300), ("1.txt", b"a dog")])
    data = (tmp_path / "whole.tar").read_bytes()
    with tarfile.open(tmp_path / "whole.tar") as tar:
        last = tar.getmembers()[-1]
    where = {"in a member": last.offset_data + 2,  # inside 1.txt's data
             "in a header": last.offset + 100,
             "between members": last.offset}  # 1.txt and the end blocks gone
    (tmp_path / "cut.tar").write_bytes(data[:where[cut]])
    with pytest.raises(DataError, match=r"cut.tar is cut off \(truncated\)") as e:
        list(read_pairs(tmp_path / "cut.tar"))
    assert "re-download or re-write the shard" in str(e.value.hint)


def test_a_sample_without_its_caption(tmp_path: Path) -> None:
    write_tar(tmp_path / "s.tar", [("7.jpg", b"J"), ("7.json", b"{}")])
    with pytest.raises(DataError, match=r"s.tar:7: the sample has no caption \(.txt\)"):
        list(read_pairs(tmp_path / "s.tar"))
    write_tar(tmp_path / "e.tar", [("7.jpg", b"J"), ("7.txt", b"  \n")])
    with pytest.raises(DataError, match=r"e.tar:7.txt: the caption is empty"):
        list(read_pairs(tmp_path / "e.tar"))


BAD = {
    "no tab": ("pairs.tsv", "a cat\timg.png\na dog img.png\n",
               r"pairs.tsv:2 is not `text<TAB>path`: it has no tab"),
    "empty caption": ("pairs.tsv", "a cat\timg.png\n \timg.png\n", r"pairs.tsv:2: the caption is "
                      "empty"),
    "missing image": ("pairs.tsv", "a cat\tnot/there.png\n",
                      r"pairs.tsv:1: image not/there.png does not exist \(looked at .*\)"),
    "not json": ("pairs.jsonl", '{"image": "img.png", "text": "a"}\n{"image": img.png}\n',
                 r"pairs.jsonl:2 is not JSON: Expecting value \(column 11\)"),
    "no key": ("pairs.jsonl", '{"img": "img.png", "text": "a"}\n',
               r"pairs.jsonl:1 has no `image` or `image_path` key \(it has img, text\)"),
    "not an object": ("pairs.jsonl", '["img.png", "a"]\n', r"pairs.jsonl:1 is a JSON list"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_lines_name_their_line(tmp_path: Path, case: str) -> None:
    name, text, message = BAD[case]
    (tmp_path / "img.png").write_bytes(b"not read here")
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=message) as e:
        list(read_pairs(tmp_path / name))
    assert e.value.hint


def test_unknown_layouts(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        list(read_pairs(tmp_path / "none.tsv"))
    (tmp_path / "pairs.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="cannot tell its layout from the extension .csv"):
        list(read_pairs(tmp_path / "pairs.csv"))
    with pytest.raises(DataError, match="holds no .tar shards"):
        list(read_pairs(tmp_path))
