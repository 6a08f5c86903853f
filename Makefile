# One entry point for the CPU development environment, the tests and the demo.
#   make test   create .venv if missing (torch CPU, openrlhf 0.11.2 without GPU deps, this package
#               editable, import stand-ins for vLLM/flash-attn, DeepSpeed's CPU ops pre-built), then make lint,
#               the unit, ray and subprocess tests (pytest, 2 workers) and the e2e scenarios (make e2e)
#   make test-fast  only the unit tests (in-process, no Ray, no subprocess; about half a minute)
#   make lint   ruff: formatting and lint at 119 columns (pyproject.toml); make format rewrites the files
#   make e2e    OpenRLHF's real launcher (python -m openrlhf.cli.train_ppo_ray) on CPU, scenario by scenario,
#               with the dev/e2e stand-ins for vLLM and torch.cuda (about 4 min warm)
#   make demo   the CPU demo in the same venv: GRPO / GDPO / GD²PO-hard / GD²PO-SNR in four reward settings,
#               5 seeds, 2 worker processes (DEMO_ARGS="--seeds 10 --steps 150" for a longer study; runs/demo)
#   make study  the preregistered study (docs/study-protocol.md): every estimator and control against GDPO in five
#               settings and two group sizes, 10 seeds, paired bootstrap CIs (about 40 min on 2 cores); writes
#               docs/study.md's tables, docs/study-results.json and docs/img/study_*.png (STUDY_ARGS to change it)
#   make venv   only the environment
#   make test-openrlhf VERSION=0.11.x  another OpenRLHF release in its own venv (.venv-openrlhf-VERSION): the drift
#               report (which relied-on OpenRLHF functions changed), the unit tests and e2e scenarios b and g (sync)
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONSTRAINTS := $(CURDIR)/requirements/constraints-cpu.txt
# PIP_CONSTRAINT also reaches the isolated build environments (deepspeed's sdist imports torch).
PIP := PIP_CONSTRAINT=$(CONSTRAINTS) PIP_DISABLE_PIP_VERSION_CHECK=1 $(PY) -m pip install -c $(CONSTRAINTS)
OPENRLHF_VERSION ?= 0.11.2
STAMP := $(VENV)/.gd2po-cpu-env
DS_OPS := $(VENV)/torch_extensions/.built

.PHONY: venv test test-fast lint format e2e demo study clean-venv test-openrlhf

venv: $(STAMP) $(DS_OPS)

$(STAMP): requirements/constraints-cpu.txt requirements/cpu-dev.txt setup.cfg pyproject.toml
	@echo ">> creating the CPU environment in $(VENV) (first run only, a few minutes)"
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -q --upgrade pip setuptools wheel
	$(PIP) -q torch==2.13.0
	$(PIP) -q --no-deps openrlhf==$(OPENRLHF_VERSION)
	@echo ">> openrlhf's GPU-only requirements (flash-attn, vllm, bitsandbytes, ...) are left out on purpose; pip reports them below"
	$(PIP) -q -r requirements/cpu-dev.txt
	$(PIP) -q --no-deps -e .
	@# Stand-ins for vllm/flash_attn go on sys.path after site-packages, so a real install wins.
	$(PY) -c "import site, pathlib; p = pathlib.Path(site.getsitepackages()[0]) / 'zz_gd2po_cpu_stubs.pth'; p.write_text('$(CURDIR)/dev/cpu_stubs\n')"
	touch $(STAMP)

# DeepSpeed JIT-compiles fused_adam and its shm comm op on first use (about 1.5-3.5 min on 2 cores): done once
# here, into the TORCH_EXTENSIONS_DIR the e2e harness uses, so e2e timings stay predictable on a fresh machine.
$(DS_OPS): $(STAMP)
	DS_ACCELERATOR=cpu TORCH_EXTENSIONS_DIR=$(CURDIR)/$(VENV)/torch_extensions $(PY) dev/e2e/prebuild_deepspeed_ops.py
	touch $(DS_OPS)

test: $(STAMP) $(DS_OPS)
	$(MAKE) lint
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not e2e" tests
	$(MAKE) e2e

test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 -m unit tests

lint: $(STAMP)
	$(PY) -m ruff format --check .
	$(PY) -m ruff check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

e2e: $(STAMP) $(DS_OPS)
	$(PY) -m pytest -q -m e2e tests

# The drift report's exit status does not stop the job: the tests say what a changed function breaks.
test-openrlhf:
	@test -n "$(VERSION)" || { echo "usage: make test-openrlhf VERSION=0.11.2 (an openrlhf release on the registry)"; exit 2; }
	$(MAKE) venv VENV=.venv-openrlhf-$(VERSION) OPENRLHF_VERSION=$(VERSION)
	-.venv-openrlhf-$(VERSION)/bin/python -m gd2po_openrlhf.integration.openrlhf_patches
	.venv-openrlhf-$(VERSION)/bin/python -m pytest -q -n 2 -m unit tests
	.venv-openrlhf-$(VERSION)/bin/python -m pytest -q -m e2e tests/test_e2e_launcher.py -k "test_b_ or test_g_ and sync and not async"

demo: $(STAMP)
	$(PY) -m gd2po_openrlhf.demo $(DEMO_ARGS)

study: $(STAMP)
	$(PY) -m gd2po_openrlhf.demo.study --docs docs $(STUDY_ARGS)

clean-venv:
	rm -rf $(VENV)
