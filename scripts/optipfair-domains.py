#!/usr/bin/env python3
"""OptiPFair's perplexities on the benchmark's domains (bench/corpora/), the reference `make bench`
prints podar's beside. Run by hand; its output, bench/optipfair.json, is committed.

For each domain: OptiPFair 0.4.2's data-driven GLU MLP width pruning (neuron_selection_method="MAW"
with a calibration dataloader: its hybrid score) at 20% and 40%, calibrated on 64 windows x 128
tokens from the start of the domain's calib.txt; perplexity of the base and each pruned model on
the first 8192 tokens of tune.txt and of heldout.txt: 16 windows of 512 scored on their own, no BOS,
exp(mean NLL of the 511 next-token predictions of every window). podar's `eval --ctx 512
--max-tokens 8192` measures the same way.

Usage (in a venv with torch, transformers, optipfair==0.4.2, safetensors):
    python scripts/optipfair-domains.py MODEL_DIR [--out bench/optipfair.json] [--domains a,b]
MODEL_DIR: SmolLM2-135M-Instruct as an f32 Hugging Face folder, e.g. from
`podar prune models/SmolLM2-135M-Instruct.Q4_1.gguf --mlp-size 1536 --out MODEL_DIR` (0% pruning).
"""
import argparse
import copy
import json
import logging
import math
import os
import time

import torch
import transformers
from torch.utils.data import DataLoader, TensorDataset
from transformers import AutoModelForCausalLM, AutoTokenizer

import optipfair
from optipfair import prune_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WINDOWS, WINDOW_LEN, EVAL_TOKENS, EVAL_WINDOW = 64, 128, 8192, 512
FRACTIONS = (0.2, 0.4)


@torch.no_grad()
def perplexity(model, ids):
    ids = ids[: min(len(ids), EVAL_TOKENS) // EVAL_WINDOW * EVAL_WINDOW]
    windows = torch.tensor(ids, dtype=torch.long).view(-1, EVAL_WINDOW)
    nll, n = 0.0, 0
    for batch in windows.split(4):
        logits = model(batch).logits[:, :-1].float()
        logp = torch.log_softmax(logits, dim=-1)
        target = batch[:, 1:]
        nll -= logp.gather(-1, target.unsqueeze(-1)).sum().item()
        n += target.numel()
    return math.exp(nll / n), len(ids)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/optipfair.json"))
    ap.add_argument("--domains", help="comma-separated; default: every folder of bench/corpora")
    args = ap.parse_args()
    logging.getLogger("optipfair").setLevel(logging.WARNING)
    corpora = os.path.join(ROOT, "bench/corpora")
    domains = args.domains.split(",") if args.domains else sorted(
        d for d in os.listdir(corpora) if os.path.isdir(os.path.join(corpora, d)))
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    base = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32)
    base.eval()
    out = {}
    if os.path.exists(args.out):
        out = json.load(open(args.out)).get("domains", {})
    for d in domains:
        text = lambda part: open(os.path.join(corpora, d, f"{part}.txt"), encoding="utf-8").read()
        ids = {p: tok(text(p), add_special_tokens=False)["input_ids"] for p in ("calib", "tune", "heldout")}
        need = WINDOWS * WINDOW_LEN
        if len(ids["calib"]) < need:
            raise SystemExit(f"{d}: calib.txt has {len(ids['calib'])} tokens, {need} needed")
        row = {"tokens": {p: len(v) for p, v in ids.items()}}
        row["base"] = {p: round(perplexity(base, ids[p])[0], 4) for p in ("tune", "heldout")}
        loader = DataLoader(TensorDataset(torch.tensor(ids["calib"][:need]).view(WINDOWS, WINDOW_LEN)), batch_size=8)
        for f in FRACTIONS:
            t0 = time.perf_counter()
            pruned = prune_model(model=copy.deepcopy(base), pruning_type="MLP_GLU", neuron_selection_method="MAW",
                                 pruning_percentage=round(f * 100), dataloader=loader, show_progress=False)
            secs = time.perf_counter() - t0
            row[str(f)] = {p: round(perplexity(pruned, ids[p])[0], 4) for p in ("tune", "heldout")}
            row[str(f)]["intermediate_size"] = pruned.config.intermediate_size
            row[str(f)]["prune_seconds"] = round(secs, 1)
            del pruned
        out[d] = row
        print(d, json.dumps(row), flush=True)
        meta = {"torch": torch.__version__, "transformers": transformers.__version__, "optipfair": optipfair.__version__,
                "model": "SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to an f32 folder)", "calibration": "64 x 128 tokens of calib.txt",
                "score": "MAW with a calibration dataloader (hybrid)", "eval": "first 8192 tokens, 16 windows of 512, no BOS"}
        with open(args.out, "w") as fo:
            json.dump({"meta": meta, "domains": out}, fo, indent=1)


if __name__ == "__main__":
    main()
