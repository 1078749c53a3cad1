#!/usr/bin/env bash
# Boot-to-ready of aios-runtime: alternating boots of the same recipe with the runtime on and off,
# kernel start → runtime ready (on) against kernel start → multi-user (off), in one run (the firmware
# before the kernel takes the same time in both, so leaving it out makes the ratio stricter).
#   scripts/boot-to-ready.sh [boots per variant, default 3] [recipe, default "default"]
# Builds out/<name>.raw and out/<name>-nort.raw first (cached stages), prints one line per boot and
# the medians. Under TCG these are functional timings of an emulated machine, not performance figures.
# shellcheck disable=SC2016  # the node -e programs are single-quoted on purpose
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-3}
recipe=${2:-default}
aios() { node bin/aios.js "$@"; }
on=$(aios build image -r "$recipe" --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).image))')
off=$(aios build image -r "$recipe" --set runtime.enabled=false --set "image.name=$(basename "$on" .raw)-nort" --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).image))')
results=$(mktemp)
for i in $(seq 1 "$n"); do
  for variant in on off; do
    img=$on; [ "$variant" = off ] && img=$off
    aios qemu-test "$img" --json > "$results.boot" || { echo "boot $i $variant failed" >&2; cat "$results.boot" >&2; exit 1; }
    node -e '
      const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
      const g = r.guest;
      // QEMU start → kernel start is the host time minus the guest uptime at power-off; the guest reports its own moments.
      const fw = (g.firmware ?? 0) + (g.loader ?? 0);
      const ready = process.argv[2] === "on" ? (g.runtimeReadyUsec ?? 0) / 1e6 : g.multiUser;
      console.log(JSON.stringify({ variant: process.argv[2], kernelToReady: ready, multiUser: g.multiUser, startup: g.runtimeStartup ?? "", unitStarted: (g.runtimeActivatingUsec ?? 0) / 1e6, accel: r.accel }));
    ' "$results.boot" "$variant" | tee -a "$results"
  done
done
node -e '
  const rows = require("fs").readFileSync(process.argv[1], "utf8").trim().split("\n").map((l) => JSON.parse(l));
  const med = (xs) => { const s = [...xs].sort((a, b) => a - b); const m = s.length >> 1; return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2; };
  const on = rows.filter((r) => r.variant === "on").map((r) => r.kernelToReady);
  const off = rows.filter((r) => r.variant === "off").map((r) => r.kernelToReady);
  console.log(`runtime ready (on): ${on.map((x) => x.toFixed(1)).join(" / ")} s after kernel start, median ${med(on).toFixed(1)}`);
  console.log(`multi-user (off):   ${off.map((x) => x.toFixed(1)).join(" / ")} s after kernel start, median ${med(off).toFixed(1)}`);
  console.log(`ratio of medians: ${(med(on) / med(off)).toFixed(3)} (goal ≤ 1.10)`);
' "$results"
