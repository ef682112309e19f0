# Two commands set up a fresh machine (python3 and pip only): `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: install demo test test-slow lint bench bench-device device-dry-run device-bundle zoo zoo-dry-run clean

$(STAMP): pyproject.toml constraints.txt
	@# headless rendering of MuJoCo videos (esrl evaluate --video) uses Mesa's EGL; install it where missing
	@if ! ldconfig -p 2>/dev/null | grep -q libEGL_mesa; then \
		if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
			apt-get install -y -q libegl1 libegl-mesa0 libgl1 >/dev/null || echo "note: could not install Mesa EGL"; \
		else echo "note: MuJoCo videos need Mesa EGL (apt-get install libegl1 libegl-mesa0 libgl1)"; fi; fi
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The main job end to end on the embedded default (local processes): ES against A3C on
# CartPole-v1 at 1 and 2 workers, 2 seeds each, then the scaling report.
demo: $(STAMP)
	rm -rf sweeps/demo
	$(BIN)/esrl sweep --algos es,a3c --env CartPole-v1 --workers 1,2 --seeds 2 --backend processes \
		--max-seconds 60 --out sweeps/demo
	$(BIN)/esrl report sweeps/demo

# The default suite (under 15 minutes on 2 cores). pytest's exit code 5 (no tests) is not a failure.
test: $(STAMP)
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

# Slow tests: repeated solves over seeds, long runs.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python benchmarks/es_throughput.py
	$(BIN)/python benchmarks/time_to_solve.py --algos es,a3c,dqn
	$(BIN)/python benchmarks/rl_throughput.py

# The measured zoo table (docs/zoo.md): many hours. One file per env class; a slice run again
# skips the runs its file holds (resumable). ZOO_CLASSES=box2d make zoo runs one class.
ZOO_CLASSES ?= classic box2d mujoco atari
zoo: $(STAMP)
	$(BIN)/pip install -q -c constraints.txt -e '.[bench]'  # the SB3 rows: Stable-Baselines3 at the version they ran with
	status=0; for c in $(ZOO_CLASSES); do \
		$(BIN)/python benchmarks/zoo.py --class $$c --out benchmarks/results/zoo-$$c.jsonl || status=1; done; \
	$(BIN)/python benchmarks/zoo.py render benchmarks/results/zoo-*.jsonl --doc docs/zoo.md; exit $$status

zoo-dry-run: $(STAMP)
	rm -rf runs/zoo-dry && $(BIN)/python benchmarks/zoo.py --dry-run --out runs/zoo-dry/zoo.jsonl --runs-dir runs/zoo-dry

# The accelerator machine's suite (benchmarks/device_suite.py): under 8 minutes, every part capped at 3.
# There it runs on the machine's own python3 and torch, with the wheels of `make device-bundle`:
#   PYTHONUNBUFFERED=1 python3 benchmarks/device_suite.py --out /tmp/device --archive $OUT/device-suite.tar.gz
DEVICE_PY ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
DEVICE_OUT ?= runs/device-$(shell date +%Y%m%d-%H%M%S)
bench-device:
	$(DEVICE_PY) benchmarks/device_suite.py --out $(DEVICE_OUT)

# The same suite with tiny sizes on the CPU (CUDA rows skipped with the reason); tests/test_device_suite.py runs it too.
device-dry-run: $(STAMP)
	rm -rf runs/device-dry-run
	$(BIN)/python benchmarks/device_suite.py --dry-run --out runs/device-dry-run

# Wheels the device machine lacks (Python 3.12, manylinux x86-64; it has no package index), into .device-bundle/
device-bundle: $(STAMP)
	$(BIN)/python benchmarks/device_suite.py --bundle .device-bundle

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
