#!/usr/bin/env bash
# The release pipeline, one step per subcommand, the same locally and in CI
# (.github/workflows/release.yml runs exactly these):
#
#   bash scripts/release.sh build     # aios build image + aios build iso (SOURCE_DATE_EPOCH = last commit)
#   bash scripts/release.sh check     # aios qemu-test on the disk image and on the ISO
#   bash scripts/release.sh assets    # release/: <name>.raw.zst, <name>.iso, manifests, SHA256SUMS
#   bash scripts/release.sh sign      # release/SHA256SUMS.asc if AIOS_GPG_PRIVATE_KEY is set; else skipped
#   bash scripts/release.sh publish   # GitHub release for the tag (gh; needs GH_TOKEN)
#   bash scripts/release.sh all       # build check assets sign (everything but publish)
#
# Environment: RECIPE (default "default"), OUT (default out), RELEASE_DIR (default release),
# TAG (default: $GITHUB_REF_NAME, else `git describe --tags`), AIOS_GPG_PRIVATE_KEY (an armored
# secret key) and AIOS_GPG_PASSPHRASE (if the key has one), GH_TOKEN for publish.
set -euo pipefail
cd "$(dirname "$0")/.."

RECIPE=${RECIPE:-default}
OUT=${OUT:-out}
RELEASE_DIR=${RELEASE_DIR:-release}
aios() { node bin/aios.js "$@"; }
say() { printf 'release: %s\n' "$*" >&2; }
die() { printf 'release: error: %s\n' "$*" >&2; exit "${2:-1}"; }

# The recipe's output name (out/<name>.raw, out/<name>.iso), from the resolved recipe.
name() { aios summary -r "$RECIPE" --json | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>process.stdout.write(JSON.parse(s).name))'; }

step_build() {
  # Reproducible timestamps: the release commit's time, unless the caller set one.
  export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
  say "building recipe $RECIPE into $OUT/ (SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH)"
  aios build image -r "$RECIPE" -o "$OUT"
  aios build iso -r "$RECIPE" -o "$OUT"
}

step_check() {
  local n; n=$(name)
  for f in "$OUT/$n.raw" "$OUT/$n.iso"; do
    [ -f "$f" ] || die "$f is missing: run \`bash scripts/release.sh build\` first" 2
    say "boot check: $f"
    aios qemu-test "$f"
  done
}

step_assets() {
  local n; n=$(name)
  command -v zstd >/dev/null || die "zstd is not installed (apt-get install zstd, or bash scripts/setup.sh)" 3
  local f
  for f in "$OUT/$n.raw" "$OUT/$n.iso" "$OUT/$n.manifest.json"; do
    [ -f "$f" ] || die "$f is missing: run \`bash scripts/release.sh build\` first" 2
  done
  case "$(realpath -m "$RELEASE_DIR")" in
    /|"$(realpath -m .)"|"$(realpath -m "$OUT")") die "RELEASE_DIR=$RELEASE_DIR would replace / , the repository or \$OUT: pick a directory of its own" 2 ;;
  esac
  rm -rf "$RELEASE_DIR"
  mkdir -p "$RELEASE_DIR"
  say "compressing $n.raw (zstd; \`aios flash\` reads .raw.zst directly)"
  zstd -q -T0 -12 -o "$RELEASE_DIR/$n.raw.zst" "$OUT/$n.raw"
  zstd -q -t "$RELEASE_DIR/$n.raw.zst"
  cp "$OUT/$n.iso" "$OUT/$n.manifest.json" "$RELEASE_DIR/"
  [ -f "$OUT/$n.iso.manifest.json" ] && cp "$OUT/$n.iso.manifest.json" "$RELEASE_DIR/"
  (cd "$RELEASE_DIR" && sha256sum -- * > SHA256SUMS && sha256sum -c --quiet SHA256SUMS)
  say "wrote $RELEASE_DIR/SHA256SUMS:"
  cat "$RELEASE_DIR/SHA256SUMS" >&2
}

step_sign() {
  [ -f "$RELEASE_DIR/SHA256SUMS" ] || die "$RELEASE_DIR/SHA256SUMS is missing: run \`bash scripts/release.sh assets\` first" 2
  if [ -z "${AIOS_GPG_PRIVATE_KEY:-}" ]; then
    say "sign: skipped (AIOS_GPG_PRIVATE_KEY is not set; the release has SHA256SUMS without a signature)"
    return 0
  fi
  command -v gpg >/dev/null || die "gpg is not installed (apt-get install gnupg)" 3
  # A throw-away keyring: the key never lands in ~/.gnupg.
  (
    home=$(mktemp -d)
    trap 'gpgconf --homedir "$home" --kill all >/dev/null 2>&1 || true; rm -rf "$home"' EXIT
    chmod 700 "$home"
    printf '%s\n' "$AIOS_GPG_PRIVATE_KEY" | gpg --homedir "$home" --batch --quiet --import
    fpr=$(gpg --homedir "$home" --batch --with-colons --list-secret-keys | awk -F: '$1=="fpr"{print $10; exit}')
    [ -n "$fpr" ] || die "AIOS_GPG_PRIVATE_KEY holds no secret key" 2
    rm -f "$RELEASE_DIR/SHA256SUMS.asc"
    gpg --homedir "$home" --batch --yes --pinentry-mode loopback --passphrase "${AIOS_GPG_PASSPHRASE:-}" \
      --local-user "$fpr" --armor --detach-sign --output "$RELEASE_DIR/SHA256SUMS.asc" "$RELEASE_DIR/SHA256SUMS"
    gpg --homedir "$home" --batch --armor --export "$fpr" > "$RELEASE_DIR/aios-release-key.asc"
    gpg --homedir "$home" --batch --quiet --verify "$RELEASE_DIR/SHA256SUMS.asc" "$RELEASE_DIR/SHA256SUMS" 2>/dev/null
    say "signed SHA256SUMS with key $fpr (SHA256SUMS.asc; public key in aios-release-key.asc)"
  )
}

step_publish() {
  local tag=${TAG:-${GITHUB_REF_NAME:-$(git describe --tags --exact-match 2>/dev/null || true)}}
  [ -n "$tag" ] || die "no tag: set TAG=vX.Y.Z (publishing is for tagged commits)" 2
  [ -f "$RELEASE_DIR/SHA256SUMS" ] || die "$RELEASE_DIR/SHA256SUMS is missing: run \`bash scripts/release.sh assets\` first" 2
  command -v gh >/dev/null || die "gh (GitHub CLI) is not installed (apt-get install gh)" 3
  [ -n "${GH_TOKEN:-}" ] || die "GH_TOKEN is not set" 2
  local notes; notes=$(mktemp)
  # shellcheck disable=SC2016 # backquotes are Markdown here
  {
    echo "Disk image and live ISO built from recipe \`$RECIPE\` at $tag; both passed \`aios qemu-test\`."
    echo
    echo 'Write the disk image to a USB stick or disk: `aios flash '"$(name)"'.raw.zst /dev/sdX` (checks, confirms, verifies).'
    echo 'Check downloads with `sha256sum -c SHA256SUMS`'"$([ -f "$RELEASE_DIR/SHA256SUMS.asc" ] && echo ' and `gpg --verify SHA256SUMS.asc SHA256SUMS`')."
    echo
    echo '```'
    cat "$RELEASE_DIR/SHA256SUMS"
    echo '```'
  } > "$notes"
  if gh release view "$tag" >/dev/null 2>&1; then
    gh release upload "$tag" "$RELEASE_DIR"/* --clobber
  else
    gh release create "$tag" "$RELEASE_DIR"/* --title "aios $tag" --notes-file "$notes" --verify-tag
  fi
  rm -f "$notes"
  say "published $tag"
}

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }

[ $# -ge 1 ] || { usage >&2; exit 2; }
for s in "$@"; do
  case "$s" in
    build) step_build ;;
    check) step_check ;;
    assets) step_assets ;;
    sign) step_sign ;;
    publish) step_publish ;;
    all) step_build; step_check; step_assets; step_sign ;;
    -h|--help|help) usage; exit 0 ;;
    *) printf 'release: unknown step "%s"\n' "$s" >&2; usage >&2; exit 2 ;;
  esac
done
