# sn_mm developer entry points. Everything installs into ./.venv (idempotent: each
# step is skipped when its stamp is newer than its inputs).
#
#   make demo       install, then train + evaluate Mask R-CNN with SN on built-in demo data
#   make test       install, then run the test suite (what CI runs)
#   make demo-seg   DeepLabV3 with SN on Cityscapes- and ADE20K-layout demo data
#   make study      the small-scale study of what SN layers learn (tools/study.py)
#   make bench      speed/memory of SN vs BatchNorm/GroupNorm, and a Mask R-CNN step
#
# PYTHON selects the interpreter the venv is made from (Python 3.11 is tested).

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
PIP     = $(PY) -m pip
CONSTRAINTS = -c requirements/constraints.txt
PYTEST_ARGS ?=

.PHONY: install demo demo-seg compare-det compare-seg study bench test clean-venv

install: $(VENV)/.stamp-sn_mm

$(VENV)/.stamp-venv:
	$(PYTHON) -m venv $(VENV)
	touch $@

# torch first (CPU build; a GPU user installs the CUDA build instead, see README),
# then the build tools mmcv's setup.py needs, then mmcv built from source with its
# compiled ops (pip caches the built wheel, so this is slow only once per machine).
$(VENV)/.stamp-mmcv: $(VENV)/.stamp-venv requirements/constraints.txt
	$(PIP) install $(CONSTRAINTS) torch==2.13.0
	$(PIP) install $(CONSTRAINTS) "setuptools>=77.0.3,<81" wheel ninja
	MAX_JOBS=$${MAX_JOBS:-2} $(PIP) install $(CONSTRAINTS) --no-build-isolation mmcv==2.1.0
	touch $@

# sn_mm itself, editable, with its compiled CPU kernel (SN_MM_WITH_OPS=0 skips it).
$(VENV)/.stamp-sn_mm: $(VENV)/.stamp-mmcv requirements/runtime.txt requirements/tests.txt \
		setup.py sn_mm/ops/csrc/sn_cpu.cpp
	$(PIP) install $(CONSTRAINTS) -r requirements/runtime.txt -r requirements/tests.txt
	$(PIP) install $(CONSTRAINTS) --no-build-isolation --use-pep517 --no-deps -e .
	$(PY) -c "import sn_mm, mmcv.ops, mmdet, mmseg; print('sn_mm', sn_mm.__version__, 'ready')"
	touch $@

demo: install
	$(PY) tools/demo.py

demo-seg: install
	$(PY) tools/demo_seg.py

# every normalizer over seeds 0 1 2 (resumable: run again after an interruption); the
# means +- std go to docs/demo_expected.json, which make demo / demo-seg print beside
compare-det: install
	$(PY) tools/compare_norms_det.py --write-expected docs/demo_expected.json

compare-seg: install
	$(PY) tools/compare_norms_seg.py --write-expected docs/demo_expected.json

study: install
	$(PY) tools/study.py --workers 2

bench: install
	$(PY) bench/bench_sn.py
	$(PY) bench/bench_mask_rcnn.py

test: install
	$(PY) -m pytest tests $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
