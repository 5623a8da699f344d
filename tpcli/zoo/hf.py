"""The `hf://ORG/REPO` zoo source: the Hugging Face Hub, through `huggingface_hub` itself.

Files land in the Hugging Face cache (`HF_HUB_CACHE`, shared with `transformers`), so a model
pulled by tp is not downloaded again by `from_pretrained`, and the other way round. `HF_ENDPOINT`
(a mirror) and `HF_TOKEN` are honoured as `huggingface_hub` honours them; the token never appears
in what tp prints (`scrub`). One `model_info` call resolves the revision to a commit and gives
every file's size and hash (the LFS sha256, or the git blob id of a small file); downloads resume
a partial blob, as `huggingface_hub` does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tpcli.errors import TpError
from tpcli.zoo.card import Card
from tpcli.zoo.sources import Advance, Remote, Verify


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
    if isinstance(e, errors.GatedRepoError) or getattr(getattr(e, "response", None),
                                                       "status_code", None) in (401, 403):
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

        try:
            local = Path(hf_hub_download(self.repo, path, revision=key,
                                         tqdm_class=_forwarding_tqdm(advance)))
        except Exception as e:  # noqa: BLE001 - mapped to a user-facing error
            raise _hub_error(e, self.repo, key, path) from None
        try:
            verify(local, None)
        except TpError:
            self.discard(local)
            raise
        return local

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
