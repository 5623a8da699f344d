"""Zoo cards: one YAML file per published weight (`zoo/<name>.yaml`), validated by `Card`.

A card says what the weight is (modality, tasks, the tp recipe it instantiates), where it comes
from (`source`: `hf://ORG/REPO` at a pinned `revision`, or any fsspec URL of a folder), which
files make it up (with size and sha256 where known), its format (`hf` or `tp`), license, paper
and reported results. Cards come from folders registered through `tp_register_zoo_cards` (the
core registers `zoo/`); `Catalog` finds one by name or alias and suggests the closest name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tpcli.errors import Problem, TpError

NAME = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
COMMIT = re.compile(r"^[0-9a-f]{40}$")
MODALITIES = ("text", "vision", "speech", "multimodal")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def safe_relpath(path: str) -> str:
    """`path` if it stays inside the folder it is joined to, else ValueError (a card naming
    `../../.bashrc` or `/etc/passwd` must never write outside the cache)."""
    if not path or "\\" in path or "\x00" in path:
        raise ValueError(f"bad file path {path!r}")
    pure = PurePosixPath(path)
    if pure.is_absolute() or any(part in ("..", ".", "") for part in path.split("/")):
        raise ValueError(f"file path {path!r} leaves the model folder (absolute or with '..')")
    if re.match(r"^[A-Za-z]:", path):
        raise ValueError(f"file path {path!r} is absolute")
    return path


class CardFile(_Strict):
    """One file of the weight: its path inside the source folder, and what it must hash to."""

    path: str = Field(description="path inside the source folder, '/' separated")
    size: int | None = Field(None, ge=0, description="bytes, where known")
    sha256: str | None = Field(None, description="64 lower-case hex digits, where known")

    @field_validator("path")
    @classmethod
    def _inside(cls, v: str) -> str:
        return safe_relpath(v)

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str | None) -> str | None:
        if v is not None and not SHA256.match(v):
            raise ValueError(f"sha256 must be 64 lower-case hex digits, not {v!r}")
        return v


class Result(_Strict):
    """A reported result: `{task: glue, metric: average, value: 79.6, source: "Table 1"}`."""

    task: str
    metric: str
    value: float
    split: str | None = None
    source: str | None = Field(None, description="where the number is published")


class Card(_Strict):
    """What `tp zoo` knows about one published weight."""

    name: str
    aliases: tuple[str, ...] = ()
    modality: Literal["text", "vision", "speech", "multimodal"]
    tasks: tuple[str, ...] = Field(min_length=1)
    description: str = Field(min_length=1)
    recipe: str | None = Field(None, description="the built-in tp recipe of this architecture")
    model_type: str | None = Field(None, description="HF config.json model_type (format hf)")
    architecture: str | None = Field(None, description="HF config.json architectures[0]")
    source: str = Field(description="hf://ORG/REPO or an fsspec URL of the folder")
    revision: str = Field("main", description="a commit (pinned) or a branch / tag")
    format: Literal["hf", "tp"] = "hf"
    files: tuple[CardFile, ...] = Field(min_length=1)
    params: int | None = Field(None, gt=0, description="parameters of the published weights, "
                               "approximate (2-3 significant figures; zoo/README.md says how "
                               "each was found)")
    license: str
    paper: str | None = None
    results: tuple[Result, ...] = ()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.match(v):
            raise ValueError(f"{v!r} is not a card name (lower case letters, digits, . _ -)")
        return v

    @field_validator("aliases")
    @classmethod
    def _aliases(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        bad = [a for a in v if not NAME.match(a)]
        if bad:
            raise ValueError(f"aliases must be lower-case names, not {bad}")
        return v

    @field_validator("source")
    @classmethod
    def _source(cls, v: str) -> str:
        if "://" not in v:
            raise ValueError(f"source {v!r} is not a URL (hf://ORG/REPO, https://..., file://...)")
        if v.startswith("hf://") and not re.match(r"^hf://[\w.-]+(/[\w.-]+)?$", v):
            raise ValueError(f"source {v!r} is not hf://ORG/REPO")
        return v

    @field_validator("files")
    @classmethod
    def _unique(cls, v: tuple[CardFile, ...]) -> tuple[CardFile, ...]:
        paths = [f.path for f in v]
        twice = sorted({p for p in paths if paths.count(p) > 1})
        if twice:
            raise ValueError(f"files listed twice: {twice}")
        return v

    @property
    def scheme(self) -> str:
        return self.source.split("://", 1)[0]

    @property
    def pinned(self) -> bool:
        """True when the revision is a commit: the bytes cannot change under the card."""
        return self.scheme != "hf" or bool(COMMIT.match(self.revision))

    @property
    def known_size(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)


def read_card(path: Path) -> Card:
    """Parse and validate one card file; every problem is reported at once."""
    import yaml

    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_loader())
    except (OSError, yaml.YAMLError) as e:
        raise TpError(f"zoo card {path} cannot be read: {e}") from e
    if not isinstance(raw, dict):
        raise TpError(f"zoo card {path} is not a YAML mapping")
    try:
        card = Card(**raw)
    except ValidationError as e:
        problems = [Problem(".".join(map(str, err["loc"])), err["msg"]) for err in e.errors()]
        lines = "\n".join(f"  - {p}" for p in problems)
        raise TpError(f"zoo card {path} has {len(problems)} problem(s):\n{lines}",
                      hint="fix the card (its fields are described in tpcli/zoo/card.py)") from None
    if path.suffix in (".yaml", ".yml") and path.stem != card.name:
        raise TpError(f"zoo card {path} is named {card.name!r}; the file must be {card.name}.yaml")
    return card


def _loader() -> Any:
    import yaml

    return getattr(yaml, "CSafeLoader", yaml.SafeLoader)


@dataclass
class Catalog:
    """Every card of every registered folder, by name, with aliases, and the card files that
    were skipped (malformed, or defining a name another card has)."""

    cards: dict[str, Card]
    paths: dict[str, Path]  # name -> the card file
    aliases: dict[str, str]  # alias -> name
    skipped: dict[str, str] = field(default_factory=dict)  # file stem -> why, on one line

    def find(self, name: str) -> Card:
        key = name.lower()
        key = self.aliases.get(key, key)
        if key in self.cards:
            return self.cards[key]
        if key in self.skipped:  # say why rather than "no such model"
            raise TpError(f"zoo model {name!r} cannot be used: {self.skipped[key]}",
                          hint="fix the card (its fields are described in tpcli/zoo/card.py), "
                          "or remove it")
        from tpcli.plugins.registry import closest

        guess = closest(key, [*self.cards, *self.aliases])
        msg = f"no zoo model named {name!r}"
        if guess:
            msg += f"; did you mean {self.aliases.get(guess, guess)!r}?"
        raise TpError(msg, hint="`tp zoo list` shows every model (filter with --modality/--task)")


def load_catalog(folders: list[str]) -> Catalog:
    """Read every `*.yaml` card in `folders` (a registered path may also be one card file). A
    malformed card, or one defining a name or alias an earlier card has, is skipped and noted in
    `Catalog.skipped`: one bad file must not take the whole zoo down."""
    cat = Catalog({}, {}, {})
    for folder in folders:
        root = Path(folder)
        files = [root] if root.is_file() else sorted(root.glob("*.yaml")) if root.is_dir() else []
        for file in files:
            try:
                card = read_card(file)
            except TpError as e:
                cat.skipped.setdefault(file.stem.lower(), one_line(e.message))
                continue
            taken = [(key, cat.paths[cat.aliases.get(key, key)]) for key in (card.name, *card.aliases)
                     if cat.aliases.get(key, key) in cat.paths]
            if taken:
                key, owner = taken[0]
                cat.skipped.setdefault(card.name, f"zoo card {file} defines {key!r}, which {owner} "
                                       "already defines (rename one of the cards or its alias)")
                continue
            cat.cards[card.name], cat.paths[card.name] = card, file
            cat.aliases.update({a: card.name for a in card.aliases})
    return cat


def one_line(message: str) -> str:
    """`zoo card F has 2 problem(s):\n  - a\n  - b` as `zoo card F has 2 problem(s): a; b`."""
    head, *items = message.splitlines()
    return f"{head} {'; '.join(i.strip().removeprefix('- ') for i in items)}".strip()
