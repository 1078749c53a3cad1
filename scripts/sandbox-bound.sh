#!/usr/bin/env bash
# Issue 16's ≤ 1 % tokens/s goal, bounded without timing noise (docs/benchmarks.md, "Model sandbox
# overhead"): the sandbox's only per-token cost is its seccomp filter, which runs once per system
# call. This measures (1) what the child filter adds to one system call (a C loop of getppid, the
# longest path through the deny list, plain vs under bwrap with the filter; best of 7 × N calls) and
# (2) how many system calls llama-server makes per generated token (strace -c -f on every thread
# during one streamed request: an overestimate, strace slows the threads, which then wait on
# futexes more). Bound = calls per token × cost per call ÷ time per token.
# Usage: bash scripts/sandbox-bound.sh <llama-server> <model.gguf> [tokens]   (needs gcc, strace, bwrap, curl; run after npm run build)
set -euo pipefail
LS=${1:?llama-server binary}; MODEL=${2:?model.gguf}; N=${3:-128}
here=$(cd "$(dirname "$0")" && pwd); repo=$(dirname "$here")
w=$(mktemp -d /tmp/aios-sandbox-bound-XXXXXX); trap 'kill $P 2>/dev/null || true; rm -rf "$w"' EXIT
gcc -O2 -static -o "$w/loop" "$here/sandbox-bound/syscall-loop.c"
node -e "import('$repo/dist/runtime/seccomp.js').then(m => require('fs').writeFileSync('$w/filter.bpf', m.childSeccompFilter()))"
plain=(); filt=()
for i in 1 2 3 4 5; do
  plain+=("$("$w/loop" 2000000 110)")
  filt+=("$(bwrap --bind / / --unshare-user --unshare-net --unshare-pid --seccomp 9 9<"$w/filter.bpf" "$w/loop" 2000000 110)")
done
best() { printf '%s\n' "$@" | sort -n | head -1; }
echo "getppid, ns per call (best of each run): plain ${plain[*]}; with the filter ${filt[*]}"
echo "best: plain $(best "${plain[@]}") ns, with the filter $(best "${filt[@]}") ns"
port=18777
"$LS" -m "$MODEL" --host 127.0.0.1 --port $port -c 2048 -t "$(nproc)" --parallel 1 --no-webui >"$w/server.log" 2>&1 & P=$!
for _ in $(seq 120); do curl -sf 127.0.0.1:$port/health >/dev/null && break; sleep 1; done
curl -s 127.0.0.1:$port/completion -d '{"prompt":"Hello","n_predict":8}' >/dev/null
t0=$(date +%s.%N)
curl -sN 127.0.0.1:$port/completion -d "{\"prompt\":\"Once upon a time\",\"n_predict\":$N,\"ignore_eos\":true,\"stream\":true}" >"$w/plain.txt"
t1=$(date +%s.%N)
args=(); for t in /proc/$P/task/*; do args+=(-p "${t##*/}"); done
strace -f -c -o "$w/count.txt" "${args[@]}" 2>/dev/null & S=$!
sleep 2
curl -sN 127.0.0.1:$port/completion -d "{\"prompt\":\"Once upon a time\",\"n_predict\":$N,\"ignore_eos\":true,\"stream\":true}" >"$w/traced.txt"
sleep 1; kill -INT $S; wait $S || true
calls=$(awk '$NF=="total"{print $(NF-2)}' "$w/count.txt")
ms=$(echo "($t1 - $t0) * 1000 / $N" | bc -l)
echo "llama-server: $calls system calls for $N tokens under strace ($(echo "$calls / $N" | bc) per token); untraced $(printf %.1f "$ms") ms per token"
head -8 "$w/count.txt" | tail -5
