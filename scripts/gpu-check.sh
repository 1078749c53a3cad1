#!/bin/bash
# aios on a machine with an NVIDIA GPU (issue 17; docs/gpu.md "On a GPU machine"): the one prepared
# script for a machine that reaches no package mirror and takes little data, so the CUDA image cannot
# travel there. From what scripts/gpu-check-pack.mjs packed here (.gpu-check/) it
#
#   1. records the machine (nvidia-smi, nvcc, CPU, the driver's /proc/devices names, /dev/nvidia*);
#   2. builds the recipe's pinned llama.cpp with the recipe's CMake flags (images/cuda.toml: CUDA,
#      FlashAttention kernels, the GPU's architecture) with that machine's CUDA toolkit;
#   3. synthesizes a TinyLlama-1.1B-shaped model (random weights, real vocabulary; speed does not
#      depend on the weights) in f16 while the build runs, then quantizes it to Q4_K_M;
#   4. runs the image's bench entry point (rootfs/usr/libexec/aios/bench: llama-bench pp512/tg128 and
#      the bandwidth probe) with every layer on the GPU and with none, interleaved: gpu, cpu, gpu, cpu;
#   5. starts aios-runtime (the image's bundle, on the packed Node.js) with that llama-server and the
#      model at gpu_layers = -1 in its sandbox, asks it three questions over the OpenAI API, and reads
#      `aios ps --json` and /metrics (VRAM budget from nvidia-smi, CUDA buffers from llama-server);
#      if the sandboxed child put nothing on the GPU, once more with the sandbox off, to tell why.
#
# Each step leaves a mark in --state, so a call cut short (the device tool's 10-minute limit) is
# resumed by running the same command again while the machine is still warm. Results go to --out
# (the device tool's $OUT): facts.txt, bench-{gpu,cpu}-{1,2}.log, runtime.txt, runtime.log. On this
# side, `aios bench --from-log` and `aios bench compare` turn the bench logs into the tables of
# docs/benchmarks.md.
#
# --cpu-only rehearses all of it on a machine without a GPU (CPU build, or --llama-bin); the test
# suite does that with a tiny model (test/e2e/gpu-check.test.ts).
set -euo pipefail
export LC_ALL=C

usage() {
  cat <<'EOF'
usage: bash scripts/gpu-check.sh [options]
  --pack DIR       what scripts/gpu-check-pack.mjs made (default .gpu-check)
  --out DIR        results (default $OUT, else ./gpu-check-out)
  --state DIR      build, model and step marks, kept between calls (default /tmp/aios-gpu-check)
  --deadline S     start no step after S seconds, and stop the build there (rerun to resume; default 540)
  --cpu-only       no CUDA: build for the CPU (a rehearsal on a machine without a GPU)
  --llama-bin DIR  llama-server, llama-bench and llama-quantize from DIR instead of building
  --shape NAME     model shape: tinyllama-1.1b (default) or tiny
  --reps N         llama-bench repetitions per test (default 5)
EOF
}
die() { echo "gpu-check: $*" >&2; exit 2; }

pack=.gpu-check out=${OUT:-./gpu-check-out} state=/tmp/aios-gpu-check deadline=540 cpu_only=no bin='' shape=tinyllama-1.1b reps=5
while [ $# -gt 0 ]; do
  case "$1" in
    --pack | --out | --state | --deadline | --llama-bin | --shape | --reps)
      [ $# -ge 2 ] || die "$1 needs a value"
      case "$1" in --pack) pack=$2 ;; --out) out=$2 ;; --state) state=$2 ;; --deadline) deadline=$2 ;; --llama-bin) bin=$2 ;; --shape) shape=$2 ;; --reps) reps=$2 ;; esac
      shift 2 ;;
    --cpu-only) cpu_only=yes; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
case "$deadline" in '' | *[!0-9]*) die "--deadline must be whole seconds, got \"$deadline\"" ;; esac
case "$reps" in '' | *[!0-9]* | 0 | 1) die "--reps must be a whole number of at least 2, got \"$reps\"" ;; esac
[ -f "$pack/pack.json" ] || die "$pack/pack.json not found: run node scripts/gpu-check-pack.mjs on the development machine and carry $pack"
# The shapes' dimensions as `aios models synth` has them (written by the pack from src/models/synth.ts).
dims=$(awk -v s="$shape" '$1 == s { $1 = ""; print; found = 1 } END { exit !found }' "$pack/shapes") \
  || die "--shape must be one of: $(cut -d' ' -f1 "$pack/shapes" | tr '\n' ' ')got \"$shape\""
[ -z "$bin" ] || [ -x "$bin/llama-server" ] || die "--llama-bin $bin has no llama-server"
repo=$(cd "$(dirname "$0")/.." && pwd)
pack=$(cd "$pack" && pwd)
mkdir -p "$out" "$state"
out=$(cd "$out" && pwd)
state=$(cd "$state" && pwd)
t0=$(date +%s)
left() { echo $(( deadline - ($(date +%s) - t0) )); }
log() { echo "gpu-check: [$(( $(date +%s) - t0 ))s] $*" >&2; }
facts="$out/facts.txt"
note() { echo "$*" >> "$facts"; }
resume() {
  note "RESUME: $* (deadline ${deadline}s); run the same command again while the machine is warm"
  log "stopped: $*; run the same command again to resume"
  exit 3
}

# 1. The machine.
{
  echo "# gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ), pack:"; cat "$pack/pack.json"
  echo "# uname"; uname -a
  echo "# cpu"; grep -m1 'model name' /proc/cpuinfo || true; echo "nproc $(nproc)"; grep MemTotal /proc/meminfo || true
  echo "# nvidia-smi"; nvidia-smi 2>&1 || echo "(no nvidia-smi)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv 2>&1 || true
  echo "# nvcc"; nvcc --version 2>&1 || echo "(no nvcc on PATH)"
  echo "# gcc, cmake, ninja, python3, numpy"; gcc --version 2>&1 | head -n1 || true; cmake --version 2>&1 | head -n1 || true; ninja --version 2>&1 || true
  python3 -c 'import sys, numpy; print(sys.version.split()[0], "numpy", numpy.__version__)' 2>&1 || true
  echo "# the driver's character devices (/proc/devices; the image's unit admits char-nvidia-frontend, char-nvidia, char-nvidiactl and char-nvidia-uvm)"; grep -i nvidia /proc/devices || echo "(none)"
  echo "# /dev/nvidia*"; ls -l /dev/nvidia* 2>&1 || true
  echo "# /proc/driver/nvidia"; ls /proc/driver/nvidia 2>&1 || true
  echo "# sandbox tools"; command -v bwrap unshare setpriv 2>&1 || true; setpriv --version 2>&1 || true
  echo "# ldconfig: CUDA libraries"; ldconfig -p 2>/dev/null | grep -E 'libcuda\.so|libcudart|libcublas' || echo "(none in the ld.so cache)"
  echo "# LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
} > "$facts" 2>&1
log "facts written"

# The llama.cpp source, once (the mark survives a call cut short mid-way through the unpacking).
unpack_src() {
  [ -e "$state/src/.unpacked" ] || { log "unpacking llama.cpp"; rm -rf "$state/src"; tar -C "$state" -xJf "$pack/llama.cpp.tar.xz"; touch "$state/src/.unpacked"; }
}

# 3a. The model's f16 weights are synthesized beside the build (Python, one core; nvcc takes the rest).
model=$state/models/$shape-Q4_K_M.gguf
f16=$state/models/$shape-f16.gguf
synth_pid=''
if [ ! -e "$model" ] && [ ! -e "$f16" ]; then
  mkdir -p "$state/models"
  unpack_src
  log "synthesizing $shape (f16) in the background"
  # shellcheck disable=SC2086 # $dims is a list of options
  python3 "$repo/scripts/synth-gguf.py" --gguf-py "$state/src/gguf-py" --vocab "$state/src/models/ggml-vocab-llama-spm.gguf" \
    --out "$f16.part" --name "aios-synth-$shape" $dims --dtype f16 --seed 0 > "$state/synth.log" 2>&1 \
    && mv "$f16.part" "$f16" &
  synth_pid=$!
fi

# 2. llama.cpp with the recipe's flags.
if [ -n "$bin" ]; then
  bindir=$(cd "$bin" && pwd)
  note "# llama.cpp: given binaries $bindir"
else
  bindir=$state/build/bin
  if [ ! -e "$state/build.done" ]; then
    unpack_src
    mapfile -t cm < <(sed -e "s|@SRC@|$state/src|" -e "s|@BUILD@|$state/build|" "$pack/cmake-args")
    if [ "$cpu_only" = yes ]; then
      mapfile -t cm < <(printf '%s\n' "${cm[@]}" | grep -v -E '^-D(GGML_CUDA|CMAKE_CUDA_ARCHITECTURES|GGML_CUDA_FA|GGML_CUDA_NCCL)=')
    else
      command -v nvcc > /dev/null || [ -x /usr/local/cuda/bin/nvcc ] || die "no nvcc: this machine has no CUDA toolkit (--cpu-only rehearses without)"
      command -v nvcc > /dev/null || export PATH=/usr/local/cuda/bin:$PATH
    fi
    note "# cmake ${cm[*]}"
    if [ ! -e "$state/build/build.ninja" ]; then
      log "cmake"
      cmake "${cm[@]}" > "$state/cmake.log" 2>&1 || { tail -n 40 "$state/cmake.log" >> "$facts"; die "cmake failed (the end of its output is in facts.txt)"; }
      grep -E 'CUDA|compiler identification' "$state/cmake.log" >> "$facts" || true
    fi
    [ "$(left)" -gt 30 ] || resume "no time left for the build"
    log "building llama-server, llama-bench, llama-quantize ($(nproc) jobs, at most $(left) s now)"
    b0=$(date +%s)
    set +e
    timeout "$(left)" cmake --build "$state/build" -j "$(nproc)" --target llama-server llama-bench llama-quantize > "$state/make.log" 2>&1
    rc=$?
    set -e
    echo $(( $(date +%s) - b0 )) >> "$state/build.seconds"
    if [ "$rc" = 124 ]; then tail -n 3 "$state/make.log" >> "$facts"; resume "the build was not finished ($(grep -o '^\[[0-9]*/[0-9]*\]' "$state/make.log" | tail -n1))"; fi
    [ "$rc" = 0 ] || { grep -E -A3 'error|Error' "$state/make.log" | head -n 60 >> "$facts"; die "the build failed (exit $rc; the errors are in facts.txt)"; }
    touch "$state/build.done"
  fi
  note "# build: $(awk '{ s += $1 } END { print s }' "$state/build.seconds") s wall over $(wc -l < "$state/build.seconds") call(s), $(nproc) jobs"
  ls -l "$bindir"/llama-server "$bindir"/llama-bench >> "$facts"
fi
note "# llama-server --version"; "$bindir/llama-server" --version >> "$facts" 2>&1 || true

# The model sandbox sees /usr and ld.so.cache but not LD_LIBRARY_PATH: make the libraries the
# binary needs findable without it (as they are in the image, under /usr/lib/x86_64-linux-gnu).
missing=$(env -i "$(command -v ldd)" "$bindir/llama-server" | awk '/not found/ { print $1 }')
if [ -n "$missing" ]; then
  for lib in $missing; do
    for d in $(echo "${LD_LIBRARY_PATH:-}" | tr ':' ' ') /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib64-nvidia; do
      [ -e "$d/$lib" ] && { echo "$d" >> /etc/ld.so.conf.d/aios-gpu-check.conf; break; }
    done
  done
  [ -e /etc/ld.so.conf.d/aios-gpu-check.conf ] && { sort -u -o /etc/ld.so.conf.d/aios-gpu-check.conf /etc/ld.so.conf.d/aios-gpu-check.conf; ldconfig; }
  note "# libraries found only through LD_LIBRARY_PATH: $missing; added to ld.so.conf: $(tr '\n' ' ' < /etc/ld.so.conf.d/aios-gpu-check.conf 2>/dev/null)"
fi
note "# ldd llama-server (empty environment)"; env -i "$(command -v ldd)" "$bindir/llama-server" >> "$facts" 2>&1 || true

# 3. The model: Q4_K_M of the f16 weights.
if [ ! -e "$model" ]; then
  [ "$(left)" -gt 60 ] || resume "no time left to quantize the model"
  if [ -n "$synth_pid" ]; then
    log "waiting for the f16 weights"
    wait "$synth_pid" || { tail -n 20 "$state/synth.log" >> "$facts"; die "synthesizing the model failed (facts.txt)"; }
  fi
  [ -e "$f16" ] || die "the f16 weights are missing ($f16): run the same command again"
  log "quantizing to Q4_K_M"
  "$bindir/llama-quantize" "$f16" "$model.tmp" Q4_K_M > "$state/quantize.log" 2>&1 \
    || { tail -n 20 "$state/quantize.log" >> "$facts"; die "llama-quantize failed (facts.txt)"; }
  mv "$model.tmp" "$model"
  rm -f "$f16"
fi
note "# model $(basename "$model") $(stat -c %s "$model") bytes"

# 4. llama-bench through the image's entry point: all layers on the GPU, then none, twice.
for round in 1 2; do
  for where in gpu cpu; do
    f="$state/bench-$where-$round.log"
    if [ ! -s "$f" ] || ! grep -q '^AIOS-BENCH-END' "$f"; then
      [ "$(left)" -gt 90 ] || resume "no time left for bench $where $round"
      ngl=99; [ "$where" = cpu ] && ngl=0
      log "bench $where $round (--ngl $ngl, $reps repetitions)"
      AIOS_LLAMA_BENCH="$bindir/llama-bench" AIOS_TRIAD="$pack/triad" sh "$repo/rootfs/usr/libexec/aios/bench" \
        --model "$model" --reps "$reps" --ngl "$ngl" > "$f.tmp" 2> "$state/bench-$where-$round.err" \
        || { tail -n 5 "$state/bench-$where-$round.err" >> "$facts"; die "bench $where $round failed (facts.txt)"; }
      mv "$f.tmp" "$f"
    fi
    cp "$f" "$out/"
  done
done

# 5. aios-runtime itself: the launch profile, the sandbox, the VRAM figures.
node=$state/node
[ -x "$node" ] || { xz -dc "$pack/node.xz" > "$node.tmp" && chmod +x "$node.tmp" && mv "$node.tmp" "$node"; }
# The runtime looks for the sandbox's tools in /usr/bin: without util-linux >= 2.40's Landlock options, bubblewrap.
if [ "$(id -u)" = 0 ] && [ ! -e /usr/bin/bwrap ] && [ -e "$pack/bwrap" ] && ! setpriv --help 2>&1 | grep -q landlock; then
  install -m 0755 "$pack/bwrap" /usr/bin/bwrap && note "# installed the packed bubblewrap as /usr/bin/bwrap"
fi
rt=$out/runtime.txt
: > "$rt"
: > "$out/runtime.log"
runtime_check() { # $1: auto|off (runtime.sandbox)
  local dir=$state/runtime-$1
  rm -rf "$dir" && mkdir -p "$dir/models" "$dir/state"
  ln "$model" "$dir/models/model.gguf" 2> /dev/null || cp "$model" "$dir/models/model.gguf"
  cat > "$dir/config.toml" <<EOF
[runtime]
llama_server = "$bindir/llama-server"
socket = "$dir/runtime.sock"
listen = ""
http_listen = "127.0.0.1:18080"
sandbox = "$1"
state_dir = "$dir/state"

[models]
model_dir = "$dir/models"

[models.operational]
name = "model.gguf"
always_loaded = true
gpu_layers = -1
max_tokens = 128
EOF
  echo "## runtime.sandbox = \"$1\"" >> "$rt"
  "$node" "$pack/runtime/aios-runtime.mjs" --config "$dir/config.toml" >> "$out/runtime.log" 2>&1 &
  local pid=$! i ok=no
  for i in $(seq 1 120); do
    if "$node" -e 'fetch("http://127.0.0.1:18080/v1/models").then(r=>process.exit(r.ok?0:1),()=>process.exit(1))' 2> /dev/null; then ok=yes; break; fi
    kill -0 "$pid" 2> /dev/null || break
    sleep 1
  done
  echo "ready: $ok after ${i}s" >> "$rt"
  # Three questions; llama-server's own timings come back through the relay.
  # shellcheck disable=SC2016 # JavaScript, not shell
  "$node" -e '
    const ask = async (i) => {
      const t = Date.now();
      const r = await fetch("http://127.0.0.1:18080/v1/chat/completions", { method: "POST", headers: { "content-type": "application/json" },
        body: JSON.stringify({ model: "model", messages: [{ role: "user", content: "Count from one to twenty in words." }], max_tokens: 128, temperature: 0 }) });
      const j = await r.json();
      const tm = j.timings ?? {};
      console.log(`request ${i}: HTTP ${r.status} ${Date.now() - t} ms, prompt ${tm.prompt_n} tokens at ${tm.prompt_per_second?.toFixed?.(1)} t/s, generated ${tm.predicted_n} tokens at ${tm.predicted_per_second?.toFixed?.(1)} t/s${j.error ? ", error " + JSON.stringify(j.error) : ""}`);
    };
    (async () => { for (let i = 1; i <= 3; i++) await ask(i).catch((e) => console.log(`request ${i}: ${e.message}`)); })();
  ' >> "$rt" 2>&1 || true
  echo "### aios ps --json" >> "$rt"
  "$node" "$pack/runtime/aios-cli.mjs" ps --json -a "unix:$dir/runtime.sock" >> "$rt" 2>&1 || true
  echo "### /metrics (aios_model_*vram*, aios_model_memory*)" >> "$rt"
  "$node" -e 'fetch("http://127.0.0.1:18080/metrics").then(r=>r.text()).then(t=>console.log(t.split("\n").filter(l=>/^aios_model_(vram|memory|state)/.test(l)).join("\n")))' >> "$rt" 2>&1 || true
  kill "$pid" 2> /dev/null || true
  wait "$pid" 2> /dev/null || true
}
[ "$(left)" -gt 60 ] || resume "no time left for the runtime check"
log "aios-runtime, sandbox auto"
echo "=== sandbox auto" >> "$out/runtime.log"
runtime_check auto
if [ "$cpu_only" = no ] && ! grep -Eq '"vram_bytes": *"?[1-9]' "$rt"; then
  log "the sandboxed child reported no CUDA buffers: again with the sandbox off"
  echo "=== sandbox off" >> "$out/runtime.log"
  runtime_check off
fi
log "done: $out"
note "DONE after $(( $(date +%s) - t0 )) s in this call"
