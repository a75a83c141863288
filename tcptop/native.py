"""C helpers built by `make setup` into build/ (or installed next to the package): found and
loaded for the running interpreter, or None with the reason, so each caller can fall back
to its Python twin and say so."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
from types import ModuleType


def path_of(filename: str) -> str:
    """$TCPTOP_BPF_DIR, an installed tcptop/bpf/, or build/ of a checkout (as the BPF objects)."""
    package = os.path.dirname(os.path.abspath(__file__))
    build = os.path.join(os.path.dirname(package), "build")
    for cand in (os.environ.get("TCPTOP_BPF_DIR", ""), os.path.join(package, "bpf"), build):
        if cand and os.path.exists(os.path.join(cand, filename)):
            return os.path.join(cand, filename)
    return os.path.join(build, filename)


def load(name: str) -> tuple[ModuleType | None, str]:
    """(module, "") or (None, why it did not load)."""
    path = path_of(name + ".so")
    try:
        loader = importlib.machinery.ExtensionFileLoader(name, path)
        spec = importlib.util.spec_from_file_location(name, path, loader=loader)
        mod = importlib.util.module_from_spec(spec)
        loader.exec_module(mod)
    except (ImportError, OSError) as e:
        return None, f"{path} did not load ({e}; `make setup` builds it)"
    return mod, ""
