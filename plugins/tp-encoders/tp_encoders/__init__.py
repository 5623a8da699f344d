"""tp's built-in encoders and poolings (registered through the `tp` entry point)."""
