"""Machines that cannot run the engine are refused with one actionable line, before any BPF call."""

import os

import pytest

from tcptop.engines.core import engine
from tcptop.engines.core.engine import EngineError, preflight


def test_no_btf_is_named(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    real = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: False if p == "/sys/kernel/btf/vmlinux" else real(p))
    with pytest.raises(EngineError, match=r"no BTF \(/sys/kernel/btf/vmlinux missing; CONFIG_DEBUG_INFO_BTF=y"):
        preflight()


def test_unprivileged_user_is_told_to_use_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(engine, "_has_bpf_caps", lambda: False)
    with pytest.raises(EngineError) as e:
        preflight()
    assert "needs root" in str(e.value) and "\n" not in str(e.value)
