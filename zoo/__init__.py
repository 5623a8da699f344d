"""Built-in zoo cards (`zoo/<name>.yaml`), installed as the package `tpcli.builtin_zoo` (see setup.py)."""
