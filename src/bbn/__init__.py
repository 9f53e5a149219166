"""bbn: Bilateral-Branch Network with Cumulative Learning for long-tailed recognition.

`bbn.load(run_or_file)` and `bbn.build_model(name, num_classes)` (`bbn.api`) are imported
on first use, so `import bbn` loads neither torch nor the package's modules.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "build_model", "load"]
_API = ("build_model", "load")


def __getattr__(name: str) -> Any:
    if name in _API:
        from bbn import api

        return getattr(api, name)
    raise AttributeError(f"module 'bbn' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
