"""`tp zoo`: list, inspect, pull, verify, remove and lock published weights."""

from __future__ import annotations

from typing import Any, Optional

import typer

app = typer.Typer(name="zoo", no_args_is_help=True, add_completion=False,
                  help="The model zoo: published weights, pulled, verified, cached and "
                  "converted (cache: TP_HOME, default ~/.cache/tp).")


def _run(action: str, **kwargs: Any) -> Any:
    from tpcli.zoo import ZooRequest, zoo

    return zoo(ZooRequest(action, **kwargs))  # type: ignore[arg-type]


JSON_HELP = "print JSON on one line instead of text"


@app.command("list")
def list_(
    modality: Optional[str] = typer.Option(None, "--modality",
                                           help="text, vision, speech or multimodal"),
    task: Optional[str] = typer.Option(None, "--task", help="only models for this task"),
    as_json: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Every model card: PARAMS is the approximate parameter count; SIZE the download, exact
    where the card (or a complete pull) sizes every file, `>=` a lower bound where it sizes
    some, `unknown` where it sizes none (`tp zoo lock` records them)."""
    from tpcli.cli.render import on_terminal, print_json, print_table

    rows = _run("list", modality=modality, task=task)
    if as_json:
        print_json(rows)
        return
    cols = ("name", "modality", "params", "size", "license", "cached", "tasks")
    print_table("tp zoo", cols, [(r["name"], r["modality"], params_text(r["params"]),
                                  size_text(r["size"]), r["license"], "yes" if r["cached"] else "",
                                  ", ".join(r["tasks"])) for r in rows])
    if on_terminal():  # piped, stdout is the rows alone
        n = len(rows)
        print(f"{n} model{'' if n == 1 else 's'}; `tp zoo info NAME` for a card, "
              "`tp zoo pull NAME` to fetch one")


def params_text(params: int | None) -> str:
    """`~110M`: a card's parameter count is approximate, and says so."""
    if params is None:
        return "unknown"
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if params >= scale:
            value = params / scale
            return f"~{value:.3g}{unit}"
    return f"~{params}"


def size_text(size: dict[str, Any] | None) -> str:
    from tpcli.zoo.cache import human

    if size is None:
        return "unknown"
    return human(size["bytes"]) if size["exact"] else f">={human(size['bytes'])}"


@app.command()
def info(name: str = typer.Argument(..., help="model name or alias"),
         as_json: bool = typer.Option(False, "--json", help=JSON_HELP)) -> None:
    """The card, whether it is cached, where, and how big."""
    import yaml

    from tpcli.cli.render import print_json
    from tpcli.zoo.cache import human

    result = _run("info", name=name)
    if as_json:
        print_json(result)
        return
    print(yaml.safe_dump(result["card"], sort_keys=False, allow_unicode=True, width=100), end="")
    print(f"card file: {result['file']}")
    if not result["pinned"]:
        print(f"revision: {result['card']['revision']} is a branch, not a commit "
              "(maintainers: `tp zoo lock` pins it)")
    if not result["cached"]:
        print(f"cached: no (`tp zoo pull {result['card']['name']}`)")
    for entry in result["cache"]:
        state = "complete" if entry["complete"] else "incomplete"
        print(f"cached: {entry['commit']} ({state}, {human(entry['bytes'])})")
        for path in entry["files"].values():
            print(f"  {path}")
        for fmt, path in entry["formats"].items():
            print(f"  {fmt}: {path}")


@app.command()
def pull(
    name: str = typer.Argument(..., help="model name or alias"),
    revision: Optional[str] = typer.Option(None, "--revision",
                                           help="another commit, branch or tag than the card's"),
    format: Optional[str] = typer.Option(  # noqa: A002 - the option's name
        None, "--format", help="tp (converted) or hf (as published); default: tp when an "
        "installed converter reads the model"),
    workers: int = typer.Option(8, "--workers", min=1, help="files downloaded at once"),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="progress bar"),
) -> None:
    """Download (in parallel, resuming), verify every sha256, cache, convert."""
    from tpcli.zoo.cache import human

    r = _run("pull", name=name, revision=revision, format=format, workers=workers,
             progress=progress)
    got = f"downloaded {human(r['downloaded'])}" if r["downloaded"] else "all files cached"
    print(f"{r['name']}@{r['commit']}: {r['files']} files verified, {human(r['bytes'])}, {got} "
          f"({r['seconds']:.1f} s)")
    print(f"{r['format']}: {r['path']}")


@app.command()
def verify(name: Optional[str] = typer.Argument(None, help="model (default: every cached one)")
           ) -> None:
    """Re-hash the cache; a damaged file is deleted (the next pull fetches it again)."""
    from tpcli.errors import TpError

    r = _run("verify", name=name)
    print(f"{r['name']}: {r['checked']} files checked, {len(r['failed'])} failed")
    if r["failed"]:
        raise TpError("verification failed:\n  - " + "\n  - ".join(r["failed"]),
                      hint="the damaged files were deleted; `tp zoo pull NAME` fetches them again")


@app.command()
def rm(
    name: str = typer.Argument(..., help="model name or alias"),
    hf_cache: bool = typer.Option(False, "--hf-cache",
                                  help="also delete its revisions from the Hugging Face cache"),
) -> None:
    """Remove a model from the cache."""
    r = _run("rm", name=name, hf_cache=hf_cache)
    print(f"removed {r['removed']} ({r['freed']} freed)")


@app.command()
def path(
    name: str = typer.Argument(..., help="model name or alias"),
    format: Optional[str] = typer.Option(None, "--format", help="tp or hf"),  # noqa: A002
) -> None:
    """Print where the pulled weights lie (no download)."""
    print(_run("path", name=name, format=format)["path"])


@app.command()
def lock(name: str = typer.Argument(..., help="model name or alias")) -> None:
    """Maintainers, online: pin the revision to a commit, write each file's sha256 to the card."""
    r = _run("lock", name=name)
    print(f"locked {r['name']} at {r['revision']}: {r['files']} files, {r['bytes']} bytes "
          f"-> {r['card']}")


def register(root: typer.Typer) -> None:
    root.add_typer(app)
