# Set-up and common jobs. Everything lands in .venv; system packages are listed in README.md.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
DEVICE ?= cpu            # cpu -> onnxruntime, cuda -> onnxruntime-gpu (never both in one venv)
ORT_EXTRA := $(if $(filter cuda,$(strip $(DEVICE))),gpu,cpu)
ARGS   ?=

DATA   ?= ../shared/data
RUNS   ?= runs/live
VOICES := $(DATA)/ravdess/Audio_Speech_16k_Actors_01-20
EVAL   := $(BIN)/avtca-eval --model exported/avtca.onnx
# Extra options for the face stage, e.g. FACE_ARGS="--compile --set stem_pool_stride=1" (a face CNN at twice the
# resolution: about 2 points more on FER2013, but about 4.5 hours here instead of 2; docs/experiments.md).
FACE_ARGS ?=

.PHONY: live test model model-train model-export model-eval export bench clean

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

# The shipped live model: train (face -> voice -> fusion), export, evaluate, write the model card.
model: model-train model-export model-eval

model-train: $(VENV)/.dev-$(ORT_EXTRA)
	$(BIN)/avtca-train --stage face --faces fer2013=$(DATA)/fer2013 --epochs 40 --bf16 --threads 2 $(FACE_ARGS) --out $(RUNS)/face
	$(BIN)/avtca-train --stage voice --init $(RUNS)/face/best.pt --voice ravdess=$(VOICES) --split live \
		--epochs 60 --lr 1e-3 --mixup 0.4 --threads 2 --out $(RUNS)/voice
	$(BIN)/avtca-train --stage fusion --init $(RUNS)/voice/best.pt --faces fer2013=$(DATA)/fer2013 \
		--voice ravdess=$(VOICES) --split live --epochs 12 --lr 5e-4 --pairs-per-voice 2 --extra-faces 64 \
		--flip-average --mixup 0.4 --threads 2 --out $(RUNS)/fusion

# The export ships each stage's history, curves and validation confusion beside the evaluations: the card times
# the training from them when the run folders are not at hand.
model-export: $(VENV)/.dev-$(ORT_EXTRA)
	$(BIN)/avtca-export $(RUNS)/fusion/best.pt -o exported/avtca.onnx
	mkdir -p exported/eval/training
	for s in face voice fusion; do \
		cp $(RUNS)/$$s/history.json exported/eval/training/$${s}_history.json && \
		cp $(RUNS)/$$s/curves.png exported/eval/training/$${s}_curves.png && \
		cp $(RUNS)/$$s/confusion.png exported/eval/training/$${s}_validation_confusion.png || exit 1; \
	done

model-eval: $(VENV)/.dev-$(ORT_EXTRA)
	$(EVAL) --dataset fer2013 --root $(DATA)/fer2013 --split test --ferplus $(DATA)/ferplus --json exported/eval/fer2013_publictest.json --plots exported/eval
	$(EVAL) --dataset ravdess --root $(VOICES) --actors 17-20 --json exported/eval/ravdess_17-20.json --plots exported/eval
	$(EVAL) --dataset paired --face-root $(DATA)/fer2013 --voice-root $(VOICES) --actors 17-20 --json exported/eval/paired.json --plots exported/eval
	$(EVAL) --dataset crema-d --root $(DATA)/crema-d/AudioWAV_16k --json exported/eval/cremad_audio.json
	$(EVAL) --dataset crema-d --av --root $(DATA)/crema-d/VideoFlash --per-item --json exported/eval/cremad_av.json
	$(EVAL) --dataset ravdess --av --root $(DATA)/ravdess/Actor_01_av --per-item --json exported/eval/ravdess_av.json
	$(BIN)/python -m avtca.model.card --model exported/avtca.onnx --eval-dir exported/eval --runs $(RUNS) -o exported/MODEL_CARD.md

export: $(VENV)/.dev-$(ORT_EXTRA)
	$(BIN)/avtca-export --init live -o exported/avtca.onnx

clean:
	rm -rf $(VENV) build *.egg-info
