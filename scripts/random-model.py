"""A Hugging Face folder with a real model's shapes and random bf16 weights (in seconds, no
dependencies): for memory and speed checks of models bigger than the example, e.g.
`python3 scripts/random-model.py /tmp/llama1b llama-3.2-1b && BENCH_MODEL=/tmp/llama1b make bench-web`.
Shapes: qwen2.5-0.5b (the default, about 1 GB), llama-3.2-1b, qwen2.5-1.5b, gemma-3-1b, llama-3.2-3b, llama-3.1-8b.
Its tokenizer is the example model's (from podar's export of the example GGUF), so the folder loads anywhere.
The weights repeat a 1 MiB block of N(0, 0.02) values: the numbers it prints are about memory and time,
not quality."""
import json, os, random, struct, subprocess, sys, tempfile

out = sys.argv[1]
shape = sys.argv[2] if len(sys.argv) > 2 else "qwen2.5-0.5b"
os.makedirs(out, exist_ok=True)
# hidden, MLP, layers, heads, KV heads, head_dim, vocab, family, tied
SHAPES = {
    "qwen2.5-0.5b": (896, 4864, 24, 14, 2, 64, 151936, "qwen2", True),
    "qwen2.5-1.5b": (1536, 8960, 28, 12, 2, 128, 151936, "qwen2", True),
    "llama-3.2-1b": (2048, 8192, 16, 32, 8, 64, 128256, "llama", True),
    "llama-3.2-3b": (3072, 8192, 28, 24, 8, 128, 128256, "llama", True),
    "llama-3.1-8b": (4096, 14336, 32, 32, 8, 128, 128256, "llama", False),
    "gemma-3-1b": (1152, 6912, 26, 4, 1, 256, 262144, "gemma3", True),
}
if shape not in SHAPES:
    sys.exit(f"unknown shape {shape}: one of {', '.join(SHAPES)}")
H, I, L, NH, KV, HD, V, FAMILY, TIED = SHAPES[shape]
if FAMILY == "qwen2":
    cfg = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "max_position_embeddings": 32768,
           "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "bos_token_id": 151643, "eos_token_id": 151643,
           "sliding_window": 32768, "use_sliding_window": False, "max_window_layers": 21}
elif FAMILY == "gemma3":
    cfg = {"architectures": ["Gemma3ForCausalLM"], "model_type": "gemma3_text", "max_position_embeddings": 32768,
           "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "rope_local_base_freq": 10000.0, "bos_token_id": 2,
           "eos_token_id": 1, "head_dim": HD, "query_pre_attn_scalar": HD, "sliding_window": 512,
           "layer_types": ["full_attention" if (l + 1) % 6 == 0 else "sliding_attention" for l in range(L)],
           "hidden_activation": "gelu_pytorch_tanh", "attn_logit_softcapping": None, "final_logit_softcapping": None,
           "rope_scaling": None, "attention_bias": False}
else:
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "max_position_embeddings": 131072,
           "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "bos_token_id": 128000, "eos_token_id": 128001,
           "head_dim": HD, "attention_bias": False, "mlp_bias": False,
           "rope_scaling": {"rope_type": "llama3", "factor": 32.0 if L <= 28 else 8.0, "low_freq_factor": 1.0,
                            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
cfg.update({"hidden_size": H, "intermediate_size": I, "num_hidden_layers": L, "num_attention_heads": NH,
            "num_key_value_heads": KV, "vocab_size": V, "tie_word_embeddings": TIED, "torch_dtype": "bfloat16"})
if FAMILY != "gemma3":
    cfg["hidden_act"] = "silu"
json.dump(cfg, open(f"{out}/config.json", "w"))
BIAS = FAMILY == "qwen2"
random.seed(0)
def bf16(x):
    b = struct.pack('<f', x)
    return b[2:4]
block = b''.join(bf16(random.gauss(0, 0.02)) for _ in range(1 << 19))  # 1 MiB
ones = b''.join(bf16(1.0) for _ in range(8192))
zeros = bytes(2 * 8192)
tensors = [("model.embed_tokens.weight", [V, H], 'w'), ("model.norm.weight", [H], '1' if FAMILY != "gemma3" else '0')]
if not TIED:
    tensors.append(("lm_head.weight", [V, H], 'w'))
for l in range(L):
    p = f"model.layers.{l}."
    if FAMILY == "gemma3":
        # Gemma's norms scale by 1 + w: zeros are its neutral norms.
        tensors += [(p+"pre_feedforward_layernorm.weight", [H], '0'), (p+"post_feedforward_layernorm.weight", [H], '0'),
                    (p+"self_attn.q_norm.weight", [HD], '0'), (p+"self_attn.k_norm.weight", [HD], '0')]
    tensors += [(p+"input_layernorm.weight", [H], '1' if FAMILY != "gemma3" else '0'),
                (p+"post_attention_layernorm.weight", [H], '1' if FAMILY != "gemma3" else '0'),
                (p+"self_attn.q_proj.weight", [NH*HD, H], 'w'), (p+"self_attn.k_proj.weight", [KV*HD, H], 'w'),
                (p+"self_attn.v_proj.weight", [KV*HD, H], 'w'), (p+"self_attn.o_proj.weight", [H, NH*HD], 'w')]
    if BIAS:
        tensors += [(p+"self_attn.q_proj.bias", [NH*HD], 'w'), (p+"self_attn.k_proj.bias", [KV*HD], 'w'),
                    (p+"self_attn.v_proj.bias", [KV*HD], 'w')]
    tensors += [(p+"mlp.gate_proj.weight", [I, H], 'w'), (p+"mlp.up_proj.weight", [I, H], 'w'),
                (p+"mlp.down_proj.weight", [H, I], 'w')]
header = {}; off = 0
for name, shape, kind in tensors:
    n = 1
    for d in shape: n *= d
    header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + 2 * n]}; off += 2 * n
h = json.dumps(header).encode(); h += b' ' * ((8 - len(h) % 8) % 8)
with open(f"{out}/model.safetensors", "wb") as f:
    f.write(struct.pack('<Q', len(h))); f.write(h)
    for name, shape, kind in tensors:
        n = 1
        for d in shape: n *= d
        src = {'1': ones, '0': zeros}.get(kind, block)
        need = 2 * n
        while need > 0:
            k = min(need, len(src)); f.write(src[:k]); need -= k
# The tokenizer files: podar's export of the example model writes them.
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with tempfile.TemporaryDirectory() as tmp:
    subprocess.run([f"{root}/target/release/podar", "prune", f"{root}/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                    "--mlp-size", "1536", "--format", "hf", "--dtype", "f16", "--out", f"{tmp}/t"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for f in ["tokenizer.json", "tokenizer_config.json"]:
        with open(f"{tmp}/t/{f}", "rb") as src, open(f"{out}/{f}", "wb") as dst:
            dst.write(src.read())
print(f"wrote {out}")
