# Two commands on a fresh machine:  make demo  ·  make test
# Everything runs inside the project's own virtual environment (.venv), created on first use.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The CPU wheel of PyTorch. On a CUDA machine: make install TORCH=torch (takes the CUDA build).
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed-stamp
OUT    ?= runs/demo
NB_OUT ?= runs/notebooks
COURSE := 01_data_loading 02_encoder_setup 03_contrastive_loss 04_training 05_similarity_evaluation \
          06_search_at_scale

# Every default works offline: the pretrained towers ship as a Python package.
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export MPLBACKEND ?= Agg

.PHONY: install demo test lint format notebooks repo-url colab-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev,bench,course]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m qa_lib quickstart --out $(OUT) --overwrite

test: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m pytest
	# the notebooks in smoke mode, cell by cell; one thread is as fast for their tiny models
	# and does not stall when other jobs share the CPU
	QA_RUN_MODE=smoke OMP_NUM_THREADS=1 $(BIN)/python -m pytest --nbval-lax --nbval-current-env \
		--nbval-sanitize-with tests/nbval_sanitize.cfg notebooks/

# Execute the course in order, full mode, into $(NB_OUT)/ (05 evaluates the model 04 saves in
# runs/notebooks/04_training/). QA_PROGRESS=0: no progress bars in the outputs to commit.
notebooks: $(STAMP)
	mkdir -p $(NB_OUT)
	for nb in $(COURSE); do \
		QA_RUN_MODE=full QA_PROGRESS=0 $(BIN)/papermill notebooks/$$nb.ipynb $(NB_OUT)/$$nb.ipynb -k python3 || exit 1; \
	done

# The course as Colab runs it (tests/test_colab.py, minutes): a fresh venv, torch, a non-editable
# install of "qa_lib[course]" from this checkout, every notebook in smoke mode outside the repo.
colab-check: $(STAMP)
	TORCH="$(TORCH)" $(BIN)/python -m pytest -m slow tests/test_colab.py

# After changing [project.urls] Repository in pyproject.toml: rewrite the notebooks' Colab badges
# and install cells and the README's badges to match (tests/test_repo_url.py checks them).
repo-url:
	$(PYTHON) tools/repo_url.py

lint: $(STAMP)
	$(BIN)/python -m ruff check .
	$(BIN)/python -m ruff format --check qa_lib tests benchmarks

format: $(STAMP)
	$(BIN)/python -m ruff check --fix .
	$(BIN)/python -m ruff format qa_lib tests benchmarks

clean:
	rm -rf runs .pytest_cache .ruff_cache
