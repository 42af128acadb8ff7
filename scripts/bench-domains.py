#!/usr/bin/env python3
"""Pruning quality on the benchmark's ten domains (bench/corpora/), beside OptiPFair's
(bench/optipfair.json, made by scripts/optipfair-domains.py). Not a test: `make bench` runs it.

For each domain and MLP fraction (20%, 40%): `podar prune` SmolLM2-135M with its defaults,
calibrated on 64 x 128 tokens of the domain's calib.txt, then `podar eval --ctx 512 --max-tokens
8192` on tune.txt and heldout.txt. Prints podar's perplexity, OptiPFair's, and their ratio for each
half, the geometric mean of the ratios, and whether the goals hold on the held-out half (20%: every
domain <= 0.90x and the geometric mean <= 0.85x; 40%: every domain <= 0.70x).

Each job runs twice: with the same MLP width in every layer (the default), and with
--mlp-widths per-layer (the same parameter count spread by measured sensitivity, written as a
GGUF); each line prints the per-layer job's perplexities and their ratio to the uniform job's.

tune.txt is where defaults may be chosen; heldout.txt is only reported. Environment:
BENCH_DOMAINS=a,b (a subset), BENCH_FRACTIONS=0.2 (a subset), BENCH_ARGS="--score energy" (extra
prune flags, to compare a choice on the tuning half), BENCH_WIDTHS=uniform (skip the per-layer
jobs), BENCH_JSON=FILE (write the rows there too).
"""
import json
import math
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PODAR = os.path.join(ROOT, "target/release/podar")
MODEL = os.path.join(ROOT, "models/SmolLM2-135M-Instruct.Q4_1.gguf")
CORPORA = os.path.join(ROOT, "bench/corpora")
GOALS = {"0.2": (0.90, 0.85), "0.4": (0.70, None)}
HALVES = ("tune", "heldout")


def podar(*args):
    out = subprocess.run([PODAR, *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def ppl(model, domain, half):
    # A GGUF output (per-layer widths) is the folder's model.gguf.
    if os.path.exists(os.path.join(model, "model.gguf")):
        model = os.path.join(model, "model.gguf")
    return podar("eval", model, "--text", os.path.join(CORPORA, domain, f"{half}.txt"), "--ctx", "512",
                 "--max-tokens", "8192", "--json")["perplexity"]


def geomean(xs):
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")


def main():
    ref = json.load(open(os.path.join(ROOT, "bench/optipfair.json")))["domains"]
    domains = os.environ.get("BENCH_DOMAINS", "").split(",") if os.environ.get("BENCH_DOMAINS") else sorted(ref)
    fractions = os.environ.get("BENCH_FRACTIONS", "0.2,0.4").split(",")
    extra = os.environ.get("BENCH_ARGS", "").split()
    per_layer = "per-layer" in os.environ.get("BENCH_WIDTHS", "uniform,per-layer").split(",")
    rows = {}
    gains = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "m")
        print(f"bench-domains: SmolLM2-135M, own-domain calibration 64x128, podar defaults {' '.join(extra)}".rstrip())
        print(f"{'domain':11} {'MLP':>4} | {'tune: podar':>11} {'OptiPFair':>9} {'ratio':>6} | {'heldout: podar':>14} {'OptiPFair':>9} {'ratio':>6} | {'base tune/heldout':>17}")
        for d in domains:
            base = {h: ppl(MODEL, d, h) for h in HALVES}
            for f in fractions:
                podar("prune", MODEL, "--calib", os.path.join(CORPORA, d, "calib.txt"), "--mlp", f, *extra,
                      "--out", out, "--force", "--json")
                got = {h: ppl(out, d, h) for h in HALVES}
                theirs = ref[d][f]
                ratio = {h: got[h] / theirs[h] for h in HALVES}
                rows.setdefault(f, {})[d] = {"podar": got, "optipfair": {h: theirs[h] for h in HALVES}, "ratio": ratio, "base": base}
                print(f"{d:11} {float(f):4.0%} | {got['tune']:11.2f} {theirs['tune']:9.2f} {ratio['tune']:6.3f} | "
                      f"{got['heldout']:14.2f} {theirs['heldout']:9.2f} {ratio['heldout']:6.3f} | {base['tune']:8.2f}/{base['heldout']:.2f}",
                      flush=True)
                if per_layer:
                    podar("prune", MODEL, "--calib", os.path.join(CORPORA, d, "calib.txt"), "--mlp", f, *extra,
                          "--mlp-widths", "per-layer", "--format", "gguf", "--dtype", "f32", "--out", out, "--force", "--json")
                    pl = {h: ppl(out, d, h) for h in HALVES}
                    gain = {h: pl[h] / got[h] for h in HALVES}
                    gains.setdefault(f, {})[d] = gain
                    rows[f][d]["per_layer"] = pl
                    print(f"{'  per-layer':11} {float(f):4.0%} | {pl['tune']:11.2f} {'':9} {gain['tune']:6.3f} | "
                          f"{pl['heldout']:14.2f} {'':9} {gain['heldout']:6.3f} | (ratio to uniform widths)", flush=True)
    print()
    for f, by in rows.items():
        each, mean = GOALS.get(f, (None, None))
        for h in HALVES:
            rs = [r["ratio"][h] for r in by.values()]
            worst = max(by, key=lambda d: by[d]["ratio"][h])
            line = f"{float(f):.0%} {h:8}: geometric mean {geomean(rs):.3f}x OptiPFair, worst {by[worst]['ratio'][h]:.3f}x ({worst})"
            if h == "heldout" and each is not None:
                held = all(r <= each for r in rs) and (mean is None or geomean(rs) <= mean)
                goal = f"every domain <= {each}x" + (f", mean <= {mean}x" if mean else "")
                line += f"  goal ({goal}): {'met' if held else 'NOT met'}"
            print(line)
    for f, by in gains.items():
        for h in HALVES:
            print(f"{float(f):.0%} {h:8}: per-layer widths {geomean([g[h] for g in by.values()]):.3f}x the uniform job's perplexity (geometric mean)")
    if os.environ.get("BENCH_JSON"):
        json.dump(rows, open(os.environ["BENCH_JSON"], "w"), indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
