#!/usr/bin/env bash
# One-time (and idempotent) set-up on a Debian 12+ host: the Debian packages aios drives, the npm
# dependencies, and the compiled CLI. Fast when everything is already in place.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  mmdebstrap eatmydata      # Debian rootfs bootstrap (base.distro = "debian")
  cmake ninja-build g++ git ccache   # llama.cpp build (ccache: seconds for a rebuild)
  python3-numpy             # synthesized GGUF test models (llama.cpp gguf-py)
  make flex bison bc xz-utils   # aios kernel check: the kernel's own merge_config.sh + olddefconfig
  gcc libelf-dev libssl-dev cpio dwarves   # kernel.build = true: compiling Debian's linux-source (pahole for BTF configs)
  python3-grpcio python3-grpc-tools   # the independent (non-TypeScript) gRPC client in the runtime tests
  python3-prometheus-client   # the reference Prometheus text-format parser that reads /metrics in the runtime tests
  fdisk dosfstools mtools e2fsprogs xfsprogs   # GPT + filesystems without mounting
  squashfs-tools xorriso    # the live ISO: squashfs root, hybrid ISO 9660 with an El Torito EFI image
  erofs-utils cryptsetup-bin   # image.layout = "appliance": the read-only root (mkfs.erofs) and its dm-verity hash tree (veritysetup)
  qemu-system-x86 ovmf      # aios qemu-test / aios qemu
  zstd xz-utils util-linux  # aios flash: .raw.zst/.raw.xz images, losetup/blkid/blockdev
  shellcheck gnupg          # release: lint scripts/release.sh, sign SHA256SUMS
  tmux                      # aios top's end-to-end test drives the panel in a real terminal (send-keys, capture-pane)
  openssl                   # per-image certificates (runtime.tls): CA, server and client certificates
  bubblewrap                # the model sandbox around each llama-server (aios-runtime; its tests run it for real)
  iproute2 nftables         # fleet tests: RPC workers in network namespaces (veth), the generated worker firewall applied in them
  wireguard-go wireguard-tools   # fleet tests: fleet.tunnel = "wireguard" between namespaces (userspace WireGuard: the host kernel need not have the module)
  nginx-light               # fleet tests: the balancer `aios fleet lb-config` generates, in front of three runtimes (not started as a service)
  ca-certificates
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing Debian packages: ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # nginx-light is a test tool here (test/e2e/fleet-lb.test.ts runs its own instance on loopback): where
  # Debian's package just started its default site on port 80, stop and disable it.
  if [[ " ${missing[*]} " == *" nginx-light "* ]] && command -v systemctl >/dev/null 2>&1; then
    $SUDO systemctl disable --now nginx >/dev/null 2>&1 || true
  fi
fi

if [ ! -d node_modules ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm ci"
  npm ci --no-audit --no-fund --loglevel=error
fi
echo "setup: compiling (tsc)"
npm run --silent build
echo "setup: done. Run: node bin/aios.js build image"
