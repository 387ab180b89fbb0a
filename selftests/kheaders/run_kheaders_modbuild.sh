#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# Build a module against the in-kernel headers archive the way its
# documentation tells a user to, and load it when the archive belongs to the
# running kernel.
#
# The archive is $KHEADERS_ARCHIVE when set and not empty (for example one
# pulled from a device, to run this on a host; one that is not a readable
# file skips the test), else /sys/kernel/kheaders.tar.xz or
# /proc/kheaders.tar.xz, loading the kheaders module first when neither
# exists (and unloading it at the end).
#
# The archive extracts only if xz verifies the whole file: a damaged archive
# is "not ok 1" even when tar could read what it needed of it.
#
# On a CONFIG_MODVERSIONS kernel that serves its symbol versions
# (/sys/kernel/symvers/vmlinux), the module is built with them, as
# Module.symvers, and must load carrying them; on one that does not, it
# has none and must be refused.
#
# Output is TAP. Exit status: 0 pass, 1 fail, 4 skip (no archive, no
# compiler or no temporary directory).

ksft_skip=4
served_symvers=/sys/kernel/symvers/vmlinux
here=$(cd "$(dirname "$0")" && pwd)
tmp=
loaded_kheaders=
archive=
num=0
failed=0

# shellcheck disable=SC2317 # called through trap
cleanup()
{
	if [ -n "$tmp" ]; then
		rm -rf "$tmp"
	fi
	if [ -n "$loaded_kheaders" ]; then
		rmmod kheaders 2>/dev/null || modprobe -r kheaders
	fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ok()
{
	num=$((num + 1))
	echo "ok $num $1"
}

not_ok()
{
	num=$((num + 1))
	failed=1
	echo "not ok $num $1"
}

skip_one()
{
	num=$((num + 1))
	echo "ok $num $1 # SKIP $2"
}

skip_all()
{
	echo "1..0 # SKIP $1"
	exit $ksft_skip
}

# Print a file as TAP diagnostics.
diag_file()
{
	sed 's/^/# /' "$1"
}

find_archive()
{
	if [ -n "${KHEADERS_ARCHIVE:-}" ]; then
		if [ ! -f "$KHEADERS_ARCHIVE" ] || [ ! -r "$KHEADERS_ARCHIVE" ]; then
			skip_all "KHEADERS_ARCHIVE=$KHEADERS_ARCHIVE is not a readable file"
		fi
		archive=$KHEADERS_ARCHIVE
		return
	fi
	for f in /sys/kernel/kheaders.tar.xz /proc/kheaders.tar.xz; do
		if [ -r "$f" ]; then
			archive=$f
			return
		fi
	done
	if command -v modprobe >/dev/null 2>&1 &&
	   modprobe kheaders 2>/dev/null; then
		loaded_kheaders=1
		for f in /sys/kernel/kheaders.tar.xz /proc/kheaders.tar.xz; do
			if [ -r "$f" ]; then
				archive=$f
				return
			fi
		done
	fi
	skip_all "no kheaders archive: enable CONFIG_IKHEADERS or set KHEADERS_ARCHIVE"
}

echo "TAP version 13"

find_archive
for tool in make xz "${CROSS_COMPILE:-}${CC:-gcc}"; do
	if ! command -v "$tool" >/dev/null 2>&1; then
		skip_all "'$tool' not found: building a module needs make, xz and a C compiler"
	fi
done

# Nothing is unpacked anywhere but in a directory of our own.
if ! tmp=$(mktemp -d) || [ -z "$tmp" ] || [ ! -d "$tmp" ]; then
	tmp=
	skip_all "cannot make a temporary directory (mktemp -d failed): set TMPDIR to a writable directory"
fi
headers=$tmp/headers
echo "1..4"
echo "# archive: $archive"

mkdir "$headers"
# tar stops at its end marker, and the pipeline's status is tar's: xz -t
# first verifies every block's check, the index and the footer.
if ! xz -t "$archive" 2>"$tmp/xz.log"; then
	echo "# the archive is damaged (xz -t):"
	diag_file "$tmp/xz.log"
	extracted=
elif xz -dc "$archive" | tar -xf - -C "$headers"; then
	extracted=1
else
	extracted=
fi
if [ -z "$extracted" ]; then
	not_ok "archive extracts"
	for name in "archive has no Module.symvers" "module builds against the archive" "module loads"; do
		skip_one "$name" "not extracted"
	done
	exit $failed
fi
ok "archive extracts"

if [ -e "$headers/Module.symvers" ]; then
	not_ok "archive has no Module.symvers"
else
	ok "archive has no Module.symvers"
fi

if [ ! -f "$headers/Makefile" ]; then
	# Mainline's archive: headers for tools like eBPF, no kbuild.
	why="headers-only archive (no Makefile): needs CONFIG_IKHEADERS_MODBUILD"
	skip_one "module builds against the archive" "$why"
	skip_one "module loads" "$why"
	exit $failed
fi

# A kernel with symbol versions checks them when it loads a module. Its
# archive cannot carry Module.symvers (written after the archive is
# built); the running kernel serves the vmlinux part of it.
load="module loads"
if grep -q '^CONFIG_MODVERSIONS=y$' "$headers/include/config/auto.conf" 2>/dev/null; then
	if [ -z "${KHEADERS_ARCHIVE:-}" ] && [ -r "$served_symvers" ]; then
		cp "$served_symvers" "$headers/Module.symvers"
		load="module loads, with the symbol versions the kernel serves"
	else
		load="module is refused: it has no symbol versions (CONFIG_MODVERSIONS)"
	fi
fi

cp -R "$here/testmod" "$tmp/testmod"
# Run as the documented recipe, not as part of the kselftest make: a
# selftests O= (through MAKEFLAGS) would otherwise send kbuild to look for
# the archive's config in the selftests output directory.
if (unset MAKEFLAGS MFLAGS MAKELEVEL O KBUILD_OUTPUT
    make -C "$headers" M="$tmp/testmod" modules) >"$tmp/build.log" 2>&1 &&
   [ -f "$tmp/testmod/test.ko" ]; then
	ok "module builds against the archive"
	grep -i 'warning' "$tmp/build.log" | sed 's/^/# /'
else
	diag_file "$tmp/build.log"
	not_ok "module builds against the archive"
fi

# How many kernel log lines contain $1, so that those of an earlier run
# do not count.
count_log()
{
	dmesg | grep -c "$1"
}

if [ -n "${KHEADERS_ARCHIVE:-}" ]; then
	skip_one "$load" "the archive is not the running kernel's"
elif [ "$(id -u)" != 0 ]; then
	skip_one "$load" "loading a module needs root"
elif [ ! -f "$tmp/testmod/test.ko" ]; then
	not_ok "$load"
elif [ "${load#module is refused}" != "$load" ]; then
	refused=$(count_log 'no symbol version for')
	if insmod "$tmp/testmod/test.ko" 2>"$tmp/insmod.log"; then
		rmmod test
		echo "# insmod accepted a module without symbol versions"
		not_ok "$load"
	elif [ "$(count_log 'no symbol version for')" -gt "$refused" ]; then
		diag_file "$tmp/insmod.log"
		dmesg | grep 'no symbol version for' | tail -n 1 | sed 's/^/# /'
		ok "$load"
	else
		diag_file "$tmp/insmod.log"
		not_ok "$load"
	fi
else
	hello=$(count_log 'Hello, world')
	goodbye=$(count_log 'Goodbye, world')
	# modpost writes the module's __versions section into test.mod.c,
	# one "{ 0x<crc>, "<symbol>" }," line a symbol: empty without
	# Module.symvers.
	if [ "$load" != "module loads" ] &&
	   ! grep -q '^	{ 0x[0-9a-f]*, "' "$tmp/testmod/test.mod.c"; then
		echo "# test.mod.c's __versions is empty: test.ko was built without symbol versions"
		not_ok "$load"
	elif insmod "$tmp/testmod/test.ko" &&
	   [ "$(count_log 'Hello, world')" -gt "$hello" ] &&
	   rmmod test &&
	   [ "$(count_log 'Goodbye, world')" -gt "$goodbye" ]; then
		ok "$load"
	else
		# The kernel says why it refused a module.
		dmesg | tail -n 3 | sed 's/^/# /'
		not_ok "$load"
	fi
fi

exit $failed
