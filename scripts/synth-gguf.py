#!/usr/bin/python3
"""Write a llama-architecture GGUF model with random weights and a real tokenizer vocabulary.

Used by `aios models synth`: speed does not depend on weight values, so a model of a real model's
shape is a fair benchmark, and a tiny one is a fast smoke test. Needs numpy and llama.cpp's gguf-py
(passed with --gguf-py). The tokenizer metadata is copied from a vocab-only GGUF (--vocab), such as
llama.cpp's models/ggml-vocab-llama-spm.gguf.
"""
import argparse
import sys

p = argparse.ArgumentParser()
p.add_argument("--gguf-py", required=True)
p.add_argument("--vocab", required=True)
p.add_argument("--out", required=True)
p.add_argument("--name", default="aios-synth")
p.add_argument("--n-embd", type=int, required=True)
p.add_argument("--n-layer", type=int, required=True)
p.add_argument("--n-head", type=int, required=True)
p.add_argument("--n-head-kv", type=int, required=True)
p.add_argument("--n-ff", type=int, required=True)
p.add_argument("--ctx", type=int, default=2048)
p.add_argument("--dtype", choices=["f32", "f16"], default="f32")
p.add_argument("--seed", type=int, default=0)
a = p.parse_args()

sys.path.insert(0, a.gguf_py)
import numpy as np  # noqa: E402
import gguf  # noqa: E402

reader = gguf.GGUFReader(a.vocab)
w = gguf.GGUFWriter(a.out, "llama")
w.add_name(a.name)
w.add_context_length(a.ctx)
w.add_embedding_length(a.n_embd)
w.add_block_count(a.n_layer)
w.add_feed_forward_length(a.n_ff)
w.add_head_count(a.n_head)
w.add_head_count_kv(a.n_head_kv)
w.add_rope_dimension_count(a.n_embd // a.n_head)
w.add_layer_norm_rms_eps(1e-5)
w.add_file_type(0 if a.dtype == "f32" else 1)

n_vocab = 0
for key, field in reader.fields.items():
    if not key.startswith("tokenizer."):
        continue
    vtype = field.types[0]
    sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY and len(field.types) > 1 else None
    val = field.contents()
    if key == "tokenizer.ggml.tokens":
        n_vocab = len(val)
    w.add_key_value(key, val, vtype, sub)
if n_vocab == 0:
    sys.exit(f"{a.vocab}: no tokenizer.ggml.tokens")
w.add_vocab_size(n_vocab)

rng = np.random.default_rng(a.seed)
dt = np.float32 if a.dtype == "f32" else np.float16
hd = a.n_embd // a.n_head
kv = a.n_head_kv * hd


def rand(*shape):
    return (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(dt)


def ones(n):
    return np.ones((n,), dtype=np.float32)  # norms stay f32, as llama.cpp's converter writes them


w.add_tensor("token_embd.weight", rand(n_vocab, a.n_embd))
for i in range(a.n_layer):
    b = f"blk.{i}."
    w.add_tensor(b + "attn_norm.weight", ones(a.n_embd))
    w.add_tensor(b + "attn_q.weight", rand(a.n_embd, a.n_embd))
    w.add_tensor(b + "attn_k.weight", rand(kv, a.n_embd))
    w.add_tensor(b + "attn_v.weight", rand(kv, a.n_embd))
    w.add_tensor(b + "attn_output.weight", rand(a.n_embd, a.n_embd))
    w.add_tensor(b + "ffn_norm.weight", ones(a.n_embd))
    w.add_tensor(b + "ffn_gate.weight", rand(a.n_ff, a.n_embd))
    w.add_tensor(b + "ffn_up.weight", rand(a.n_ff, a.n_embd))
    w.add_tensor(b + "ffn_down.weight", rand(a.n_embd, a.n_ff))
w.add_tensor("output_norm.weight", ones(a.n_embd))
w.add_tensor("output.weight", rand(n_vocab, a.n_embd))

w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
