# make all   - install, run P1..P5 at full quality, rebuild the report (trained checkpoints are reused)
# make handin - the hand-in into handin/: the report notebook and page, and the denoised te files zipped
# make test  - install, run the autograder (fast tests; `make test-slow` runs the slow ones: tests/test_slow.py's trainings, and the slowest subprocess and signal cases)
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python

.PHONY: all install test test-slow p1 p2 p3 p4 p5 report handin bench dry-run clean-runs

all: install p1 p2 p3 p4 p5 bench report

install: $(VENV)/.installed
$(VENV)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	@# librosa (the tests' STFT reference) compiles its numba kernels on first use, 18 s, and caches them in the venv
	$(PY) -c "import numpy, librosa; librosa.istft(librosa.stft(numpy.zeros(4096, dtype=numpy.float32)))"
	touch $@

p1: install
	$(PY) p1_svd.py
p2: install
	$(PY) p2_factorized.py
p3: install
	$(PY) p3_svd_ste.py
p4: install
	$(PY) p4_denoise.py
p5: install
	$(PY) p5_draw.py
bench: install
	$(PY) benchmarks/rank_forward.py
	$(PY) benchmarks/train_step.py
	$(PY) benchmarks/p3_svd_step.py
	$(PY) benchmarks/p4_realtime.py
report: install
	$(PY) make_report.py
# the hand-in: handin/report.ipynb, handin/report.html and handin/te_denoised.zip (the te files denoised by the
# committed model results/p4/denoiser.pt), from results/ as they are, in seconds
handin: install
	$(PY) make_report.py --handin handin

test: install
	$(PY) -m pytest
test-slow: install
	$(PY) -m pytest -m slow

dry-run: install
	for s in p1_svd p2_factorized p3_svd_ste p4_denoise p5_draw; do $(PY) $$s.py --dry-run || exit 1; done
	$(PY) benchmarks/rank_forward.py --dry-run
	$(PY) benchmarks/train_step.py --dry-run
	$(PY) benchmarks/p3_svd_step.py --dry-run
	$(PY) benchmarks/p4_realtime.py --dry-run
	$(PY) make_report.py --dry-run

clean-runs:
	rm -rf runs
