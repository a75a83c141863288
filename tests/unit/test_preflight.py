"""Machines that cannot run the engine are refused with one actionable line, before any BPF call."""

import os
import sys

import pytest

import tcptop.engines
from tcptop.engines import EngineError, check_privileges
from tcptop.engines.core.engine import preflight


def test_no_btf_is_named(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    real = os.path.exists
    monkeypatch.setattr(os.path, "exists", lambda p: False if p == "/sys/kernel/btf/vmlinux" else real(p))
    with pytest.raises(EngineError, match=r"no BTF \(/sys/kernel/btf/vmlinux missing; CONFIG_DEBUG_INFO_BTF=y"):
        preflight()


def test_unprivileged_user_is_told_to_use_root(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(tcptop.engines, "_has_bpf_caps", lambda: False)
    with pytest.raises(EngineError) as e:
        check_privileges()
    assert "needs root" in str(e.value) and "\n" not in str(e.value)


def test_auto_says_why_no_engine_can_run(monkeypatch):
    """With every engine's preflight refusing, "auto" names each engine and its reason in one line."""
    import tcptop.engines.core.engine as core
    from tcptop.engines import EngineOptions, open_engine

    monkeypatch.setattr(tcptop.engines, "check_privileges", lambda: None)
    monkeypatch.setattr(core.os.path, "exists", lambda p: False)
    monkeypatch.setitem(sys.modules, "bcc", None)  # BCC's Python bindings not installed
    with pytest.raises(EngineError) as e:
        open_engine("auto", EngineOptions())
    assert str(e.value).startswith("no engine can run on this machine (core: this kernel has no BTF")
    assert "; bcc: BCC's Python bindings are missing (Debian: apt install python3-bpfcc" in str(e.value)
    assert "\n" not in str(e.value)


def test_unknown_engine_is_named():
    from tcptop.engines import EngineOptions, open_engine

    with pytest.raises(EngineError, match="unknown engine 'xdp'"):
        open_engine("xdp", EngineOptions())
