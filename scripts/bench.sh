#!/usr/bin/env bash
# Prints speed and memory numbers for the default model (not a test): load time, eval tokens/s over
# the code corpus (first 2048 ids = 4 windows of 512 unless BENCH_TOKENS says otherwise), peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
ids=../shared/corpora/code_eval.ids.json
n=${BENCH_TOKENS:-2048}
if [ ! -f "$ids" ]; then
  echo "bench: ../shared/corpora not found; using 2048 ids of this repo's README text" >&2
  ids=""
fi
echo "== podar eval, $model, ctx 512, $n tokens"
if [ -n "$ids" ]; then
  out=$(./target/release/podar eval "$model" --ids "$ids" --max-tokens "$n" --json)
else
  yes "$(cat README.md)" | head -c 400000 > /tmp/podar-bench.txt
  out=$(./target/release/podar eval "$model" --text /tmp/podar-bench.txt --max-tokens "$n" --json)
fi
python3 - "$out" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
f32_bytes = 134_515_008 * 4
print(f"load            {r['load_seconds']:.2f} s")
print(f"eval            {r['tokens']} tokens in {r['seconds']:.2f} s = {r['tokens'] / r['seconds']:.0f} tokens/s (PyTorch f32 on 2 cores: ~465)")
print(f"perplexity      {r['perplexity']:.4f}")
rss = r.get('peak_rss_bytes')
if rss:
    print(f"peak RSS        {rss / 2**20:.0f} MiB = {rss / f32_bytes:.2f}x the f32 model bytes ({f32_bytes / 2**20:.0f} MiB)")
PY
