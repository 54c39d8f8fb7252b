"""The chart layer's fixtures (defined in helpers.py): helm, render, values, python_settings,
rust_settings, rust_routes."""
from .helpers import helm, python_settings, render, rust_routes, rust_settings, values  # noqa: F401
