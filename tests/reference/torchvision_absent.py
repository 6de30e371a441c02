"""Stand in for ``torchvision`` so pytorch-grad-cam and onnx2torch can be imported beside the CPU torch.

PyPI's torchvision fails to load next to torch's CPU build on these machines
(``RuntimeError: operator torchvision::nms does not exist``), and the lock leaves it out.
Both reference libraries import it at package import time only for code the tests never
run (image helpers, the NMS and RoIAlign converters). This module registers a package of
that name whose every attribute is a callable that raises, so a reference path that did
need torchvision fails loudly instead of computing something else.
"""

from __future__ import annotations

import sys
import types
from typing import Any, NoReturn


class _Absent(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _raising(f"{self.__name__}.{name}")


def _raising(qualified: str) -> Any:
    def call(*_args: object, **_kwargs: object) -> NoReturn:
        raise RuntimeError(f"{qualified} was called, but torchvision is not installed (tests/reference)")

    call.__qualname__ = qualified
    return call


_SUBMODULES = ("transforms", "transforms.functional", "ops", "models")


def install() -> None:
    """Register the stand-in unless a loadable torchvision is already imported."""
    if "torchvision" in sys.modules and not isinstance(sys.modules["torchvision"], _Absent):
        return
    root = _Absent("torchvision")
    root.__path__ = []  # a package, so "import torchvision.ops" resolves through sys.modules
    sys.modules["torchvision"] = root
    for name in _SUBMODULES:
        module = _Absent(f"torchvision.{name}")
        module.__path__ = []
        sys.modules[module.__name__] = module
        parent, _, leaf = module.__name__.rpartition(".")
        setattr(sys.modules[parent], leaf, module)
