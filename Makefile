# Two commands matter:  make demo  (collect -> train -> evaluate on the embedded default)
#                       make test  (ruff, then the test suite, heavy checks excluded)
# Both create .venv with Python 3.12 and install everything on first use.

VENV    ?= .venv
PYTHON  ?=
PY      := $(VENV)/bin/python
VLA     := $(VENV)/bin/vla
STAMP   := $(VENV)/.installed
export MUJOCO_GL ?= egl
export HF_HUB_OFFLINE ?= 1

# The demo runs one measured recipe (configs/recipe/dita-demo.yaml, built on dita-cpu.yaml:
# its data, model and training settings, each explained there): 100 expert demos with DART
# noise and recovered wrong grasps, collected over two workers, then a CPU-sized Dita. It keeps
# to DEMO_MINUTES whatever the machine's speed that day: training gets what is left after the
# collection, less DEMO_RESERVE seconds for its start-up (the feature cache) and the evaluation
# (~6.5 minutes on 2 cores), at most the recipe's train.max_seconds (14 minutes) and at least 8.
# Add overrides with DEMO_ARGS, e.g. make demo DEMO_ARGS="train.max_seconds=1200".
DEMO_DIR      ?= outputs/demo
DEMO_RECIPE   ?= dita-demo
DEMO_ARGS     ?=
DEMO_MINUTES  ?= 25
DEMO_RESERVE  ?= 450
EVAL_EPISODES ?= 50

.PHONY: setup demo test lint test-slow benchmarks bench-deploy bench-envs robosuite-lift stack quality clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || { P="$(PYTHON)"; [ -n "$$P" ] || P=$$(sh .ci/find-python312) || exit 1; \
	    echo "creating $(VENV) with $$P"; "$$P" -m venv $(VENV); }
	@$(PY) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' || { echo "error: $(VENV) is not Python 3.12; delete it and rerun" >&2; exit 1; }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	# robosuite 1.5.2 pins mink==0.0.5, whose numpy<2 pin conflicts with lerobot; both work on numpy 2.
	$(PY) -m pip install -q --no-deps robosuite==1.5.2 mink==0.0.5
	sh .ci/system-deps
	touch $(STAMP)

demo: setup
	rm -rf $(DEMO_DIR) && mkdir -p $(DEMO_DIR) && date +%s > $(DEMO_DIR)/started  # always from scratch
	$(VLA) collect recipe=$(DEMO_RECIPE) env=lift dataset.root=$(DEMO_DIR)/data dataset.repo_id=local/lift $(DEMO_ARGS)
	left=$$(( $(DEMO_MINUTES) * 60 - $(DEMO_RESERVE) - $$(date +%s) + $$(cat $(DEMO_DIR)/started) )); \
	cap=$$($(VLA) train recipe=$(DEMO_RECIPE) $(DEMO_ARGS) --print-config | awk '$$1 == "max_seconds:" && !n {print int($$2); n = 1}'); \
	[ "$${cap:-0}" -gt 0 ] || cap=$$left; \
	budget=$$(( left > cap ? cap : (left < 480 ? 480 : left) )); echo "training for $$budget s (the recipe's cap: $$cap s)"; \
	$(VLA) train recipe=$(DEMO_RECIPE) env=lift dataset.root=$(DEMO_DIR)/data dataset.repo_id=local/lift \
	    output_dir=$(DEMO_DIR)/run train.max_seconds=$$budget $(DEMO_ARGS)
	$(VLA) eval env=lift output_dir=$(DEMO_DIR)/run eval.episodes=$(EVAL_EPISODES)

# ruff first (config in pyproject.toml): a lint finding fails `make test` before pytest runs.
test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q --durations=30

lint: setup
	$(VENV)/bin/ruff check .

test-slow: setup
	$(PY) -m pytest -q -m slow

benchmarks: setup
	$(PY) -m benchmarks.latency
	$(PY) -m benchmarks.train_throughput
	$(PY) -m benchmarks.data_loading

# Deploy benchmarks on the demo's checkpoint (run `make demo` first): the fault-injection suite,
# and success / loop timing through each bridge to the digital twin against a sim rollout.
bench-deploy: setup
	PYTHONPATH=. $(PY) -m benchmarks.fault_injection --checkpoint $(DEMO_DIR)/run
	PYTHONPATH=. $(PY) -m benchmarks.deploy_twin --checkpoint $(DEMO_DIR)/run --episodes 30

# Env steps/s for 1 vs N vectorized envs, with and without cameras, and gym-pusht vs LeRobot's make_env.
bench-envs: setup
	PYTHONPATH=. $(PY) -m benchmarks.env_throughput
# The demo's recipe on robosuite's own Lift task (issue 6's evidence run, measured with DART
# demos only, 150 of them, and 8,000 steps, so those stay pinned here).
RS_DIR ?= outputs/robosuite-lift
robosuite-lift: setup
	rm -rf $(RS_DIR)
	$(VLA) collect recipe=dita-cpu env=robosuite-lift collect.episodes=150 collect.grasp_mistakes=0 \
	    dataset.root=$(RS_DIR)/data dataset.repo_id=local/robosuite_lift
	$(VLA) train recipe=dita-cpu env=robosuite-lift dataset.root=$(RS_DIR)/data dataset.repo_id=local/robosuite_lift \
	    output_dir=$(RS_DIR)/run train.steps=8000
	$(VLA) eval env=robosuite-lift output_dir=$(RS_DIR)/run eval.episodes=$(EVAL_EPISODES)

# The stack recipe (configs/recipe/dita-stack.yaml): 200 demonstrations with recovered grasps,
# releases and misaligned descents (~25 min over two workers), 20 minutes of training, 50
# evaluation episodes; 93% [87, 96] over three training seeds on a 2-core CPU (docs/quality.md).
STACK_DIR ?= outputs/stack
stack: setup
	rm -rf $(STACK_DIR)
	$(VLA) collect recipe=dita-stack env=stack dataset.root=$(STACK_DIR)/data dataset.repo_id=local/stack
	$(VLA) train recipe=dita-stack env=stack dataset.root=$(STACK_DIR)/data dataset.repo_id=local/stack \
	    output_dir=$(STACK_DIR)/run
	$(VLA) eval env=stack output_dir=$(STACK_DIR)/run eval.episodes=$(EVAL_EPISODES)

# Learning quality side by side (benchmarks/quality.py): Dita, DUST, OmniJARVIS and LeRobot's
# ACT and DiffusionPolicy, each trained QUALITY_MINUTES on the same data (collected with the
# demo's recipe if missing), evaluated on the same 50 seeds; results accumulate in
# benchmarks/quality.json, so a long comparison can be split across sittings.
# e.g. make quality QUALITY_TASK=stack QUALITY_SEEDS="0 1 2"
QUALITY_TASK    ?= lift
QUALITY_SEEDS   ?= 0
QUALITY_MINUTES ?= 20
QUALITY_DATA    := outputs/quality/data/$(QUALITY_TASK)
# the data recipe each task was measured with: stack's (dita-stack) adds misaligned descents, 200 demos
QUALITY_RECIPE  ?= $(if $(filter stack,$(QUALITY_TASK)),dita-stack,dita-cpu)
quality: setup
	test -f $(QUALITY_DATA)/meta/info.json || $(VLA) collect recipe=$(QUALITY_RECIPE) env=$(QUALITY_TASK) \
	    dataset.root=$(QUALITY_DATA) dataset.repo_id=local/$(QUALITY_TASK)
	PYTHONPATH=. $(PY) -m benchmarks.quality --task $(QUALITY_TASK) --dataset $(QUALITY_DATA) \
	    --env env=$(QUALITY_TASK) --seeds $(QUALITY_SEEDS) --budget-minutes $(QUALITY_MINUTES)

clean:
	rm -rf outputs .pytest_cache
