#!/bin/sh
# The two measurements behind BENCHMARKS.md's "Reading the figures" that
# `khtest bench` does not make, written to target/khtest/bench/by-hand.txt:
#
#  - file creation right after a deletion: `tar -xJf` of an archive on a
#    quiet disk, right after `rm -rf` of an extraction, 70 s later, and
#    right after another `rm -rf` but into a randomly named directory of a
#    `chattr +T` one, as harness/src/scratch.rs does (ext4 without a
#    journal skips recently freed inodes, one by one);
#  - xz settings on the archive's tar: single-threaded as before, and two
#    threads on blocks of 16, 20 and 24 MiB (size in bytes, seconds).
#
#   scripts/measure-disk-and-xz.sh ARCHIVE.tar.xz
#
# ARCHIVE: e.g. target/khtest/x86_64-y-o/kheaders_data.tar.xz. About 4 min.
set -eu

archive=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$repo/target/khtest/bench
work=$out/by-hand
mkdir -p "$out"
rm -rf "$work"
mkdir -p "$work"
report=$out/by-hand.txt

# seconds CMD...: run CMD, print its wall time in seconds.
seconds()
{
	start=$(date +%s.%N)
	"$@"
	end=$(date +%s.%N)
	echo "$end - $start" | bc
}

untar()
{
	mkdir "$1"
	tar -xJf "$archive" -C "$1"
}

{
	echo "archive: $archive"
	echo "journal: $(cat /sys/fs/ext4/*/journal_task 2>/dev/null | head -1 || echo unknown)"
	sleep 70
	sync
	echo "tar -xJf, quiet disk: $(seconds untar "$work/a") s"
	sync
	rm -rf "$work/a"
	sync
	echo "tar -xJf, right after rm -rf of that tree: $(seconds untar "$work/b") s"
	sync
	sleep 70
	echo "tar -xJf, 70 s later: $(seconds untar "$work/c") s"
	# What harness/src/scratch.rs does: a parent flagged as the top of a
	# hierarchy, and a new tree under a random name in it.
	mkdir "$work/top"
	chattr +T "$work/top" 2>/dev/null || echo "(chattr +T refused here)"
	sync
	rm -rf "$work/b"
	sync
	echo "tar -xJf, right after rm -rf, into a new directory of a chattr +T one: $(seconds untar "$(mktemp -d -u "$work/top/XXXXXXXX")") s"
	rm -rf "$work/c" "$work/top"

	xz -dc "$archive" > "$work/a.tar"
	echo "tar: $(stat -c %s "$work/a.tar") bytes"
	for how in "" "-T2 --block-size=16MiB" "-T2 --block-size=20MiB" "-T2 --block-size=24MiB"; do
		t=$(seconds sh -c "xz --check=crc32 $how --lzma2=preset=9,lc=4,pb=0 < '$work/a.tar' > '$work/a.tar.xz'")
		echo "xz ${how:-single thread}: $(stat -c %s "$work/a.tar.xz") bytes, $t s"
	done
} | tee "$report"
rm -rf "$work"
