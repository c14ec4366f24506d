# distft: every target sets up .venv first (quick when already done).
PY := .venv/bin/python

.PHONY: setup demo test test-jit unit bench clean

setup:
	@bash scripts/setup.sh

demo: setup
	$(PY) -m distft demo

test: setup
	$(PY) -m pytest -v -rA --durations=25 -n 2 --dist loadfile tests

# The whole suite with XLA compiling every step's compute (--jit's default; --sync_bn excepted).
test-jit: setup
	DISTFT_JIT=on $(PY) -m pytest -v -rA --durations=25 tests

unit: setup
	$(PY) -m pytest -v -m "not multiworker" tests

bench: setup
	$(PY) -m benchmarks report

clean:
	rm -rf distft-demo .pytest_cache
