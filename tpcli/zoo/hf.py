"""The `hf://ORG/REPO` zoo source: the Hugging Face Hub, through `huggingface_hub` itself.

Files land in the Hugging Face cache (`HF_HUB_CACHE`, shared with `transformers`), so a model
pulled by tp is not downloaded again by `from_pretrained`, and the other way round. `HF_ENDPOINT`
(a mirror) and `HF_TOKEN` are honoured as `huggingface_hub` honours them; the token never appears
in what tp prints (`scrub`). One `model_info` call resolves the revision to a commit and gives
every file's size and hash (the LFS sha256, or the git blob id of a small file).

LFS files (the weights) are streamed by tp into the cache's blob, named by their sha256 as
`huggingface_hub` names it: hashed while the bytes arrive (no second pass over a large file),
resumed with a Range request after a dropped connection or from the `<sha256>.tp-part` an
interrupted pull left, and renamed into place only once verified, so unchecked bytes never enter
the cache. `hf_hub_download` then links the snapshot to the blob, and downloads the small files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tpcli.errors import TpError
from tpcli.zoo.card import Card
from tpcli.zoo.sources import (Advance, Hashed, Remote, StartOver, Verify, commit_part,
                               download_part)


class HttpStatus(Exception):
    """An HTTP error status of a streamed download (`status` is what `permanent` reads)."""

    def __init__(self, status: int, url: str) -> None:
        super().__init__(f"HTTP {status} for {url}")
        self.status = status


def token() -> str | None:
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # noqa: BLE001 - no token is a valid state
        return os.environ.get("HF_TOKEN") or None


def scrub(text: str) -> str:
    """`text` without the Hugging Face token in it (tp never prints or logs a token)."""
    secret = token()
    return text.replace(secret, "***") if secret and len(secret) >= 4 else text


def _forwarding_tqdm(advance: Advance) -> Any:
    """A silent tqdm class that reports each update to `advance` (tp draws one bar for all files
    instead of one per file)."""
    from tqdm.auto import tqdm

    class Forward(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            advance(int(n or 0))
            return super().update(n)

    return Forward


def _hub_error(e: Exception, repo: str, revision: str, path: str | None = None) -> TpError:
    from huggingface_hub import errors

    what = f"{repo}@{revision}" + (f" file {path}" if path else "")
    status = getattr(e, "status", None) or getattr(getattr(e, "response", None), "status_code",
                                                   None)
    if isinstance(e, errors.GatedRepoError) or status in (401, 403):
        return TpError(f"the Hub refused access to {what} (401/403: private or gated)",
                       hint="log in (`hf auth login`) or set HF_TOKEN to a token that may read it")
    if isinstance(e, errors.RepositoryNotFoundError):
        return TpError(f"the Hub has no repository {repo}", hint="check the card's source")
    if isinstance(e, errors.RevisionNotFoundError):
        return TpError(f"{repo} has no revision {revision!r}",
                       hint="check --revision or the card's revision")
    if isinstance(e, errors.EntryNotFoundError):
        return TpError(f"{repo}@{revision} has no file {path!r}",
                       hint="the card lists a file the repository does not have: fix the card")
    return TpError(f"cannot download {what} from the Hugging Face Hub: "
                   f"{type(e).__name__}: {scrub(str(e)).splitlines()[0] if str(e) else ''}",
                   hint="check the network, HF_ENDPOINT, or pull again (it resumes)")


class HfSource:
    """A model repository on the Hugging Face Hub (or the mirror in `HF_ENDPOINT`)."""

    def __init__(self, card: Card) -> None:
        self.card = card
        self.repo = card.source[len("hf://"):]
        self._remote: dict[str, dict[str, Remote]] = {}

    def resolve(self, revision: str) -> str:
        from huggingface_hub import HfApi

        try:
            info = HfApi().model_info(self.repo, revision=revision, files_metadata=True)
        except Exception as e:  # noqa: BLE001 - mapped to a user-facing error
            raise _hub_error(e, self.repo, revision) from None
        remote = {}
        for s in info.siblings or []:
            lfs = getattr(s, "lfs", None)
            remote[s.rfilename] = Remote(size=s.size, sha256=getattr(lfs, "sha256", None),
                                         blob_sha1=None if lfs else s.blob_id)
        self._remote[info.sha] = remote
        return str(info.sha)

    def describe(self, key: str, paths: list[str]) -> dict[str, Remote]:
        remote = self._remote.get(key, {})
        missing = [p for p in paths if remote and p not in remote]
        if missing:
            raise TpError(f"{self.repo}@{key[:12]} has no {', '.join(missing)} (listed in the "
                          f"card of {self.card.name})", hint="fix the card's files")
        return {p: remote.get(p, Remote()) for p in paths}

    def fetch(self, path: str, key: str, folder: Path, advance: Advance, verify: Verify) -> Path:
        from huggingface_hub import hf_hub_download

        remote = self._remote.get(key, {}).get(path)
        streamed = remote is not None and remote.sha256 is not None and self._stream_blob(
            path, key, remote, advance, verify)
        try:  # links a blob streamed above; downloads a small file itself
            local = Path(hf_hub_download(self.repo, path, revision=key,
                                         tqdm_class=_forwarding_tqdm(advance)))
        except Exception as e:  # noqa: BLE001 - mapped to a user-facing error
            raise _hub_error(e, self.repo, key, path) from None
        if not streamed:  # a small file, or a blob another tool put in the cache: hash it
            try:
                verify(local, None)
            except TpError:
                self.discard(local)
                raise
        return local

    def _blobs(self) -> Path:
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name

        return Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=self.repo,
                                                               repo_type="model") / "blobs"

    def _stream_blob(self, path: str, key: str, remote: Remote, advance: Advance,
                     verify: Verify) -> bool:
        """Download an LFS file straight into the Hugging Face cache's blob (named by its
        sha256, as `huggingface_hub` names it), hashing the bytes as they arrive and resuming a
        part left by an interrupted pull. The blob appears only once verified. False when the
        blob was already there (its bytes are checked after linking)."""
        assert remote.sha256 is not None
        blob = self._blobs() / remote.sha256
        if blob.exists():
            return False
        part = blob.with_name(f"{remote.sha256}.tp-part")
        part.parent.mkdir(parents=True, exist_ok=True)
        state = download_part(part, remote.size,
                              lambda st: self._get(path, key, part, st, advance), advance,
                              lambda e, tries: _hub_error(e, self.repo, key, path))
        commit_part(part, blob, state, verify)
        return True

    def _get(self, path: str, key: str, part: Path, state: Hashed, advance: Advance) -> None:
        """Append the rest of the file to `part`: one streamed GET, ranged from the part's size
        (redirects followed; huggingface_hub's session, headers and token)."""
        from huggingface_hub import hf_hub_url
        from huggingface_hub.utils import build_hf_headers, get_session

        headers = build_hf_headers()
        if state.done:
            headers["Range"] = f"bytes={state.done}-"
        url = hf_hub_url(self.repo, path, revision=key)
        with get_session().stream("GET", url, headers=headers, follow_redirects=True) as r:
            if r.status_code >= 400:
                raise HttpStatus(r.status_code, url)
            if state.done and r.status_code != 206:
                raise StartOver()
            with open(part, "ab") as out:
                for chunk in r.iter_bytes():  # as they arrive: a drop loses nothing received
                    out.write(chunk)
                    state.add(chunk)
                    advance(len(chunk))

    def cached(self, path: str, key: str, folder: Path) -> Path | None:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(self.repo, path, revision=key)
        return Path(found) if isinstance(found, str) and Path(found).is_file() else None

    def discard(self, local: Path) -> None:
        """Remove the snapshot link and the blob it points to (nothing of a file that failed
        its check stays in the Hugging Face cache)."""
        blob = local.resolve() if local.is_symlink() else None
        local.unlink(missing_ok=True)
        if blob is not None:
            blob.unlink(missing_ok=True)
