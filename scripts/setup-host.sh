#!/bin/sh
# Install the Debian packages khtest needs, quietly and only if missing.
# Idempotent: when everything is present it prints nothing and exits 0.
set -eu

packages="
	linux-source-6.12
	make gcc libc6-dev flex bison bc perl cpio xz-utils tar patch kmod rsync
	libelf-dev libssl-dev
	qemu-system-x86 busybox-static
	gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu qemu-system-arm
"

missing=""
for p in $packages; do
	if ! dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed; then
		missing="$missing $p"
	fi
done
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	sudo=sudo
	command -v sudo >/dev/null 2>&1 || {
		echo "setup-host: missing packages:$missing; run this script as root" >&2
		exit 1
	}
else
	sudo=
fi
echo "setup-host: installing:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# --no-install-recommends: qemu's recommends pull in packages that conflict
# with backported qemu-utils on some Debian 12 hosts.
# shellcheck disable=SC2086 # word splitting of the package list is wanted
$sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
