"""An example third-party tp plugin (see README.md): the `scaled_word` embedding."""

__version__ = "0.1.0"
