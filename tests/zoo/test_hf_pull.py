"""`tp zoo pull` from a real local Hugging Face Hub (`tpcli.testing.hub_server.HubServer`), downloaded by
`huggingface_hub` itself: the shipped all-MiniLM-L6-v2 card end to end (hashes, HF cache reuse,
conversion whose hidden states equal transformers'), resume after a dropped connection, a
checksum mismatch, two concurrent pulls, offline hit and miss, tokens, verify / rm / path / lock,
and `tp finetune --init zoo:NAME`."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
import yaml

from tpcli.cli.main import main
from tpcli.errors import TpError
from tpcli.testing.hub_server import HubServer
from tpcli.zoo import ZooRequest, cache, zoo

from .conftest import TINY_FILES, ZooEnv, file_entries

transformers = pytest.importorskip("transformers")
REPO = "org/tiny-bert"


def pull(name: str, **kwargs: Any) -> dict[str, Any]:
    return zoo(ZooRequest("pull", name=name, progress=False, **kwargs))


@pytest.fixture
def hub() -> Any:
    with HubServer() as server, server.activate():
        yield server


@pytest.fixture
def tiny(hub: HubServer, tiny_bert_hf: Path, write_card: Callable[..., Path]) -> str:
    """A card `tiny` pinned to the commit the server holds, with every file's sha256."""
    sha = hub.add_folder(REPO, tiny_bert_hf)
    write_card("tiny", f"hf://{REPO}", file_entries(tiny_bert_hf, TINY_FILES), revision=sha)
    return sha


def test_shipped_minilm_card_pulls_verifies_and_converts(hub: HubServer, zoo_env: ZooEnv,
                                                         minilm: Path) -> None:
    """The real card and the real files: every sha256 the card pins matches, the files land in
    the Hugging Face cache (shared with transformers), and the tp checkpoint made on the way in
    gives transformers' hidden states."""
    from tpcli.api import load_checkpoint
    from tpcli.zoo.ops import catalog
    from tpcli.plugins import get_plugins

    card = catalog(get_plugins()).find("all-minilm-l6-v2")
    hub.add_folder("sentence-transformers/all-MiniLM-L6-v2", minilm, sha=card.revision)
    result = pull("all-minilm-l6-v2")
    assert result["format"] == "tp" and result["downloaded"] == result["bytes"]
    snapshot = zoo_env.hf_cache / "models--sentence-transformers--all-MiniLM-L6-v2" / \
        "snapshots" / card.revision
    for f in card.files:
        assert hashlib.sha256((snapshot / f.path).read_bytes()).hexdigest() == f.sha256
    loaded = load_checkpoint(Path(result["path"]))
    ref = transformers.BertModel.from_pretrained(str(snapshot)).eval()
    tok = transformers.AutoTokenizer.from_pretrained(str(snapshot))
    enc = tok(["a zoo that users can trust", "pulled, verified, converted"], padding=True,
              return_tensors="pt")
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"].bool(),
             "segment_ids": enc["token_type_ids"]}
    with torch.no_grad():
        mine = loaded.model.features(batch).hidden
        theirs = ref(**enc).last_hidden_state
    real = batch["attention_mask"]
    assert (mine - theirs)[real].abs().max() <= 1e-5
    info = json.loads((Path(result["path"]) / "checkpoint.json").read_text())
    assert info["converted_from"]["source"].startswith("zoo:all-minilm-l6-v2 (hf://")
    # `--format hf` is the snapshot folder itself; nothing is fetched again
    gets = hub.count("", "GET")
    again = pull("all-minilm-l6-v2", format="hf")
    assert Path(again["path"]) == snapshot and again["downloaded"] == 0
    assert hub.count("", "GET") == gets


def test_second_pull_makes_no_request(hub: HubServer, tiny: str) -> None:
    first = pull("tiny")
    assert first["commit"] == tiny and first["downloaded"] == first["bytes"]
    for name in TINY_FILES:
        assert hub.count(f"/resolve/{tiny}/{name}", "GET") == 1
    before = sum(hub.requests.values())
    second = pull("tiny")
    assert second["downloaded"] == 0 and second["path"] == first["path"]
    assert sum(hub.requests.values()) == before  # a pinned, complete pull needs no network


def test_resume_after_the_connection_drops(hub: HubServer, tiny: str, tiny_bert_hf: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 64 * 1024)  # the drop lands mid-file
    hub.drop_connection("model.safetensors", after_bytes=1_000_000)
    result = pull("tiny", format="hf")
    local = Path(result["path"]) / "model.safetensors"
    assert local.read_bytes() == (tiny_bert_hf / "model.safetensors").read_bytes()
    resumed = [r for p, r in hub.ranges if p.endswith("model.safetensors") and r]
    assert resumed and int(resumed[0].split("=")[1].split("-")[0]) > 0


def test_checksum_mismatch_leaves_nothing(hub: HubServer, tiny: str, zoo_env: ZooEnv,
                                          tiny_bert_hf: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    hub.corrupt("model.safetensors")
    assert main(["zoo", "pull", "tiny", "--no-progress", "--format", "hf"]) == 1
    err = capsys.readouterr().err
    assert "sha256 mismatch for model.safetensors of tiny" in err and "Traceback" not in err
    blobs = [b.name for b in zoo_env.blobs(REPO)]
    weights = (Path(os.environ["HF_HUB_CACHE"]) / f"models--{REPO.replace('/', '--')}" /
               "snapshots" / tiny / "model.safetensors")
    assert not weights.exists() and not any(b.endswith((".incomplete", ".tp-part")) for b in blobs)
    digest = hashlib.sha256((tiny_bert_hf / "model.safetensors").read_bytes()).hexdigest()
    assert digest not in blobs  # the corrupt bytes never became the blob
    manifest = json.loads((zoo_env.home / "zoo" / "tiny" / tiny / "manifest.json").read_text())
    assert "model.safetensors" not in manifest["files"]
    hub.clear_faults()
    assert pull("tiny", format="hf")["downloaded"] > 0  # the next pull fetches it cleanly


def test_two_concurrent_pulls(hub: HubServer, tiny: str, zoo_env: ZooEnv) -> None:
    """Two `tp zoo pull` processes at once: both succeed, each file is downloaded once."""
    cmd = [sys.executable, "-m", "tpcli.cli.main", "zoo", "pull", "tiny", "--no-progress",
           "--format", "hf"]
    env = zoo_env.env(HF_ENDPOINT=hub.url, HF_HUB_OFFLINE="0")
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    for name in TINY_FILES:
        assert hub.count(f"/resolve/{tiny}/{name}", "GET") == 1, name
    assert sum("all files cached" in out for out, _ in outs) == 1


def test_offline_hit_and_miss(hub: HubServer, tiny: str, zoo_env: ZooEnv,
                              monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("TP_OFFLINE", "1")
    assert main(["zoo", "pull", "tiny", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "offline (TP_OFFLINE is set) and tiny@" in err
    assert "missing config.json" in err and "tp zoo pull tiny" in err
    assert sum(hub.requests.values()) == 0
    monkeypatch.delenv("TP_OFFLINE")
    path = pull("tiny")["path"]
    before = sum(hub.requests.values())
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert pull("tiny")["path"] == path
    assert sum(hub.requests.values()) == before


def test_offline_branch_card_uses_the_resolved_ref(hub: HubServer, tiny_bert_hf: Path,
                                                   write_card: Callable[..., Path],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    hub.add_folder(REPO, tiny_bert_hf)
    write_card("branchy", f"hf://{REPO}", file_entries(tiny_bert_hf, TINY_FILES, hashes=False))
    online = pull("branchy", format="hf")
    monkeypatch.setenv("TP_OFFLINE", "1")
    assert pull("branchy", format="hf")["path"] == online["path"]


def test_token_is_sent_and_never_printed(hub: HubServer, tiny: str, zoo_env: ZooEnv,
                                         monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    secret = "hf_zoo_secret_token_0123456789"
    monkeypatch.setenv("TP_DEBUG", "0")  # --debug sets it; undone after the test
    hub.require_token(REPO, secret)
    assert main(["--debug", "zoo", "pull", "tiny", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "refused access" in err and "HF_TOKEN" in err
    monkeypatch.setenv("HF_TOKEN", "hf_wrong_token_9876543210")
    assert main(["--debug", "zoo", "pull", "tiny", "--no-progress"]) == 1
    captured = capsys.readouterr()
    assert "hf_wrong_token_9876543210" not in captured.out + captured.err
    monkeypatch.setenv("HF_TOKEN", secret)
    assert main(["--debug", "zoo", "pull", "tiny", "--no-progress"]) == 0
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err
    assert f"Bearer {secret}" in hub.auth_seen
    for path in (zoo_env.home).rglob("*"):  # nor written into tp's cache
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path


def test_verify_deletes_a_damaged_file_and_pull_repairs_it(
        hub: HubServer, tiny: str, capsys: pytest.CaptureFixture[str]) -> None:
    pull("tiny")
    vocab = Path(zoo(ZooRequest("path", name="tiny", format="hf"))["path"]) / "vocab.txt"
    real = vocab.resolve()
    real.chmod(0o644)
    real.write_bytes(real.read_bytes().replace(b"[CLS]", b"[XLS]"))
    assert main(["zoo", "verify", "tiny"]) == 1
    err = capsys.readouterr().err
    assert "vocab.txt: sha256" in err and "tp zoo pull" in err
    assert not vocab.exists()
    assert main(["zoo", "verify", "tiny"]) == 0  # what is left is sound
    again = pull("tiny")
    assert again["downloaded"] == vocab.stat().st_size  # only the deleted file came again
    assert vocab.is_file() and hub.count(f"/resolve/{tiny}/vocab.txt", "GET") == 2


def test_path_info_and_rm(hub: HubServer, tiny: str, zoo_env: ZooEnv,
                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["zoo", "path", "tiny"]) == 1
    assert "tiny is not pulled" in capsys.readouterr().err
    result = pull("tiny")
    assert main(["zoo", "path", "tiny"]) == 0
    assert capsys.readouterr().out.strip() == result["path"]
    assert main(["zoo", "info", "tiny"]) == 0
    out = capsys.readouterr().out
    assert f"cached: {tiny} (complete" in out and result["path"] in out
    assert main(["zoo", "rm", "tiny", "--hf-cache"]) == 0
    assert "freed" in capsys.readouterr().out
    assert not (zoo_env.home / "zoo" / "tiny" / tiny).exists()
    assert not zoo_env.blobs(REPO)
    assert main(["zoo", "path", "tiny"]) == 1


def test_lock_pins_the_commit_and_hashes(hub: HubServer, tiny_bert_hf: Path,
                                         write_card: Callable[..., Path]) -> None:
    sha = hub.add_folder(REPO, tiny_bert_hf)
    card = write_card("unpinned", f"hf://{REPO}",
                      file_entries(tiny_bert_hf, TINY_FILES, hashes=False))
    assert main(["zoo", "lock", "unpinned"]) == 0
    locked = yaml.safe_load(card.read_text())
    assert locked["revision"] == sha
    assert locked["files"] == file_entries(tiny_bert_hf, TINY_FILES)
    assert pull("unpinned", format="hf")["commit"] == sha


def test_unknown_file_in_card_and_unknown_revision(hub: HubServer, tiny: str, tiny_bert_hf: Path,
                                                   write_card: Callable[..., Path]) -> None:
    write_card("typo", f"hf://{REPO}", [{"path": "config.json"}, {"path": "model.safetensor"}])
    with pytest.raises(TpError, match="has no model.safetensor"):
        pull("typo")
    assert not (cache.tp_home() / "zoo" / "typo").exists()  # no folder, no lock file left
    with pytest.raises(TpError, match="has no revision 'v9'"):
        pull("tiny", revision="v9")


def test_finetune_init_from_the_zoo(hub: HubServer, tiny: str, tmp_path: Path) -> None:
    """`--init zoo:NAME` pulls, converts and initialises: the body is the card's weights, only
    the new head starts fresh."""
    from tpcli.downstream.finetune import FinetuneRequest
    from tpcli.downstream.tasks import TaskData
    from tpcli.verbs import finetune

    train, dev = tmp_path / "train.tsv", tmp_path / "dev.tsv"
    rows = "".join(f"{'pos' if i % 2 else 'neg'}\tsentence number {i} is here\n"
                   for i in range(16))
    train.write_text("label\ttext\n" + rows)
    dev.write_text("label\ttext\n" + rows[:200])
    result = finetune(FinetuneRequest(None, "classification", tmp_path / "ft",
                                      TaskData(str(train), [str(dev)]), "zoo:tiny",
                                      ["finetune.steps=2", "finetune.batch_size=8",
                                       "finetune.max_length=32"],
                                      progress=False))
    report = json.loads((tmp_path / "ft" / "init.json").read_text())
    ckpt = Path(pull("tiny")["path"])
    assert report["checkpoint"] == str(ckpt)
    assert report["fresh"] and all(k.startswith("targets.cls.") for k in report["fresh"])
    assert result["dev"]
    # a recipe plus zoo weights: the recipe's hyperparameters, the checkpoint's tokenizer
    shape = ["model.hidden_size=32", "model.encoder.ffn_size=64",
             "model.embedding.pos.max_length=64", "finetune.steps=2", "finetune.batch_size=8",
             "finetune.max_length=32"]
    finetune(FinetuneRequest("bert-tiny", "classification", tmp_path / "ft2",
                             TaskData(str(train), [str(dev)]), "zoo:tiny", shape,
                             progress=False))
    saved = yaml.safe_load((tmp_path / "ft2" / "recipe.yaml").read_text())
    assert saved["data"]["tokenizer"]["vocab"] == str(ckpt / "tokenizer" / "vocab.txt")
    assert saved["pretrain"]["lr"] == 2.0e-3  # the recipe's own sections are kept


class _Exploit:
    """A pickle that would create a file if it were unpickled with code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "pwned"))


def test_pickle_only_checkpoints_load_weights_only(hub: HubServer, tiny_bert_hf: Path,
                                                   tmp_path: Path,
                                                   write_card: Callable[..., Path]) -> None:
    """A card whose weights are only pytorch_model.bin converts (tensors only); a pickle that
    carries code is refused and its code never runs."""
    from safetensors.torch import load_file

    from tpcli.api import load_checkpoint

    state = load_file(str(tiny_bert_hf / "model.safetensors"))
    files = {"config.json": (tiny_bert_hf / "config.json").read_bytes(),
             "vocab.txt": (tiny_bert_hf / "vocab.txt").read_bytes()}
    buf = tmp_path / "pytorch_model.bin"
    torch.save(state, buf)
    hub.add_repo("org/bin-bert", {**files, "pytorch_model.bin": buf.read_bytes()})
    names = [{"path": p} for p in ("config.json", "pytorch_model.bin", "vocab.txt")]
    write_card("bin-bert", "hf://org/bin-bert", names)
    loaded = load_checkpoint(Path(pull("bin-bert")["path"]))
    word = loaded.model.state_dict()["stack.embedding.parts.word.embedding.weight"]
    assert torch.equal(word, state["bert.embeddings.word_embeddings.weight"])

    marker = tmp_path / "marker"
    torch.save({"bert.embeddings.word_embeddings.weight": _Exploit(marker)}, buf)
    hub.add_repo("org/evil-bert", {**files, "pytorch_model.bin": buf.read_bytes()})
    write_card("evil-bert", "hf://org/evil-bert", names)
    with pytest.raises(TpError, match="weights_only=True"):
        pull("evil-bert")
    assert not marker.exists()


def test_another_revision_is_checked_against_the_hub(hub: HubServer, tiny: str,
                                                     tiny_bert_hf: Path) -> None:
    """`--revision` other than the card's: the card's hashes describe its own commit, so the
    newer commit's files are checked against the Hub's hashes (and cached apart)."""
    files = {p: (tiny_bert_hf / p).read_bytes() for p in TINY_FILES}
    newer = hub.add_repo(REPO, {**files, "vocab.txt": files["vocab.txt"] + b"[NEW]\n"})
    result = pull("tiny", revision="main", format="hf")
    assert result["commit"] == newer != tiny
    assert (Path(result["path"]) / "vocab.txt").read_bytes().endswith(b"[NEW]\n")
    assert pull("tiny", format="hf")["commit"] == tiny  # the card's own commit is unaffected


def test_an_interrupted_pull_resumes_from_its_part(hub: HubServer, tiny: str, tiny_bert_hf: Path,
                                                   zoo_env: ZooEnv) -> None:
    """A pull killed mid-file leaves `blobs/<sha256>.tp-part`; the next one asks for the rest
    only, and the blob appears once the whole file hashes right."""
    data = (tiny_bert_hf / "model.safetensors").read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    blobs = zoo_env.hf_cache / f"models--{REPO.replace('/', '--')}" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / f"{digest}.tp-part").write_bytes(data[:1_000_003])
    result = pull("tiny", format="hf")
    assert result["downloaded"] == result["bytes"]  # progress counts the part's bytes too
    assert [r for p, r in hub.ranges if p.endswith("model.safetensors")] == ["bytes=1000003-"]
    assert hub.count(f"/resolve/{tiny}/model.safetensors", "GET") == 1
    assert (blobs / digest).read_bytes() == data and not (blobs / f"{digest}.tp-part").exists()
