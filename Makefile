# Everything a fresh clone needs: `make demo` runs the tool on the sample data, `make test` the tests.
# TORCH is the one place the torch build is chosen; the default is the CPU build this machine has on
# disk. Elsewhere, e.g.:  make test TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PYTEST_ARGS ?= -n 2 --dist loadgroup
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test bench lint golden clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e '.[test,zarr,dask]'
	touch $(STAMP)

demo: install
	mkdir -p build/demo
	$(BIN)/deconv3d inspect sample_data/phantom.nii.gz
	$(BIN)/deconv3d upsample sample_data/phantom.nii.gz -o build/demo/phantom_x2.nii.gz \
	    --spec sample_data/sample_spec.yaml --overwrite --preview build/demo/preview.png
	$(BIN)/deconv3d upsample sample_data/phantom.npy -o build/demo/phantom_up_tiled.npy \
	    --spec sample_data/sample_spec.yaml --overwrite --memory-limit 8MiB --json > build/demo/report.json
	@echo "demo outputs in build/demo/: phantom_x2.nii.gz, preview.png (input and output mid-slices), report.json"

test: install
	$(BIN)/python -m pytest $(PYTEST_ARGS) -q
	$(MAKE) --no-print-directory lint

# Peers (tensorflow-cpu, tf-keras, SimpleITK, scipy, psutil) come from the `bench` extra, installed here only;
# mrgrid rows need MRtrix3 (Debian: apt install mrtrix3) and are skipped without it. Every side-by-side
# script prints the load average it ran under; `make bench BENCH_ARGS=--load` runs them all with the
# bench's fixed competing load (one busy process pinned to one CPU, benchmarks/harness.py).
BENCH_ARGS ?=
bench: install
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python benchmarks/run.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/versus_tf.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/files_bench.py $(BENCH_ARGS)
	$(BIN)/python benchmarks/resample_bench.py --interp linear bspline $(BENCH_ARGS)
	$(BIN)/python benchmarks/stream_bench.py
	$(BIN)/python benchmarks/batch_bench.py
	$(BIN)/python benchmarks/memory_bench.py

# ruff over everything; mypy over run/, io/, geometry/ and engine/ (pyproject's [tool.mypy]).
lint: install
	$(BIN)/ruff check deconv3d_cli tests benchmarks
	$(BIN)/mypy

golden:
	$(PYTHON) -m venv .venv-golden
	.venv-golden/bin/python -m pip install -q h5py PyYAML 'tensorflow-cpu>=2.15' 'tf-keras>=2.15'
	.venv-golden/bin/python tests/golden/make_golden.py
	.venv-golden/bin/python tests/fixtures_import/make_fixtures.py

clean:
	rm -rf build .pytest_cache .ruff_cache
