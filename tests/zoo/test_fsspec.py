"""The fsspec zoo source end to end, against a real local HTTP server (`FileServer`) and a
`file://` folder: pulls in hf and tp format (the converted model computes what transformers
computes), resumes after a dropped connection and from an earlier pull's `.part`, sha256
failures that leave nothing cached, cards that would write outside the cache, `tp zoo lock`, and
offline hits and misses. Every CLI path goes through `tpcli.cli.main.main`."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import pytest
import torch
import yaml

from tpcli.cli.main import main
from tpcli.errors import TpError
from tpcli.testing.file_server import FileServer, _FileHandler
from tpcli.plugins import get_plugins
from tpcli.zoo.card import Card, read_card
from tpcli.zoo.sources import FsspecSource

if TYPE_CHECKING:
    from tests.zoo.conftest import ZooEnv

TINY_FILES = ("config.json", "model.safetensors", "vocab.txt")  # as in conftest.py
NAME = "tiny-bert"
WEIGHTS = "model.safetensors"
URL_WEIGHTS = f"/tiny-bert/{WEIGHTS}"

WriteCard = Callable[..., Path]


@pytest.fixture(autouse=True)
def fresh_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """`main` reads the process-wide plugin set, whose card folders come from TP_ZOO_CARDS at
    load time: each test's own card folder needs a fresh one. The suite runs with
    HF_HUB_OFFLINE=1, which puts every zoo source offline; these tests only talk to 127.0.0.1."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    get_plugins.cache_clear()
    yield
    get_plugins.cache_clear()


@pytest.fixture
def server(tiny_bert_hf: Path) -> Iterator[FileServer]:
    """The tiny BERT's files at http://127.0.0.1:PORT/tiny-bert/."""
    files = {f"tiny-bert/{n}": (tiny_bert_hf / n).read_bytes() for n in TINY_FILES}
    with FileServer(files) as srv:
        yield srv


@pytest.fixture
def http_card(server: FileServer, tiny_bert_hf: Path, write_card: WriteCard) -> Path:
    return write_card(NAME, server.url_for("tiny-bert"), file_entries(tiny_bert_hf, TINY_FILES))


def file_entries(folder: Path, names: tuple[str, ...], hashes: bool = True
                 ) -> list[dict[str, Any]]:
    """Card `files` entries of `folder`'s files (with their real size and sha256)."""
    out: list[dict[str, Any]] = []
    for name in names:
        data = (folder / name).read_bytes()
        out.append({"path": name, "size": len(data), "sha256": sha(data)} if hashes
                   else {"path": name})
    return out


def tp(*argv: Any) -> int:
    return main([str(a) for a in argv])


def files_dir(env: ZooEnv) -> Path:
    return env.home / "zoo" / NAME / "main" / "files"


def manifest(env: ZooEnv) -> dict[str, Any]:
    return json.loads((env.home / "zoo" / NAME / "main" / "manifest.json").read_text())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def range_starts(server: FileServer, url_path: str = URL_WEIGHTS) -> list[int]:
    """The first byte of each ranged GET of `url_path` (`bytes=N-` or `bytes=N-M`)."""
    return [int(r.removeprefix("bytes=").split("-")[0]) for p, r in server.ranges
            if p == url_path]


class _NoRangeHandler(_FileHandler):
    def route(self, method: str) -> None:
        del self.headers["Range"]  # a server that always answers 200 with the whole file
        super().route(method)


class NoRangeServer(FileServer):
    handler = _NoRangeHandler


def test_pull_hf_then_tp_matches_transformers(http_card: Path, server: FileServer,
                                              tiny_bert_hf: Path, zoo_env: ZooEnv,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    transformers = pytest.importorskip("transformers")
    assert tp("zoo", "pull", NAME, "--format", "hf", "--no-progress") == 0
    out = capsys.readouterr().out
    folder = files_dir(zoo_env)
    assert f"hf: {folder}" in out and "3 files verified" in out
    card = read_card(http_card)
    for f in card.files:
        assert sha((folder / f.path).read_bytes()) == f.sha256, f.path
        assert manifest(zoo_env)["files"][f.path]["sha256"] == f.sha256
    assert sorted(p.name for p in folder.iterdir()) == sorted(TINY_FILES)  # no .part left
    assert {n: server.count(f"/tiny-bert/{n}") for n in TINY_FILES} == dict.fromkeys(TINY_FILES, 1)

    # the default format converts the cached files: nothing is downloaded again
    assert tp("zoo", "pull", NAME, "--no-progress") == 0
    assert "all files cached" in capsys.readouterr().out
    assert server.count("", method="GET") == 3
    ckpt = zoo_env.home / "zoo" / NAME / "main" / "tp"
    assert {"model.safetensors", "recipe.yaml", "tokenizer", "checkpoint.json"} <= {
        p.name for p in ckpt.iterdir()}
    info = json.loads((ckpt / "checkpoint.json").read_text())
    assert info["converted_from"]["source"].startswith(f"zoo:{NAME} ({server.url}/tiny-bert@main")

    from tpcli.api import load_checkpoint

    loaded = load_checkpoint(ckpt)
    ref = transformers.BertForPreTraining.from_pretrained(str(folder)).eval()  # the pulled files
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, 30000, (2, 12), generator=gen)
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 8:] = 0
    segs = torch.zeros(2, 12, dtype=torch.long)
    segs[:, 6:] = 1
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, token_type_ids=segs)
        got = loaded.model.predict({"input_ids": ids, "attention_mask": mask.bool(),
                                    "segment_ids": segs})
    real = mask.bool()
    assert (got["mlm"] - want.prediction_logits)[real].abs().max() <= 1e-5
    assert (got["sp"] - want.seq_relationship_logits).abs().max() <= 1e-5


def test_resume_after_a_dropped_connection(http_card: Path, server: FileServer,
                                           tiny_bert_hf: Path, zoo_env: ZooEnv) -> None:
    data = (tiny_bert_hf / WEIGHTS).read_bytes()
    cut = 1_500_000
    server.drop_connection(URL_WEIGHTS, cut)
    assert tp("zoo", "pull", NAME, "--format", "hf", "--no-progress") == 0
    assert server.count(URL_WEIGHTS) == 2  # the dropped GET, then one that resumed
    (start,) = [s for s in range_starts(server) if s > 0]
    assert start <= cut  # what had arrived was kept, and nothing was asked for twice
    assert (files_dir(zoo_env) / WEIGHTS).read_bytes() == data


def test_a_part_left_by_an_earlier_pull_is_resumed(http_card: Path, server: FileServer,
                                                   tiny_bert_hf: Path, zoo_env: ZooEnv) -> None:
    data = (tiny_bert_hf / WEIGHTS).read_bytes()
    have = 1_000_003
    part = files_dir(zoo_env) / f"{WEIGHTS}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:have])
    assert tp("zoo", "pull", NAME, "--format", "hf", "--no-progress") == 0
    assert server.count(URL_WEIGHTS) == 1
    assert range_starts(server) == [have]  # len(data) - have bytes served, not all of them
    assert (files_dir(zoo_env) / WEIGHTS).read_bytes() == data
    assert not part.exists()


def test_a_server_that_ignores_ranges_restarts_from_zero(tiny_bert_hf: Path, zoo_env: ZooEnv,
                                                          write_card: WriteCard) -> None:
    """A 200 answer to `Range: bytes=N-` carries the whole file: appending it to the part would
    corrupt it, so the part is dropped and the file downloaded from its first byte."""
    data = (tiny_bert_hf / WEIGHTS).read_bytes()
    with NoRangeServer({f"tiny-bert/{WEIGHTS}": data}) as srv:
        write_card(NAME, srv.url_for("tiny-bert"), file_entries(tiny_bert_hf, (WEIGHTS,)))
        part = files_dir(zoo_env) / f"{WEIGHTS}.part"
        part.parent.mkdir(parents=True)
        part.write_bytes(data[:500_000])
        assert tp("zoo", "pull", NAME, "--format", "hf", "--no-progress") == 0
        assert srv.count(URL_WEIGHTS) == 2  # the refused resume, then the whole file
    assert (files_dir(zoo_env) / WEIGHTS).read_bytes() == data


@pytest.mark.parametrize("fault", ["card", "server"])
def test_sha256_mismatch_leaves_nothing(fault: str, server: FileServer, tiny_bert_hf: Path,
                                        zoo_env: ZooEnv, write_card: WriteCard,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    files = file_entries(tiny_bert_hf, TINY_FILES)
    if fault == "card":
        files[1]["sha256"] = sha(b"not the weights")
    else:
        server.corrupt(URL_WEIGHTS)  # same size, one byte flipped
    write_card(NAME, server.url_for("tiny-bert"), files)
    assert tp("zoo", "pull", NAME, "--format", "hf", "--no-progress") == 1
    err = capsys.readouterr().err
    assert f"sha256 mismatch for {WEIGHTS} of {NAME}" in err and "Traceback" not in err
    folder = files_dir(zoo_env)
    assert not (folder / WEIGHTS).exists() and not (folder / f"{WEIGHTS}.part").exists()
    assert WEIGHTS not in manifest(zoo_env).get("files", {})
    if fault == "server":  # the server is fixed: the next pull fetches only what failed
        server.clear_faults()
        assert tp("zoo", "pull", NAME, "--format", "hf", "--no-progress") == 0
        assert (folder / WEIGHTS).read_bytes() == (tiny_bert_hf / WEIGHTS).read_bytes()
        assert server.count(URL_WEIGHTS) == 2 and server.count("/tiny-bert/config.json") == 1


@pytest.mark.parametrize("bad", ["../../evil", "/tmp/tp-zoo-evil"])
def test_a_path_outside_the_model_folder_is_refused(bad: str, server: FileServer,
                                                    zoo_env: ZooEnv, write_card: WriteCard,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    card = write_card(NAME, server.url_for("tiny-bert"), [{"path": "config.json"}, {"path": bad}])
    with pytest.raises(TpError, match="leaves the model folder"):
        read_card(card)
    assert tp("zoo", "list") == 0  # the other cards still list; this one is named and skipped
    err = capsys.readouterr().err
    assert str(card) in err and "files.1.path" in err and "leaves the model folder" in err
    assert tp("zoo", "pull", NAME, "--no-progress") == 1
    assert f"zoo model '{NAME}' cannot be used" in capsys.readouterr().err
    assert not zoo_env.home.exists() and server.count("", method=None) == 0
    assert not (zoo_env.home.parent / "evil").exists() and not Path(bad).exists()


@pytest.mark.parametrize("fault", ["missing", "refused", "corrupt"])
def test_a_failed_pull_leaves_nothing(fault: str, server: FileServer, tiny_bert_hf: Path,
                                      zoo_env: ZooEnv, write_card: WriteCard,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A pull that fails before any file is verified leaves no folder and no lock file in
    TP_HOME (a resumable `.part` is the one thing a failed pull may keep)."""
    files = file_entries(tiny_bert_hf, TINY_FILES)
    if fault == "missing":
        files.append({"path": "tokenizer.json"})  # the server has no such file
    elif fault == "refused":
        server.require_token("s3cret")
    else:
        files = [f for f in files if f["path"] == WEIGHTS]
        server.corrupt(URL_WEIGHTS)
    write_card(NAME, server.url_for("tiny-bert"), files)
    assert tp("zoo", "pull", NAME, "--format", "hf", "--no-progress") == 1
    assert "error: " in capsys.readouterr().err
    assert not (zoo_env.home / "zoo" / NAME).exists()
    assert [p for p in zoo_env.home.rglob("*")] == []
    if fault == "corrupt":  # and the next pull is not disturbed by the cleanup
        server.clear_faults()
        assert tp("zoo", "pull", NAME, "--format", "hf", "--no-progress") == 0
        assert (files_dir(zoo_env) / WEIGHTS).is_file()
        assert (zoo_env.home / "zoo" / NAME / ".lock").exists()  # kept beside the pulled model


def test_rm_leaves_nothing(http_card: Path, zoo_env: ZooEnv) -> None:
    assert tp("zoo", "pull", NAME, "--format", "hf", "--no-progress") == 0
    assert tp("zoo", "rm", NAME) == 0
    assert not (zoo_env.home / "zoo").exists()


def test_fetch_refuses_a_card_built_without_validation(tmp_path: Path) -> None:
    """Defence in depth: a plugin handing FsspecSource an unvalidated card cannot make it write
    outside the cache folder."""
    card = Card.model_construct(name="x", source=f"file://{tmp_path}", revision="main",
                                files=())
    (tmp_path / "evil").write_bytes(b"x")
    with pytest.raises(TpError, match="leaves the model folder"):
        FsspecSource(card).fetch("../../evil", "main", tmp_path / "cache", lambda n: None,
                                 lambda p, k: None)
    assert not (tmp_path / "cache").exists()


def test_lock_writes_sizes_and_hashes(server: FileServer, tiny_bert_hf: Path, zoo_env: ZooEnv,
                                      write_card: WriteCard,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    card = write_card(NAME, server.url_for("tiny-bert"),
                      file_entries(tiny_bert_hf, TINY_FILES, hashes=False))
    assert tp("zoo", "lock", NAME) == 0
    assert f"locked {NAME} at main: 3 files" in capsys.readouterr().out
    raw = yaml.safe_load(card.read_text())
    assert raw["revision"] == "main"
    want = [{"path": n, "size": len((tiny_bert_hf / n).read_bytes()),
             "sha256": sha((tiny_bert_hf / n).read_bytes())} for n in TINY_FILES]
    assert raw["files"] == want
    assert read_card(card).files[1].sha256 == want[1]["sha256"]
    assert tp("zoo", "info", NAME) == 0
    assert not (zoo_env.home / "zoo" / NAME / "main").exists()  # lock hashed in a temp folder


@pytest.mark.parametrize("var", ["TP_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_hit_and_miss(var: str, http_card: Path, server: FileServer, zoo_env: ZooEnv,
                              monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    assert tp("zoo", "pull", NAME, "--format", "hf", "--no-progress") == 0
    capsys.readouterr()
    server.requests.clear()
    monkeypatch.setenv(var, "1")
    assert tp("zoo", "pull", NAME, "--format", "hf", "--no-progress") == 0
    assert f"hf: {files_dir(zoo_env)}" in capsys.readouterr().out
    assert server.count("", method=None) == 0

    monkeypatch.setenv("TP_HOME", str(zoo_env.home.parent / "empty-home"))
    assert tp("zoo", "pull", NAME, "--format", "hf", "--no-progress") == 1
    err = capsys.readouterr().err
    assert f"offline ({var} is set) and {NAME}@main is not fully cached" in err
    for name in TINY_FILES:
        assert name in err
    assert f"go online and run `tp zoo pull {NAME}`, or unset {var}" in err
    assert server.count("", method=None) == 0


def test_file_url_source_and_its_part(tiny_bert_hf: Path, zoo_env: ZooEnv,
                                      write_card: WriteCard) -> None:
    write_card(NAME, tiny_bert_hf.as_uri(), file_entries(tiny_bert_hf, TINY_FILES))
    data = (tiny_bert_hf / WEIGHTS).read_bytes()
    part = files_dir(zoo_env) / f"{WEIGHTS}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(data[:777_777])
    assert tp("zoo", "pull", NAME, "--format", "hf", "--no-progress") == 0
    for name in TINY_FILES:
        assert (files_dir(zoo_env) / name).read_bytes() == (tiny_bert_hf / name).read_bytes()
    assert not part.exists()


def test_a_missing_remote_file_is_named(server: FileServer, tiny_bert_hf: Path,
                                        zoo_env: ZooEnv, write_card: WriteCard,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    files = [*file_entries(tiny_bert_hf, TINY_FILES), {"path": "tokenizer.json"}]
    write_card(NAME, server.url_for("tiny-bert"), files)
    assert tp("zoo", "pull", NAME, "--no-progress") == 1
    err = capsys.readouterr().err
    assert f"{server.url}/tiny-bert/tokenizer.json does not exist" in err
    assert not (files_dir(zoo_env) / "config.json").exists()  # checked before any download


def test_a_file_gone_during_the_pull_fails_at_once(server: FileServer, tmp_path: Path) -> None:
    """A 404 is not a dropped connection: no retries, no waiting, no part left."""
    card = Card.model_construct(name=NAME, source=server.url_for("tiny-bert"), revision="main",
                                files=())
    with pytest.raises(TpError, match=r"/tiny-bert/gone.bin does not exist \(listed in the "
                                      r"card of tiny-bert\)"):
        FsspecSource(card).fetch("gone.bin", "main", tmp_path, lambda n: None, lambda p, k: None)
    # fsspec's one size probe (HEAD, then GET), not RETRIES more of them
    assert server.count("/tiny-bert/gone.bin", method=None) <= 2
    assert list((tmp_path / "files").iterdir()) == []


def test_a_refused_download_fails_at_once(server: FileServer, tmp_path: Path) -> None:
    """401 is not a missing file, nor a dropped connection: said as it is, after one probe."""
    card = Card.model_construct(name=NAME, source=server.url_for("tiny-bert"), revision="main",
                                files=())
    server.require_token("s3cret")
    with pytest.raises(TpError, match=rf"/tiny-bert/{WEIGHTS} refused access \(401\)"):
        FsspecSource(card).fetch(WEIGHTS, "main", tmp_path, lambda n: None, lambda p, k: None)
    with pytest.raises(TpError, match=r"/tiny-bert/config.json refused access \(401\)"):
        FsspecSource(card).describe("main", ["config.json"])
    assert server.count(URL_WEIGHTS, method=None) <= 2  # one probe (HEAD, GET), no retries
