#!/usr/bin/python3
"""Write a LoRA adapter GGUF for a (synthesized) base model, with random weights.

Used by `aios models synth-lora`. The file is what llama.cpp's adapter loader
(src/llama-adapter.cpp) accepts: general.type = "adapter", general.architecture = the base's,
adapter.type = "lora", adapter.lora.alpha, and for each adapted base weight W (ggml shape
[n_in, n_out]) a pair "<W>.lora_a" [n_in, rank] and "<W>.lora_b" [rank, n_out]. llama.cpp adds
scale * alpha / rank * B(A x) to W x. With --zero-b every lora_b is zero, so the adapter changes
nothing (a LoRA right after initialisation). --arch writes another architecture (a wrong adapter,
for tests of the refusal). Needs numpy and llama.cpp's gguf-py (passed with --gguf-py).
"""
import argparse
import re
import sys

p = argparse.ArgumentParser()
p.add_argument("--gguf-py", required=True)
p.add_argument("--base", required=True)
p.add_argument("--out", required=True)
p.add_argument("--rank", type=int, default=8)
p.add_argument("--alpha", type=float, default=0.0, help="0 = rank (scale 1 per unit of request scale)")
p.add_argument("--seed", type=int, default=1)
p.add_argument("--std", type=float, default=0.05)
p.add_argument("--zero-b", action="store_true")
p.add_argument("--targets", default="attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down")
p.add_argument("--arch", default="")
p.add_argument("--name", default="aios-synth-lora")
a = p.parse_args()

sys.path.insert(0, a.gguf_py)
import numpy as np  # noqa: E402
import gguf  # noqa: E402

reader = gguf.GGUFReader(a.base)
f = reader.fields.get("general.architecture")
if f is None:
    sys.exit(f"{a.base}: no general.architecture (not a model GGUF)")
arch = f.contents()
t = reader.fields.get("general.type")
if t is not None and t.contents() == "adapter":
    sys.exit(f"{a.base}: is itself an adapter; --base takes a model")
if a.rank < 1:
    sys.exit("--rank must be at least 1")

targets = [x for x in a.targets.split(",") if x]
pat = re.compile(r"^blk\.\d+\.(" + "|".join(map(re.escape, targets)) + r")\.weight$")
rng = np.random.default_rng(a.seed)
w = gguf.GGUFWriter(a.out, a.arch or arch)
w.add_type(gguf.GGUFType.ADAPTER if hasattr(gguf, "GGUFType") else "adapter")
w.add_name(a.name)
w.add_string("adapter.type", "lora")
w.add_float32("adapter.lora.alpha", float(a.alpha or a.rank))
n = 0
for tensor in reader.tensors:
    if not pat.match(tensor.name) or len(tensor.shape) != 2:
        continue
    n_in, n_out = int(tensor.shape[0]), int(tensor.shape[1])  # ggml order: ne[0] = columns (inputs)
    if a.rank > min(n_in, n_out):
        sys.exit(f"--rank {a.rank} is larger than {tensor.name}'s smaller side ({min(n_in, n_out)})")
    # numpy shapes are ggml's reversed: lora_a ne [n_in, rank], lora_b ne [rank, n_out].
    la = (rng.standard_normal((a.rank, n_in), dtype=np.float32) * a.std).astype(np.float32)
    if a.zero_b:
        lb = np.zeros((n_out, a.rank), dtype=np.float32)
    else:
        lb = (rng.standard_normal((n_out, a.rank), dtype=np.float32) * a.std).astype(np.float32)
    w.add_tensor(tensor.name + ".lora_a", la)
    w.add_tensor(tensor.name + ".lora_b", lb)
    n += 1
if n == 0:
    sys.exit(f"{a.base}: no 2-D tensor matches the targets ({', '.join(targets)})")

w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print(f"{a.out}: {n} LoRA pairs, rank {a.rank}, alpha {a.alpha or a.rank}, architecture {a.arch or arch}")
