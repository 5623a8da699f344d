"""What a user sees when something is wrong.

Every mistake a user can make (a bad recipe, a missing file, a corrupt checkpoint) raises a
`TpError`. The CLI prints its message as one paragraph and exits with code 1; `--debug` adds the
traceback. Anything that is not a `TpError` is a bug in tp or a plugin.
"""

from __future__ import annotations

from dataclasses import dataclass


class TpError(Exception):
    """A user-facing error: `message` says what is wrong, `hint` says how to fix it."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


def clip(text: str, limit: int = 80) -> str:
    """`text`, cut to `limit` characters with its length said: errors never echo a pasted
    100k-character name whole."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


@dataclass(frozen=True)
class Problem:
    """One validation problem: where (`a.b.c`), the bad value, and what would be accepted."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{clip(self.path)}: {self.message}" if self.path else self.message


class ConfigError(TpError):
    """A recipe or override failed validation; carries every problem found, not just the first."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        n = len(problems)
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source} has {n} problem{'s' if n != 1 else ''}:\n{lines}")


class RegistryError(TpError):
    """Two plugins registered the same name, or a plugin registered something malformed."""


class DataError(TpError):
    """A corpus or dataset cannot be read, or does not match the recipe."""


class CheckpointError(TpError):
    """A checkpoint is missing, corrupt, or does not fit the model."""


class PluginError(TpError):
    """A plugin could not be loaded or misbehaved."""


class Interrupted(TpError):
    """Ctrl-C or SIGTERM stopped a verb: says what was kept and what to run next; exit 130."""

    exit_code = 130


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so the cleanup written for Ctrl-C runs for it too."""
