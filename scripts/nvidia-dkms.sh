#!/bin/sh
# aios (gpu.driver, docs/gpu.md): builds the NVIDIA driver's DKMS module inside an image root ($1)
# for the image's own kernel. The rootfs stage runs it as an mmdebstrap customize hook, after the
# driver's packages were installed without the kernel headers (so DKMS only registered its source).
#
# Why not let DKMS build when the packages are installed: Debian trixie's NVIDIA 550.163.01 (in
# trixie and in trixie-backports) does not compile against trixie's current kernel (6.12.117): a
# stable update gave pci_resize_resource() a fourth argument, exclude_bars, and the driver still
# calls it with three. Newer NVIDIA drivers pass 0 there, which keeps the old behaviour. So the
# headers are installed with DKMS's header hook switched off, the one call is adapted where the
# headers declare the new signature (nothing is changed otherwise), and DKMS builds then. A module
# that does not build, or is missing afterwards, fails the hook with the end of DKMS's make.log.
#
# Then the build side goes again: the built modules are kept aside, the DKMS package (the driver's
# source), DKMS, the kernel headers and what only they pulled in (gcc, binutils, make, perl, ...) are
# purged, and the modules are put back under updates/dkms for depmod. An aios image gets a new kernel
# by being rebuilt, so nothing in it would rebuild the module: 1.1 GiB of root becomes ~0.7 GiB. The
# source package's name, version and section are written to /usr/share/doc/aios/nvidia-module for
# the manifest (its licence is the module's).
set -eu
root=$1
hook="$root/etc/kernel/header_postinst.d/dkms"
[ -e "$hook" ] && chmod -x "$hook"
DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get install -y --no-install-recommends linux-headers-amd64
[ -e "$hook" ] && chmod +x "$hook"

pcih=
for h in "$root"/usr/src/linux-headers-*/include/linux/pci.h; do [ -e "$h" ] && pcih=$h; done
if [ -n "$pcih" ] && grep -q 'exclude_bars' "$pcih"; then
  for src in "$root"/usr/src/nvidia-current*/nvidia/nv-pci.c; do
    [ -e "$src" ] || continue
    if grep -q 'pci_resize_resource(pci_dev, NV_GPU_BAR1, requested_size)' "$src"; then
      sed -i 's/pci_resize_resource(pci_dev, NV_GPU_BAR1, requested_size)/pci_resize_resource(pci_dev, NV_GPU_BAR1, requested_size, 0)/' "$src"
      echo "aios: ${src#"$root"}: pci_resize_resource() given exclude_bars = 0 (the kernel's new signature)"
    fi
  done
fi

for dir in "$root"/usr/lib/modules/*; do
  kver=${dir##*/}
  [ -e "$dir/build" ] || continue
  if ! chroot "$root" dkms autoinstall -k "$kver"; then
    for log in "$root"/var/lib/dkms/nvidia-current*/*/build/make.log; do
      [ -e "$log" ] && grep -E -B2 -A2 'error|Error' "$log" | tail -n 30
    done
    echo "aios: DKMS could not build the NVIDIA module for $kver" >&2
    exit 1
  fi
done

# The build side goes. apt would keep gcc because apt Suggests dpkg-dev, hence SuggestsImportant=false
# for this one autoremove; the driver's run-time packages that only the DKMS package depended on are
# marked manual first. Only automatically installed packages that nothing left needs are removed.
dkmspkg=$(chroot "$root" dpkg-query -W -f '${Package}\n' | grep -E '^nvidia-(open-)?kernel-dkms$' | head -n1)
mkdir -p "$root/usr/share/doc/aios"
chroot "$root" dpkg-query -W -f '${Package}\t${Version}\t${Section}\n' "$dkmspkg" >"$root/usr/share/doc/aios/nvidia-module"
keep=$(chroot "$root" dpkg-query -W -f '${Package}\n' | grep -E '^(nvidia-(open-)?kernel-support|nvidia-kernel-common|nvidia-modprobe|firmware-nvidia-gsp)$' | tr '\n' ' ')
[ -n "$keep" ] && chroot "$root" apt-mark manual $keep >/dev/null
saved="$root/var/tmp/aios-nvidia-modules"
rm -rf "$saved" && mkdir -p "$saved"
for dir in "$root"/usr/lib/modules/*; do
  [ -d "$dir/updates/dkms" ] && mkdir -p "$saved/${dir##*/}" && cp -a "$dir/updates/dkms/." "$saved/${dir##*/}/"
done
drop=$(chroot "$root" dpkg-query -W -f '${db:Status-Abbrev} ${Package}\n' | awk '$1 == "ii" && $2 ~ /^(nvidia-(open-)?kernel-dkms|dkms|linux-headers-.*)$/ { print $2 }' | tr '\n' ' ')
DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get purge -y $drop
DEBIAN_FRONTEND=noninteractive chroot "$root" apt-get autoremove --purge -y -o APT::AutoRemove::SuggestsImportant=false
for dir in "$saved"/*; do
  [ -d "$dir" ] || continue
  kver=${dir##*/}
  mkdir -p "$root/usr/lib/modules/$kver/updates/dkms"
  cp -a "$dir/." "$root/usr/lib/modules/$kver/updates/dkms/"
  chroot "$root" depmod "$kver"
done
rm -rf "$saved" "$root/var/lib/dkms"
echo "aios: kept the NVIDIA modules, removed $drop and what only they needed"
