"""Built-in recipes, installed as the package `tpcli.builtin_recipes` (see setup.py)."""
