#!/usr/bin/env bash
# An appliance update without booting (docs/appliance.md): the image's own systemd-sysupdate, with
# the image's own transfers, keyring and os-release, run on a copy of a built appliance disk.
#
#   bash scripts/appliance-offline-update.sh <image.raw> <update-dir> [list|update|...]
#
# The image's root tree is the overlay stage's output in the aios cache (found through the
# manifest beside the image), used read-only under a throw-away overlayfs and chrooted into. What
# changes is only where things are: Path=auto becomes a loop device of the disk copy, the ESP
# (PathRelativeTo=esp) a directory holding the copy's ESP files (extracted with mtools: no vfat
# mount needed), the source <update-dir> mounted where update.source's file:// URL points. The disk
# copy, its ESP directory and every mount go away at the end; the image and <update-dir> are only
# read. Prints sysupdate's output, then the copy's partitions and ESP files. Needs root, losetup,
# mtools, overlayfs. Exit status: systemd-sysupdate's.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
image=$(realpath "$1"); src=$(realpath "$2"); shift 2
[ $# -ge 1 ] || set -- list
manifest=${image%.raw}.manifest.json
[ -f "$manifest" ] || { echo "no manifest beside $image" >&2; exit 2; }
cache=${AIOS_CACHE_DIR:-$HOME/.cache/aios}
key=$(node -e 'const m=JSON.parse(require("fs").readFileSync(process.argv[1],"utf8"));process.stdout.write(m.stages.find((s)=>s.name==="overlay").key)' "$manifest")
root=$cache/stages/overlay/$key/root
[ -x "$root/usr/lib/systemd/systemd-sysupdate" ] || { echo "$root: no systemd-sysupdate (not an appliance image's overlay, or no longer in the cache)" >&2; exit 2; }

work=$(mktemp -d /tmp/aios-offline-update-XXXXXX)
loop=
cleanup() { [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
cp --sparse=always "$image" "$work/disk.raw"
loop=$(losetup -P -f --show "$work/disk.raw")
esp_start=$(sfdisk -J "$work/disk.raw" | node -e 'let s="";process.stdin.on("data",(d)=>(s+=d)).on("end",()=>process.stdout.write(String(JSON.parse(s).partitiontable.partitions[0].start*512)))')
mkdir "$work/esp"
MTOOLS_SKIP_CHECK=1 mcopy -s -n -i "$work/disk.raw@@$esp_start" '::/*' "$work/esp/"
source_dir=$(sed -n 's|^Path=file://||p' "$root/usr/lib/sysupdate.d/10-aios-root.transfer")

rc=0
unshare -m --propagation private bash -s "$root" "$work" "$loop" "$src" "${source_dir:-/srv/update}" "$@" <<'EOF' || rc=$?
set -euo pipefail
root=$1 work=$2 loop=$3 src=$4 source_dir=$5; shift 5
m=$work/merged
mkdir -p "$work/t" "$m"
mount -t tmpfs tmpfs "$work/t"
mkdir "$work/t/upper" "$work/t/work"
mount -t overlay overlay -o "lowerdir=$root,upperdir=$work/t/upper,workdir=$work/t/work" "$m"
mount -t proc proc "$m/proc"; mount --rbind /dev "$m/dev"; mount --rbind /sys "$m/sys"; mount -t tmpfs tmpfs "$m/tmp"
mkdir -p "$m/defs" "$m/mnt/esp" "$m$source_dir"
cp "$m"/usr/lib/sysupdate.d/*.transfer "$m/defs/"
sed -i "s|^Path=auto\$|Path=$loop|; /^PathRelativeTo=esp\$/d; s|^Path=/aios\$|Path=/mnt/esp/aios|; s|^Path=/loader/entries\$|Path=/mnt/esp/loader/entries|" "$m"/defs/*.transfer
mount --bind "$work/esp" "$m/mnt/esp"
mount --bind "$src" "$m$source_dir"
echo "image: $(grep -h '^IMAGE_' "$m/usr/lib/os-release" | tr '\n' ' ')keyring: $([ -f "$m/etc/systemd/import-pubring.gpg" ] && echo yes || echo none); $(grep -h '^Verify=' "$m"/defs/*.transfer | sort | uniq -c | tr -s ' ')"
rc=0
chroot "$m" /usr/lib/systemd/systemd-sysupdate --definitions=/defs "$@" || rc=$?
exit $rc
EOF
echo "--- partitions of the copy:"
sfdisk -J "$work/disk.raw" | node -e 'let s="";process.stdin.on("data",(d)=>(s+=d)).on("end",()=>{for(const p of JSON.parse(s).partitiontable.partitions)console.log(`${p.node.slice(-1)} ${p.name} ${p.uuid.toLowerCase()} ${p.attrs??""}`)})'
echo "--- ESP files of the copy:"
(cd "$work/esp" && find aios loader/entries -type f | sort)
exit $rc
