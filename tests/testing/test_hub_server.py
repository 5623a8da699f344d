"""The fake Hub answers `huggingface_hub` itself: downloads, snapshots, ranges, resume, errors."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub as hh
import pytest
from huggingface_hub import constants
from huggingface_hub.errors import (EntryNotFoundError, GatedRepoError, HfHubHTTPError,
                                    RepositoryNotFoundError, RevisionNotFoundError)

from tpcli.testing.hub_server import HubServer

WEIGHTS = bytes(range(256)) * 40  # 10240 bytes, an LFS file by its suffix
CONFIG = '{"hidden_size": 8}'
PARQUET = b"PAR1" + bytes(range(200)) * 10 + b"PAR1"


@pytest.fixture
def hub() -> Iterator[HubServer]:
    server = HubServer({
        "org/tiny-model": {"config.json": CONFIG, "model.safetensors": WEIGHTS},
        "datasets/org/tiny-data": {"cola/train-00000-of-00001.parquet": PARQUET,
                                   "README.md": "# tiny"},
    })
    with server, server.activate():
        yield server


def test_download_model_file_records_commit(hub: HubServer, tmp_path: Path) -> None:
    commit = hub.add_repo("org/tiny-model", {"config.json": CONFIG, "model.safetensors": WEIGHTS})
    path = Path(hh.hf_hub_download("org/tiny-model", "model.safetensors", cache_dir=tmp_path))
    assert path.read_bytes() == WEIGHTS
    assert path.parent.name == commit  # snapshots/<X-Repo-Commit>/model.safetensors
    assert (tmp_path / "models--org--tiny-model" / "refs" / "main").read_text() == commit


def test_download_dataset_file_and_snapshot(hub: HubServer, tmp_path: Path) -> None:
    name = "cola/train-00000-of-00001.parquet"
    path = hh.hf_hub_download("org/tiny-data", name, repo_type="dataset", cache_dir=tmp_path)
    assert Path(path).read_bytes() == PARQUET
    folder = Path(hh.snapshot_download("org/tiny-data", repo_type="dataset", cache_dir=tmp_path))
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert files == ["README.md", name]
    assert sorted(hh.list_repo_files("org/tiny-data", repo_type="dataset")) == files


def test_pinned_revision_keeps_old_content(hub: HubServer, tmp_path: Path) -> None:
    old = hub.add_repo("org/tiny-model", {"config.json": '{"v": 1}'})
    new = hub.add_repo("org/tiny-model", {"config.json": '{"v": 2}'})
    assert old != new
    pinned = hh.hf_hub_download("org/tiny-model", "config.json", revision=old, cache_dir=tmp_path)
    latest = hh.hf_hub_download("org/tiny-model", "config.json", cache_dir=tmp_path)
    assert Path(pinned).read_text() == '{"v": 1}' and Path(latest).read_text() == '{"v": 2}'


def test_head_headers_and_range_requests(hub: HubServer) -> None:
    url = "/org/tiny-model/resolve/main/model.safetensors"
    status, headers, body = hub.raw("HEAD", url)
    sha = hashlib.sha256(WEIGHTS).hexdigest()
    assert status == 200 and body == b""
    assert headers["x-linked-etag"] == f'"{sha}"' and headers["x-linked-size"] == "10240"
    assert headers["content-length"] == "10240" and len(headers["x-repo-commit"]) == 40
    status, headers, body = hub.raw("GET", url, {"Range": "bytes=100-199"})
    assert (status, body) == (206, WEIGHTS[100:200])
    assert headers["content-range"] == "bytes 100-199/10240"
    assert hub.raw("GET", url, {"Range": "bytes=-10"})[2] == WEIGHTS[-10:]
    assert hub.raw("GET", url, {"Range": "bytes=10240-"})[0] == 416
    blob = hashlib.sha1(b"blob %d\0" % len(CONFIG) + CONFIG.encode()).hexdigest()
    _, headers, _ = hub.raw("HEAD", "/org/tiny-model/resolve/main/config.json")
    assert headers["etag"] == f'"{blob}"' and "x-linked-etag" not in headers


def test_resume_after_dropped_connection(hub: HubServer, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # httpx hands over the body in DOWNLOAD_CHUNK_SIZE pieces (10 MB): shrink it so that the
    # bytes received before the drop reach the file and the retry asks for the rest.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 1024)
    hub.drop_connection("model.safetensors", after_bytes=5000)
    path = hh.hf_hub_download("org/tiny-model", "model.safetensors", cache_dir=tmp_path)
    assert Path(path).read_bytes() == WEIGHTS
    assert hub.ranges == [("/org/tiny-model/resolve/main/model.safetensors", "bytes=4096-")]
    assert hub.count("model.safetensors") == 2


def test_request_counting_and_cache_hits(hub: HubServer, tmp_path: Path) -> None:
    for _ in range(2):
        hh.hf_hub_download("org/tiny-model", "config.json", cache_dir=tmp_path)
    assert hub.count("/resolve/main/config.json", method="GET") == 1  # second time: cache
    assert hub.count("/resolve/main/config.json", method="HEAD") == 2  # "main" is re-checked
    assert hub.count("config.json", method=None) == 3


def test_corrupt_serves_wrong_bytes_of_right_size(hub: HubServer) -> None:
    hub.corrupt("model.safetensors", times=1)
    url = "/org/tiny-model/resolve/main/model.safetensors"
    bad = hub.raw("GET", url)[2]
    assert len(bad) == len(WEIGHTS) and bad != WEIGHTS
    assert hub.raw("GET", url)[2] == WEIGHTS  # only once


def test_errors_map_to_huggingface_hub_exceptions(hub: HubServer, tmp_path: Path) -> None:
    with pytest.raises(EntryNotFoundError):
        hh.hf_hub_download("org/tiny-model", "missing.bin", cache_dir=tmp_path)
    with pytest.raises(RevisionNotFoundError):
        hh.hf_hub_download("org/tiny-model", "config.json", revision="v9", cache_dir=tmp_path)
    with pytest.raises(RepositoryNotFoundError):
        hh.hf_hub_download("org/nope", "config.json", cache_dir=tmp_path)


def test_explicit_endpoint_without_activate(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # the suite runs offline
    with HubServer({"org/m": {"config.json": CONFIG}}) as server:
        endpoint = constants.ENDPOINT
        path = hh.hf_hub_download("org/m", "config.json", cache_dir=tmp_path,
                                  endpoint=server.url)
        assert Path(path).read_text() == CONFIG and constants.ENDPOINT == endpoint


def test_activate_restores_constants() -> None:
    before = (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, constants.HF_HUB_OFFLINE)
    with HubServer() as server, server.activate() as url:
        assert constants.ENDPOINT == url and not constants.HF_HUB_OFFLINE
    after = (constants.ENDPOINT, constants.HUGGINGFACE_CO_URL_TEMPLATE, constants.HF_HUB_OFFLINE)
    assert after == before


TOKEN = "hf_testtoken_0123456789"


def test_gated_repo_needs_the_token(hub: HubServer, tmp_path: Path) -> None:
    hub.require_token("org/tiny-model", TOKEN)
    with pytest.raises(GatedRepoError) as err:  # token=False: ignore any HF_TOKEN / login
        hh.hf_hub_download("org/tiny-model", "config.json", cache_dir=tmp_path, token=False)
    assert err.value.response.status_code == 401 and "Cannot access gated repo" in str(err.value)
    with pytest.raises(HfHubHTTPError, match="Invalid credentials") as bad:
        hh.hf_hub_download("org/tiny-model", "config.json", cache_dir=tmp_path,
                           token="hf_wrong_token_xyz")
    assert not isinstance(bad.value, RepositoryNotFoundError)
    assert "hf_wrong_token_xyz" not in str(bad.value)  # the message never shows the token
    path = hh.hf_hub_download("org/tiny-model", "config.json", cache_dir=tmp_path, token=TOKEN)
    assert Path(path).read_text() == CONFIG
    assert hub.auth_seen == [None, "Bearer hf_wrong_token_xyz", f"Bearer {TOKEN}",
                             f"Bearer {TOKEN}"]  # HEAD then GET with the right one
    assert not hub.auth_seen[0] and TOKEN not in str(err.value)
    with pytest.raises(GatedRepoError):  # the API answers 401 as well
        hh.HfApi().model_info("org/tiny-model", token=False)
    hh.hf_hub_download("org/tiny-data", "README.md", repo_type="dataset",
                       cache_dir=tmp_path, token=False)  # other repos stay open


def test_token_from_hf_token_env_and_explicit_endpoint(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # read at call time, unlike HF_ENDPOINT
    with HubServer({"datasets/org/private": {"a.parquet": PARQUET}}) as server:
        server.require_token("org/private", TOKEN, repo_type="dataset",
                             error_code="RepoNotFound")
        path = hh.hf_hub_download("org/private", "a.parquet", repo_type="dataset",
                                  cache_dir=tmp_path / "1", endpoint=server.url)
        assert Path(path).read_bytes() == PARQUET
        assert server.auth_seen == [f"Bearer {TOKEN}"] * 2
        monkeypatch.delenv("HF_TOKEN")
        with pytest.raises(RepositoryNotFoundError) as err:  # a private repo: "not found"
            hh.hf_hub_download("org/private", "a.parquet", repo_type="dataset",
                               cache_dir=tmp_path / "2", endpoint=server.url, token=False)
        assert not isinstance(err.value, GatedRepoError) and err.value.response.status_code == 401
