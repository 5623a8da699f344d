"""`FileServer` answers plain HTTP clients and fsspec's `http` filesystem as a web server would:
sizes, ranges, ETags, auth, and the faults (dropped connections, corrupt bytes) tests rely on."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import fsspec
import pytest

from tpcli.testing.file_server import FileServer, byte_range

DATA = bytes(range(256)) * 400  # 102400 bytes
TOKEN = "hf_fileserver_token"


@pytest.fixture
def server() -> Iterator[FileServer]:
    with FileServer({"zoo/w.bin": DATA, "zoo/config.json": '{"a": 1}'}) as s:
        yield s


def _fs(**kwargs: object) -> fsspec.AbstractFileSystem:
    pytest.importorskip("aiohttp", reason="fsspec's http filesystem needs aiohttp")
    return fsspec.filesystem("http", skip_instance_cache=True, **kwargs)


def test_byte_range_parsing() -> None:
    assert byte_range("bytes=0-9", 100) == (0, 9)
    assert byte_range("bytes=90-", 100) == (90, 99)
    assert byte_range("bytes=90-500", 100) == (90, 99)  # clipped to the end
    assert byte_range("bytes=-10", 100) == (90, 99)
    for bad in ("bytes=100-", "bytes=5-4", "bytes=0-1,3-4", "items=0-1", "bytes=a-b", "bytes=-"):
        assert byte_range(bad, 100) is None, bad


def test_get_head_headers_ranges_and_missing(server: FileServer) -> None:
    status, head, body = server.raw("HEAD", "/zoo/w.bin")
    assert (status, body, head["content-length"]) == (200, b"", "102400")
    assert head["etag"] == f'"{hashlib.sha1(DATA).hexdigest()}"'
    assert head["accept-ranges"] == "bytes" and head["last-modified"].endswith(" GMT")
    assert server.raw("GET", "/zoo/w.bin")[2] == DATA
    status, head, body = server.raw("GET", "/zoo/w.bin", {"Range": "bytes=1000-1999"})
    assert (status, body, head["content-range"]) == (206, DATA[1000:2000], "bytes 1000-1999/102400")
    assert server.raw("GET", "/zoo/w.bin", {"Range": "bytes=102000-"})[2] == DATA[102000:]
    status, head, _ = server.raw("GET", "/zoo/w.bin", {"Range": "bytes=102400-"})
    assert (status, head["content-range"]) == (416, "bytes */102400")
    assert server.raw("GET", "/zoo/missing.bin")[0] == 404
    assert server.ranges == [("/zoo/w.bin", "bytes=1000-1999"), ("/zoo/w.bin", "bytes=102000-"),
                             ("/zoo/w.bin", "bytes=102400-")]


def test_serves_a_folder_live_and_not_outside_it(tmp_path: Path) -> None:
    root = tmp_path / "www"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a.txt").write_bytes(b"first")
    (tmp_path / "secret.txt").write_bytes(b"secret")
    with FileServer(root) as server:
        assert server.raw("GET", "/sub/a.txt")[2] == b"first"
        (root / "sub" / "a.txt").write_bytes(b"second!")  # read at request time
        status, head, body = server.raw("GET", "/sub/a.txt")
        assert (body, head["content-length"]) == (b"second!", "7")
        assert server.raw("GET", "/../secret.txt")[0] == 404
        assert server.raw("GET", "/sub")[0] == 404  # a folder is not a file


def test_fsspec_info_seek_read_and_cat_file(server: FileServer) -> None:
    fs = _fs()
    url = server.url_for("zoo/w.bin")
    info = fs.info(url)
    assert info["size"] == len(DATA) and info["ETag"] == f'"{hashlib.sha1(DATA).hexdigest()}"'
    with fs.open(url, block_size=4096) as f:
        f.seek(50_000)
        assert f.read(1000) == DATA[50_000:51_000]
        f.seek(100_000)
        assert f.read() == DATA[100_000:]
    assert fs.cat_file(url, 10, 20) == DATA[10:20]
    assert fs.cat_file(url, -16) == DATA[-16:]
    assert all(r.startswith("bytes=") for _, r in server.ranges) and len(server.ranges) >= 3
    with pytest.raises(FileNotFoundError):
        fs.info(server.url_for("zoo/missing.bin"))


def test_fsspec_raises_on_dropped_connection_without_retry(server: FileServer,
                                                            tmp_path: Path) -> None:
    """What a zoo puller must handle itself: fsspec (aiohttp) neither retries nor resumes; it
    raises aiohttp's ClientPayloadError, and `get_file` leaves the partial bytes on disk."""
    import aiohttp

    fs = _fs()
    url = server.url_for("zoo/w.bin")
    server.drop_connection("zoo/w.bin", after_bytes=3000)
    with pytest.raises(aiohttp.ClientPayloadError, match="received 3000 of 102400"):
        fs.cat_file(url)
    assert server.count("w.bin") == 1  # no retry
    server.drop_connection("/zoo/w.bin", after_bytes=3000)
    with pytest.raises(aiohttp.ClientPayloadError):
        fs.get_file(url, str(tmp_path / "w.bin"))
    assert (tmp_path / "w.bin").read_bytes() == DATA[:3000]
    assert fs.cat_file(url) == DATA  # the fault was armed for one GET each time


def test_dropped_connection_gives_a_short_body(server: FileServer) -> None:
    server.drop_connection("zoo/w.bin", after_bytes=5000, times=2)
    for _ in range(2):
        status, head, body = server.raw("GET", "/zoo/w.bin")
        assert (status, head["content-length"], body) == (200, "102400", DATA[:5000])
    _, _, body = server.raw("GET", "/zoo/w.bin", {"Range": "bytes=5000-"})
    assert body == DATA[5000:]  # a resume after two drops gets the rest
    assert server.count("zoo/w.bin") == 3 and server.count("w.bin", method="HEAD") == 0


def test_corrupt_serves_same_size_different_bytes(server: FileServer) -> None:
    server.corrupt("zoo/w.bin", times=1)
    bad = server.raw("GET", "/zoo/w.bin")[2]
    assert len(bad) == len(DATA) and bad != DATA
    assert sum(a != b for a, b in zip(bad, DATA)) == 1
    assert server.raw("GET", "/zoo/w.bin")[2] == DATA


def test_counts_by_suffix_and_method(server: FileServer) -> None:
    server.raw("HEAD", "/zoo/w.bin")
    server.raw("GET", "/zoo/w.bin", {"Range": "bytes=0-0"})
    server.raw("GET", "/zoo/config.json")
    assert server.count("w.bin") == 1 and server.count("w.bin", method="HEAD") == 1
    assert server.count("/zoo/", method=None) == 0  # a suffix of the path, not a prefix
    assert server.count("", method=None) == 3 and server.count(".json") == 1


def test_require_token(server: FileServer) -> None:
    server.require_token(TOKEN)
    status, head, _ = server.raw("GET", "/zoo/config.json")
    assert status == 401 and head["www-authenticate"].startswith("Bearer")
    assert server.raw("GET", "/zoo/config.json", {"Authorization": "Bearer nope"})[0] == 401
    ok = server.raw("GET", "/zoo/config.json", {"Authorization": f"Bearer {TOKEN}"})
    assert ok[0] == 200 and ok[2] == b'{"a": 1}'
    assert server.auth_seen == [None, "Bearer nope", f"Bearer {TOKEN}"]
    server.require_token(None)
    assert server.raw("GET", "/zoo/config.json")[0] == 200


def test_fsspec_with_and_without_token(server: FileServer) -> None:
    import aiohttp

    fs = _fs()
    server.require_token(TOKEN)
    url = server.url_for("zoo/w.bin")
    with pytest.raises(FileNotFoundError):  # fsspec's info() turns the 401 into this
        fs.info(url)
    with pytest.raises(aiohttp.ClientResponseError) as err:
        fs.cat_file(url, 0, 10)
    assert err.value.status == 401
    authed = _fs(headers={"Authorization": f"Bearer {TOKEN}"})
    assert authed.info(url)["size"] == len(DATA) and authed.cat_file(url, 5, 9) == DATA[5:9]
    assert server.auth_seen[-1] == f"Bearer {TOKEN}"
