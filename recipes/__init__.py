"""Built-in recipes (this folder is also the package tpcli.builtin_recipes, so installs carry it)."""
