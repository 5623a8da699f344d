"""tp's built-in text modules (registered through the `tp` entry point)."""
