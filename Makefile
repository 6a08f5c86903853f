# One entry point for the CPU development environment, the tests and the demo.
#   make test   create .venv if missing (torch CPU, openrlhf 0.11.2 without GPU deps, this package
#               editable, import stand-ins for vLLM/flash-attn), then run pytest
#   make demo   the CPU demo in the same venv: GRPO / GDPO / GD²PO-hard / GD²PO-SNR on a tiny policy
#               (DEMO_ARGS="--seeds 5 --steps 150" for a longer study; outputs under runs/demo)
#   make venv   only the environment
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONSTRAINTS := $(CURDIR)/requirements/constraints-cpu.txt
# PIP_CONSTRAINT also reaches the isolated build environments (deepspeed's sdist imports torch).
PIP := PIP_CONSTRAINT=$(CONSTRAINTS) PIP_DISABLE_PIP_VERSION_CHECK=1 $(PY) -m pip install -c $(CONSTRAINTS)
STAMP := $(VENV)/.gd2po-cpu-env

.PHONY: venv test demo clean-venv

venv: $(STAMP)

$(STAMP): requirements/constraints-cpu.txt requirements/cpu-dev.txt setup.cfg pyproject.toml
	@echo ">> creating the CPU environment in $(VENV) (first run only, a few minutes)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -q --upgrade pip setuptools wheel
	$(PIP) -q torch==2.13.0
	$(PIP) -q --no-deps openrlhf==0.11.2
	@echo ">> openrlhf's GPU-only requirements (flash-attn, vllm, bitsandbytes, ...) are left out on purpose; pip reports them below"
	$(PIP) -q -r requirements/cpu-dev.txt
	$(PIP) -q --no-deps -e .
	@# Stand-ins for vllm/flash_attn go on sys.path after site-packages, so a real install wins.
	$(PY) -c "import site, pathlib; p = pathlib.Path(site.getsitepackages()[0]) / 'zz_gd2po_cpu_stubs.pth'; p.write_text('$(CURDIR)/dev/cpu_stubs\n')"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

demo: $(STAMP)
	$(PY) -m gd2po_openrlhf.demo $(DEMO_ARGS)

clean-venv:
	rm -rf $(VENV)
