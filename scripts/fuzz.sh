#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (libFuzzer through cargo-fuzz, with AddressSanitizer), one
# after another, and prints the executions each reached. A crash, an input that takes over 1 s, or
# an allocation over 1 GiB fails the run; libFuzzer leaves the input in fuzz/artifacts/TARGET/.
# Usage: [FUZZ_TIMEOUT=1] scripts/fuzz.sh SECONDS NIGHTLY [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
secs="$1"; nightly="$2"; shift 2
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(gguf gguf_tokenizer safetensors config tokenizer_json chat_template zip http)
if ! command -v cargo-fuzz >/dev/null; then
  echo "installing cargo-fuzz (a few minutes, once)"
  cargo install cargo-fuzz --locked
fi
[ -d fuzz/corpus ] || bash fuzz/seeds.sh

cargo +"$nightly" fuzz build --release >/dev/null
printf '%-16s %12s %10s %8s\n' target executions exec/s corpus
failed=0
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
  dict=()
  case $t in gguf|gguf_tokenizer) dict=(-dict=fuzz/gguf.dict) ;; esac
  log="fuzz/artifacts/$t/last-run.log"
  if ! cargo +"$nightly" fuzz run --release "$t" "fuzz/corpus/$t" -- -max_total_time="$secs" -timeout="${FUZZ_TIMEOUT:-1}" \
      -rss_limit_mb=2048 -malloc_limit_mb=1024 -print_final_stats=1 "${dict[@]}" >"$log" 2>&1; then
    failed=1
    echo "FUZZ FAILURE in $t: see $log"
    grep -m5 -E 'ERROR|panicked|timeout|malloc|Test unit written' "$log" || tail -20 "$log"
  fi
  execs=$(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  rate=$(grep -m1 -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  printf '%-16s %12s %10s %8s\n' "$t" "$execs" "$rate" "$(find "fuzz/corpus/$t" -type f | wc -l)"
done
exit $failed
