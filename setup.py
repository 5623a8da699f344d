"""Which packages and files the tpcli distribution ships; its metadata is in pyproject.toml.

Packages are found, never listed: every `tpcli` package on disk, so a new subpackage cannot be
forgotten. The built-in recipes and zoo cards stay at the repository root (recipes/<name>/,
zoo/<name>.yaml) and install as the packages tpcli.builtin_recipes and tpcli.builtin_zoo, so
`importlib.resources.files("tpcli.builtin_recipes")` lists them in a wheel, an sdist and an
editable install alike, with no symlink (a Windows checkout has none). pyproject.toml alone
cannot say this: its `packages.find` only finds a package in the folder its name spells.
"""

from setuptools import find_namespace_packages, find_packages, setup

# package -> (folder, the files it ships). A recipe or card file of another kind needs its glob
# here: tests/test_packaging.py fails on any file in these folders that no glob ships.
DATA_PACKAGES = {
    "tpcli.builtin_recipes": ("recipes", ["**/*.yaml", "**/*.md", "**/*.json",
                                          "**/*.safetensors",  # image tokenizers' codebooks
                                          "**/*.model",  # SentencePiece vocabularies
                                          "**/*.txt"]),  # WordPiece vocabularies (clip-tiny)
    "tpcli.builtin_zoo": ("zoo", ["*.yaml", "*.md"]),
}


def data_packages(name: str, folder: str) -> list[str]:
    """The package and its importable subfolders (recipes/gpt2, recipes/_tokenizers): setuptools
    treats any such folder as a package and warns about one that is not named."""
    found = find_namespace_packages(where=folder, exclude=["__pycache__", "*.__pycache__"])
    subs = [s for s in found if all(part.isidentifier() for part in s.split("."))]
    return [name] + [f"{name}.{s}" for s in subs]


setup(
    packages=find_packages(include=["tpcli", "tpcli.*"])
    + [p for name, (folder, _) in DATA_PACKAGES.items() for p in data_packages(name, folder)],
    package_dir={name: folder for name, (folder, _) in DATA_PACKAGES.items()},
    package_data={name: globs for name, (_, globs) in DATA_PACKAGES.items()},
)
