#!/usr/bin/env bash
# make bench-compare: radixserve, radixserve without its radix cache, llama.cpp's llama-server (continuous
# batching, one slot per concurrent request, 8192 tokens of context per slot like radixserve's model length) and
# llama-cpp-python's server, one after another on loopback, on the same GGUF, under the same three workloads
# (shared-prefix, random, json-schema). Results: $OUT/results.jsonl, $OUT/serving.svg, a ratio table per workload
# and a summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${RADIXSERVE_CACHE:-$HOME/.cache/radixserve}
TARGET=$CACHE/target/release
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
OUT=${OUT:-bench-out/compare}
PORT=${PORT:-30200}
CONC=${CONC:-32}
THREADS=${THREADS:-$(nproc)}
SYSTEMS=${SYSTEMS:-"radixserve radixserve-nocache llama-server llama-cpp-python"}
# Extra flags for our server (for instance `--weights quantized-exact`).
RADIXSERVE_FLAGS=${RADIXSERVE_FLAGS:-}
LLAMA_SERVER=$CACHE/llamacpp-0.3.36-avx2/bin/llama-server
BENCH_PY=$CACHE/bench-venv/bin/python
mkdir -p "$OUT"
rm -f "$OUT/results.jsonl"

case " $SYSTEMS " in *llama*) tools/setup.sh llamacpp ;; esac

wait_up() { # url pid name
  for _ in $(seq 1 600); do
    if ! kill -0 "$2" 2>/dev/null; then echo "bench-compare: $3 exited; see $OUT/$3.log" >&2; exit 1; fi
    if curl -sf "$1/v1/models" >/dev/null 2>&1 && curl -sf "$1/health" >/dev/null 2>&1; then return 0; fi
    # llama-cpp-python has no /health.
    if [ "$3" = llama-cpp-python ] && curl -sf "$1/v1/models" >/dev/null 2>&1; then return 0; fi
    sleep 0.5
  done
  echo "bench-compare: $3 did not come up" >&2; exit 1
}

bench() { # label dataset args...
  local label=$1 ds=$2; shift 2
  "$TARGET/bench-serving" --base-url "http://127.0.0.1:$PORT" --label "$label" --dataset "$ds" --tokenizer "$MODEL" \
    --output-jsonl "$OUT/results.jsonl" --outputs-jsonl "$OUT/$label.$ds.outputs.jsonl" "$@" | tee -a "$OUT/$label.txt"
}

for sys in $SYSTEMS; do
  : > "$OUT/$sys.txt"
  case $sys in
    radixserve) "$TARGET/radixserve" serve --model "$MODEL" --port "$PORT" --threads "$THREADS" $RADIXSERVE_FLAGS >"$OUT/$sys.log" 2>&1 & ;;
    radixserve-nocache) "$TARGET/radixserve" serve --model "$MODEL" --port "$PORT" --threads "$THREADS" --disable-radix-cache $RADIXSERVE_FLAGS >"$OUT/$sys.log" 2>&1 & ;;
    llama-server) "$LLAMA_SERVER" -m "$MODEL" --host 127.0.0.1 --port "$PORT" -t "$THREADS" -np "$CONC" -c $((CONC * 8192)) --cont-batching >"$OUT/$sys.log" 2>&1 & ;;
    llama-cpp-python) "$BENCH_PY" -m llama_cpp.server --model "$MODEL" --host 127.0.0.1 --port "$PORT" --n_threads "$THREADS" --n_ctx 8192 >"$OUT/$sys.log" 2>&1 & ;;
    *) echo "unknown system $sys" >&2; exit 2 ;;
  esac
  pid=$!
  trap 'kill $pid 2>/dev/null || true' EXIT
  wait_up "http://127.0.0.1:$PORT" $pid "$sys"
  bench "$sys" generated-shared-prefix --gsp-num-groups 4 --gsp-prompts-per-group 8 --gsp-system-prompt-len 768 \
    --gsp-question-len 32 --gsp-output-len 16 --max-concurrency "$CONC" --ignore-eos
  bench "$sys" random --num-prompts 32 --random-input-len 256 --random-output-len 64 --max-concurrency 16 --ignore-eos
  style=openai
  [ "$sys" = llama-cpp-python ] && style=json-object # its server refuses response_format json_schema
  bench "$sys" json-schema --num-prompts 16 --max-concurrency 8 --structured-output-len 768 --schema-style $style
  kill $pid; wait $pid 2>/dev/null || true
done
"$TARGET/bench-plot" --input "$OUT/results.jsonl" --output "$OUT/serving.svg" | tee "$OUT/summary.txt"
