#!/usr/bin/env bash
# Pruning quality and time on ../shared/corpora (not a test): for each method and ratio, calibrate
# on one domain, prune SmolLM2-135M, and print the perplexity on every evaluation domain next to
# OptiPFair's. BENCH_PRUNE=full runs every calibration domain; the default runs code calibration only.
# BENCH_METHODS and BENCH_RATIOS choose the rows (defaults below).
set -euo pipefail
cd "$(dirname "$0")/.."
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
corp=../shared/corpora
if [ ! -d "$corp" ]; then
  echo "bench-prune: ../shared/corpora not found; nothing to measure" >&2
  exit 0
fi
domains="code prose german"
calibs=${BENCH_CALIB:-code}
[ "${BENCH_PRUNE:-}" = full ] && calibs="code prose german"
methods=${BENCH_METHODS:-"maw energy optipfair obs"}
ratios=${BENCH_RATIOS:-"0.1 0.2 0.4"}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
ppl() { ./target/release/podar eval "$1" --ids "$corp/$2_eval.ids.json" --json | python3 -c 'import json,sys; print("%.2f" % json.load(sys.stdin)["perplexity"])'; }
printf '%-28s %6s %8s %8s %8s %8s\n' run calib code prose german seconds
printf '%-28s %6s %8s %8s %8s %8s\n' base - $(for d in $domains; do ppl "$model" "$d"; done) -
for c in $calibs; do
  for m in $methods; do
    for r in $ratios; do
      for rec in "" "--error-estimate stream" "--correct 0" "--no-recover"; do
        [ "$m" = maw ] && [ "$rec" != --no-recover ] && continue   # static scores have no calibration to recover on
        args=(--mlp "$r" --score "$m" $rec)
        [ "$m" != maw ] && args+=(--calib "$corp/${c}_calib.txt")
        t0=$(date +%s.%N)
        ./target/release/podar prune "$model" "${args[@]}" --out "$out/m" --force --json >/dev/null 2>&1
        t1=$(date +%s.%N)
        case "$rec" in --no-recover) tag=" norec" ;; --correct*) tag=" nocorrect" ;; --error*) tag=" stream" ;; *) tag="" ;; esac
        name="$m $r$tag"
        printf '%-28s %6s %8s %8s %8s %8.1f\n' "$name" "$c" $(for d in $domains; do ppl "$out/m" "$d"; done) "$(python3 -c "print($t1 - $t0)")"
      done
    done
  done
  # Depth and heads, with code calibration only (as OptiPFair's depth numbers).
  [ "$c" = code ] || continue
  for depth in "--drop-layers 2" "--drop-layers 6" "--drop-block 2" "--drop-block 6" "--heads 0.34"; do
    t0=$(date +%s.%N)
    ./target/release/podar prune "$model" --calib "$corp/${c}_calib.txt" $depth --out "$out/m" --force --json >/dev/null 2>&1
    t1=$(date +%s.%N)
    printf '%-28s %6s %8s %8s %8s %8.1f\n' "${depth#--}" "$c" $(for d in $domains; do ppl "$out/m" "$d"; done) "$(python3 -c "print($t1 - $t0)")"
  done
done
echo
echo "OptiPFair 0.4.2 (../shared/corpora/README.md), code / prose / german:"
echo "  static MAW 20%: 155.6 / 890.5 / 311.2;  data-driven own-domain 10/20/40%: code 12.62/14.52/22.87"
echo "  cross-domain 20%: code-calibrated 14.52/42.41/77.67, prose-calibrated 25.13/30.94/106.1, german-calibrated 20.26/44.85/45.22"
echo "  drop 2 / 6 least important layers (code calibration): 15.00 / 32.41 / 63.64 and 30.13 / 55.34 / 146.5"
