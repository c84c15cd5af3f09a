"""attnlab: train small self-attention models on toy tasks and watch what attention learns.

    run = attnlab.load_run("outputs/<date>/<time>")        # a run as an object (docs/notebook.md)
    jobs = attnlab.load_sweep("outputs/multirun/<date>/<time>")
"""

# Imported on first use: every attnlab module imports this package, and the scripts check bad input before torch's
# import (seconds).
_LAZY = {"load_run": "attnlab.inspection", "load_sweep": "attnlab.inspection", "Run": "attnlab.inspection"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'attnlab' has no attribute {name!r}")


__all__ = list(_LAZY)
