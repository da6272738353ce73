# Set-up and common jobs. Everything lands in .venv; system packages are listed in README.md.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
DEVICE ?= cpu            # cpu -> onnxruntime, cuda -> onnxruntime-gpu (never both in one venv)
ORT_EXTRA := $(if $(filter cuda,$(strip $(DEVICE))),gpu,cpu)
ARGS   ?=

.PHONY: live test model export bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# The live app alone: no torch.
$(VENV)/.live-$(ORT_EXTRA): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e '.[$(ORT_EXTRA)]'
	touch $@

# Everything: training, export, tests. torch is pinned to the CPU build on purpose.
$(VENV)/.dev-$(ORT_EXTRA): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q 'torch==2.13.0' -e '.[$(ORT_EXTRA),train,test]'
	touch $@

live: $(VENV)/.live-$(ORT_EXTRA)
	$(BIN)/avtca-live --device $(strip $(DEVICE)) $(ARGS)

test: $(VENV)/.dev-$(ORT_EXTRA)
	$(BIN)/python -m pytest -q $(ARGS)

export: $(VENV)/.dev-$(ORT_EXTRA)
	$(BIN)/avtca-export --init live -o exported/avtca.onnx

clean:
	rm -rf $(VENV) build *.egg-info
