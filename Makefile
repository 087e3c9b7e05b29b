# The two commands of the README: `make demo` and `make test`. Both create .venv when missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench lint install clean gpu-wheels gpu-check-dry

$(STAMP): pyproject.toml requirements-nodeps.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[data,dev]"
	$(PY) -m pip install --quiet --no-deps -r requirements-nodeps.txt
	# headless Chromium + chromedriver (Debian) for the browser test of the leaderboard page
	(command -v chromium && command -v chromedriver) >/dev/null || { \
		SUDO=$$(test "$$(id -u)" = 0 || echo sudo); $$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver; }
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m zoo demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n 2 --dist loadfile

bench: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m benchmarks

# Wheels the GPU machine lacks, for its Python 3.12 / torch 2.11 (benchmarks/NOTES.md, "GPU check"):
# xformers 0.0.35 (torch>=2.10; attention through PyTorch's own kernels), 3.2 MB, git-ignored.
GPU_WHEELS := xformers==0.0.35
gpu-wheels: $(STAMP)
	$(PY) -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d benchmarks/wheels $(GPU_WHEELS)
	ls -l benchmarks/wheels

gpu-check-dry: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/gpu_check.py --dry-run

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info
