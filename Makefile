# tcptop: `make run` starts the tool, `make test` runs the whole suite.
# Both first run `make setup`, which installs only what is missing and is
# quick when nothing changed (Debian 12, as root).

PY        ?= python3
VENV      := .venv
VPY       := $(VENV)/bin/python
BUILD     := build
BPF_SRCS  := $(wildcard bpf/*.bpf.c)
BPF_OBJS  := $(patsubst bpf/%.bpf.c,$(BUILD)/%.bpf.o,$(BPF_SRCS))
# Variants the kernel tests load: a stricter verifier reproduced on every kernel.
TEST_BPF_SRCS := $(wildcard tests/kernel/bpf/*.bpf.c)
TEST_BPF_OBJS := $(patsubst tests/kernel/bpf/%.bpf.c,$(BUILD)/test/%.bpf.o,$(TEST_BPF_SRCS))
ARCH      := $(shell uname -m | sed -e 's/x86_64/x86/' -e 's/aarch64/arm64/')
CLANG     ?= clang

.PHONY: setup run test test-bpf test-kernel test-ui bench screenshots clean bcc native

setup: $(VENV)/.installed bpf bcc native

# The BCC engine: BCC's Python package linked into .venv, and kernel headers merged where
# BCC_KERNEL_SOURCE can point (scripts/bcc-setup.sh says why). Quick; runs every setup so
# a headers upgrade never leaves dangling links.
bcc: $(VENV)/.installed
	@bash scripts/bcc-setup.sh $(VENV) $(BUILD)/kernel-headers

# System packages: compiler and libbpf for the BPF objects, venv for Python,
# and the real workloads the tests and benchmarks drive.
$(BUILD)/.packages: scripts/setup-system.sh
	@mkdir -p $(BUILD)
	bash scripts/setup-system.sh
	@touch $@

$(VENV)/.installed: pyproject.toml $(BUILD)/.packages
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	@touch $@

bpf: $(BPF_OBJS)

$(BUILD)/vmlinux.h: $(BUILD)/.packages
	bpftool btf dump file /sys/kernel/btf/vmlinux format c > $@.tmp && mv $@.tmp $@

$(BUILD)/%.bpf.o: bpf/%.bpf.c bpf/*.h $(BUILD)/vmlinux.h
	$(CLANG) -g -O2 -Wall -Werror -target bpf -D__TARGET_ARCH_$(ARCH) -I$(BUILD) -Ibpf -c $< -o $@

$(BUILD)/test/%.bpf.o: tests/kernel/bpf/%.bpf.c bpf/*.bpf.c bpf/*.h $(BUILD)/vmlinux.h
	@mkdir -p $(BUILD)/test
	$(CLANG) -g -O2 -Wall -Werror -target bpf -D__TARGET_ARCH_$(ARCH) -I$(BUILD) -Ibpf -c $< -o $@

test-bpf: $(TEST_BPF_OBJS)

# C twins of the per-flow hot paths (the record decoder, the JSON text, the failure tallies), built for the venv's
# Python; without them tcptop runs the Python versions, ~10x slower a flow.
NATIVE := $(BUILD)/_flow_decode.so $(BUILD)/_flow_json.so $(BUILD)/_failure_tally.so
native: $(NATIVE)

$(BUILD)/_flow_decode.so: tcptop/engines/core/_flow_decode.c
$(BUILD)/_flow_json.so: tcptop/frontends/_flow_json.c
$(BUILD)/_failure_tally.so: tcptop/engines/core/_failure_tally.c
$(NATIVE): $(VENV)/.installed
	$(CLANG) -O2 -Wall -Werror -fPIC -shared \
		-I"$$($(VPY) -c 'import sysconfig; print(sysconfig.get_paths()["include"])')" $(filter %.c,$^) -o $@

run: setup
	@echo "tcptop: live view (q quits). Try 'make run ARGS=--demo' for a self-contained demo workload."
	$(VENV)/bin/tcptop $(ARGS)

test: setup test-bpf
	bash scripts/run-tests.sh

test-kernel: setup test-bpf
	$(VPY) -m pytest -q tests/kernel

test-ui: setup
	$(VPY) -m pytest -q tests/ui

bench: setup
	$(VPY) benchmarks/overhead.py
	$(VPY) benchmarks/ui_refresh.py
	$(VPY) benchmarks/exporter.py

screenshots: setup
	$(VPY) screenshots/make_screenshots.py

clean:
	rm -rf $(BUILD) $(VENV)
