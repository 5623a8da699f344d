"""Typed building blocks shared by modules. They take sizes and sub-modules, never a config."""
