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
# Prints the lines of one podar --json result: `report JSON` (eval) or `report JSON job` (prune).
report() {
  python3 - "$@" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
f32_bytes = 134_515_008 * 4
if sys.argv[2:] == ["job"]:
    print(f"whole job       {r['seconds']:.1f} s (OptiPFair 0.4.2 load+prune+save on a 2-core AMD EPYC: 19.7-22.0 s warm, scripts/optipfair-time.py)")
else:
    print(f"load            {r['load_seconds']:.2f} s")
    print(f"eval            {r['tokens']} tokens in {r['seconds']:.2f} s = {r['tokens'] / r['seconds']:.0f} tokens/s (PyTorch f32 on 2 cores: ~465)")
    print(f"perplexity      {r['perplexity']:.4f}")
rss = r.get('peak_rss_bytes')
if rss:
    print(f"peak RSS        {rss / 2**20:.0f} MiB = {rss / f32_bytes:.2f}x the f32 model bytes ({f32_bytes / 2**20:.0f} MiB)")
PY
}
report "$out"

# The whole native job the issue measures: load the GGUF, calibrate 64x128 on code, prune 20% MLP,
# recover (with error correction, the default), write the f32 Hugging Face folder.
calib=../shared/corpora/code_calib.txt
[ -f "$calib" ] || calib=www/presets/code-python.txt
job=$(mktemp -d)
trap 'rm -rf "$job"' EXIT
# Calibration precision: the default (bf16 where the CPU's bf16 products are faster), then f32; then
# the default with error correction measured on the unpruned stream instead of estimated.
for variant in "auto" "f32" "auto --error-estimate stream"; do
  set -- $variant
  precision=$1; shift
  echo "== podar prune, $calib, 64x128, 20% MLP, default recovery $*, f32 folder, --calib-precision $precision"
  out=$(./target/release/podar prune "$model" --calib "$calib" --mlp 0.2 --calib-precision $precision "$@" --out "$job/m" --force --json)
  python3 -c "import json; m = json.load(open('$job/m/podar-report.json'))['method']; print('precision      ', m['calib_precision'], '/ error estimate', m['error_estimate'])"
  report "$out" job
done
