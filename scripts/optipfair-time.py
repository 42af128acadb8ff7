#!/usr/bin/env python3
"""Time OptiPFair's data-driven "load + prune + save" for comparison with `podar prune`.

Reference job: uniform GLU MLP width pruning by 20% (1536 -> 1229 neurons for
SmolLM2-135M), OptiPFair's hybrid score (PPM weight range x activation norm,
i.e. neuron_selection_method="MAW" with a calibration dataloader), calibration =
64 windows x 128 tokens cut from the start of CALIB_TXT.

Usage (in a venv with torch, transformers, optipfair==0.4.2, safetensors):

    python scripts/optipfair-time.py MODEL_DIR CALIB_TXT OUT_DIR [--runs N]

MODEL_DIR is an f32 Hugging Face folder, e.g. the one written by
`podar prune MODEL.gguf --mlp-size 1536 --out MODEL_DIR` (0% pruning).
OUT_DIR is removed and rewritten on every run (outside the timed phases).

Phases timed per run (wall clock, time.perf_counter):
  load      AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=float32) on CPU
  tokenize  AutoTokenizer load + read CALIB_TXT + encode without special tokens
            + cut 64 x 128 ids into a TensorDataset / DataLoader
  prune     optipfair.prune_model(MLP_GLU, MAW, 20%, dataloader=...) including
            its calibration forward passes
  save      model.save_pretrained(OUT_DIR) + tokenizer.save_pretrained(OUT_DIR)
torch keeps its default thread count.
"""

import argparse
import gc
import logging
import os
import shutil
import statistics
import sys
import time

import torch
import transformers
from torch.utils.data import DataLoader, TensorDataset
from transformers import AutoModelForCausalLM, AutoTokenizer

import optipfair
from optipfair import prune_model

WINDOWS = 64
WINDOW_LEN = 128
BATCH_SIZE = 8
PRUNE_PCT = 20
PHASES = ("load", "tokenize", "prune", "save")


def one_run(model_dir, calib_txt, out_dir, show_progress):
    if os.path.isdir(out_dir):
        shutil.rmtree(out_dir)
    t = {}

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.eval()
    t["load"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(model_dir)
    with open(calib_txt, encoding="utf-8") as f:
        text = f.read()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    need = WINDOWS * WINDOW_LEN
    if len(ids) < need:
        sys.exit(f"{calib_txt}: only {len(ids)} tokens, need {need}")
    windows = torch.tensor(ids[:need], dtype=torch.long).view(WINDOWS, WINDOW_LEN)
    # A 1-tuple batch: OptiPFair reads batch[0] as input_ids, no attention mask.
    loader = DataLoader(TensorDataset(windows), batch_size=BATCH_SIZE, shuffle=False)
    t["tokenize"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model = prune_model(
        model=model,
        pruning_type="MLP_GLU",
        neuron_selection_method="MAW",  # PPM; with a dataloader -> hybrid score
        pruning_percentage=PRUNE_PCT,
        dataloader=loader,
        show_progress=show_progress,
    )
    t["prune"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    t["save"] = time.perf_counter() - t0

    inter = model.config.intermediate_size
    del model
    gc.collect()
    return t, inter


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("calib_txt")
    ap.add_argument("out_dir")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--progress", action="store_true", help="show OptiPFair's tqdm bars")
    ap.add_argument("--verbose", action="store_true", help="keep OptiPFair's INFO logging")
    args = ap.parse_args()
    if not args.verbose:
        logging.getLogger("optipfair").setLevel(logging.WARNING)

    print(
        f"torch {torch.__version__}  transformers {transformers.__version__}  "
        f"optipfair {optipfair.__version__}  torch threads {torch.get_num_threads()}"
    )
    results = []
    for r in range(args.runs):
        t, inter = one_run(args.model_dir, args.calib_txt, args.out_dir, args.progress)
        total = sum(t[p] for p in PHASES)
        t["total"] = total
        results.append(t)
        phases = "  ".join(f"{p} {t[p]:.3f}s" for p in PHASES)
        print(f"run {r + 1}: {phases}  total {total:.3f}s  intermediate_size {inter}")
        if inter != 1229:
            print(f"warning: expected intermediate_size 1229, got {inter}")

    print(f"over {len(results)} run(s), seconds:")
    for p in PHASES + ("total",):
        vals = [t[p] for t in results]
        print(f"  {p:9s} min {min(vals):.3f}  median {statistics.median(vals):.3f}")
    print(
        f"torch.get_num_threads() {torch.get_num_threads()}  torch {torch.__version__}  "
        f"optipfair {optipfair.__version__}"
    )


if __name__ == "__main__":
    main()
