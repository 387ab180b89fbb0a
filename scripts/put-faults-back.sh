#!/bin/sh
# Put each fault of the 2019 review back, one at a time, as an extra patch
# on top of the 6.12 series (kernel/6.12/series), and run the cell that must
# catch it. Every run must end red; the summary says which phase and check
# caught each fault.
#
#   scripts/put-faults-back.sh [FAULT...]
#
# With KHTEST_FAULTS_DRY=1 it only writes the fault patches. With
# KHTEST_FAULT_CELL=CELL, CELL must catch them, not the cell named below
# for each (to prove another cell catches a fault too).
#
# Faults: regen (archive regenerated on every build), arch ($(ARCH) for
# $(SRCARCH)), spdx (SPDX lines stripped), symvers (modpost not told that
# Module.symvers is missing), oot (object-tree files not archived: O=
# breaks), pristine (Module.symvers archived and a prerequisite: the
# pristine-tree cycle), errors (a copy error hidden: mainline's copy down a
# pipe, the 2019 review's discarded cpio errors again).
#
# Two faults of the second review (K17), run by default too: xzmem (xz -9's
# 64 MiB dictionary, 65 MiB to decode) and adjust (no --no-adjust: a low
# XZ_DEFAULTS memory limit changes the bytes instead of failing).
#
# Of the kernel series v2, run by default too: hostarch (the archive's host
# programs not rebuilt for the target: an arm64 archive with x86-64 fixdep
# and modpost, caught in arm64-m-gki), randstruct (IKHEADERS_MODBUILD no
# longer excludes RANDSTRUCT: the seed could go into the archive),
# touchconfig (auto.conf a prerequisite again: touch .config rebuilds the
# archive), tmpfiles (no INT trap: an interrupted generator leaves its
# staging directory behind), dtbindings (the generator drops every
# device-tree binding, even those that archived headers include), config
# (the archive no longer depends on kernel/kheaders-config, so a
# configuration change that only autoconf.h shows keeps the old one:
# mainline's own fault, which 7.3's patch 1 and 6.12's patch 2 fix), script (the
# generator not a prerequisite of the archive, as before mainline's
# 626c54af3576: an edit to it keeps the old archive) and snapshot (the
# gdb helpers kept in the list, which finds the object tree's scripts/: what
# scripts_gdb writes there after the list was made changes it and
# regenerates the archive).
#
# Any fault with a -v7_3 suffix goes into the 7.3 series (kernel/7.3/series)
# instead, and is caught in arm64-m-o-v7_3, the one 7.3 cell. Run by
# default: config-v7_3, tmpfiles-v7_3, touchconfig-v7_3, randstruct-v7_3,
# xzmem-v7_3, adjust-v7_3, hostarch-v7_3, dtbindings-v7_3, errors-v7_3,
# symvers-v7_3 (the series' Makefile.modpost differ; caught on the device
# by khtest-symvers's build with no Module.symvers) and snapshot-v7_3.
#
# Of the clients on the device (issue #31), run by default too, each
# caught in x86_64-y-o, the x86_64 clients cell:
# dkmsneeds (the archive without scripts/module.lds, which every module
# build links with: DKMS's build fails on the device too), release (the
# archive's kernel.release from another build: kheaders install refuses
# it, so dkms finds no headers) and bccfield (not a series fault: the bcc
# program reads a task_struct field the archive's headers do not have).
#
# Of the kernel series v3 (issue #33), run by default too: genksyms (6.12's
# archive without genksyms, as v2's list had it under CONFIG_GENKSYMS,
# which 6.12 does not have: the test module exports a symbol, so its build
# runs genksyms;
# caught in x86_64-m-modversions), kerneldoc (6.12's archive without
# scripts/kernel-doc, which kbuild runs on every C file with W=1: caught by
# the device's W=1 recipe in x86_64-y-o), cmdfiles (kbuild's .cmd files
# of the generated headers archived again: caught by the extract check in
# x86_64-y-o; with the regen phase on, as cmdpaths, the .cmd files' paths
# are caught first by its two-source-paths step) and helprecipe (the Kconfig
# help's busybox commands no longer
# make /lib/modules/$(uname -r), so the link fails: caught in the boot
# guest of x86_64-y-o). And four of the cross build, each caught in
# arm64-m-gki, built as Android builds (LLVM=-19, MODULE_SIG, BTF):
# ccdecides (v2's test, CC and HOSTCC differ, back: with LLVM both are
# clang, so nothing is rebuilt), userflags (the rebuild without the
# target's userprog flags: clang builds x86-64 programs), signfile (the
# rebuild builds sign-file, which needs the target's OpenSSL: the kernel
# build fails) and leftover (programs not rebuilt stay: the build
# machine's resolve_btfids in the arm64 archive).
#
# Of the served symbol versions (issue #32), run by default too, each
# caught in x86_64-m-modversions: symcrc (every CRC served one off: the
# served file is not the build's, and the device's module, built with it,
# is refused), symgpl (no EXPORT_SYMBOL_GPL line served) and symnone (no
# file served: the initcall is gone). symcrc-v7_3 is 7.3's symcrc, caught
# in arm64-m-o-v7_3.
#
# Of the one file list (issue #33), run by default too: hostscript
# (scripts/package/rebuild-host-programs, which the generator runs in
# cross builds, not a prerequisite of the archive: an edit to it keeps the
# old archive; caught by the regen phase of x86_64-y-o).
#
# Two more, not run unless named, break the build the plainest ways, to
# show what a broken build's verdict quotes: cc (a compiler error in
# kernel/kheaders.c) and ld (an undefined reference when vmlinux links).
#
# For each fault it prints the verdict as khtest printed it (paths
# relative to the repository).
#
# Each run builds a kernel, mostly from ccache once the series' own cells
# have been built (2 to 3 min with the cell's device phase; the errors,
# adjust, touchconfig, tmpfiles, config, script and snapshot runs also
# drive the regen phase, about 5 min each): about 145 min for all
# forty-four. Results:
# target/khtest-faults/.
# The sed expressions below quote make and shell text literally:
# shellcheck disable=SC2016
set -eu

repo=$(cd "$(dirname "$0")/.." && pwd)
out=${KHTEST_FAULTS_OUT:-$repo/target/khtest-faults}
khtest=$repo/target/release/khtest
faults=${*:-regen arch spdx symvers oot pristine errors xzmem adjust hostarch randstruct touchconfig tmpfiles dtbindings config script snapshot \
	config-v7_3 tmpfiles-v7_3 touchconfig-v7_3 randstruct-v7_3 xzmem-v7_3 adjust-v7_3 hostarch-v7_3 dtbindings-v7_3 errors-v7_3 \
	symvers-v7_3 snapshot-v7_3 dkmsneeds release bccfield genksyms kerneldoc cmdfiles helprecipe \
	ccdecides userflags signfile leftover symcrc symgpl symnone symcrc-v7_3 hostscript}

cd "$repo"
cargo build -q --release -p khtest
mkdir -p "$out"

# The kernel whose series a fault goes into.
kernel_of()
{
	case $1 in
	*-v7_3) echo 7.3 ;;
	*) echo 6.12 ;;
	esac
}

# fault_patch NAME FILE SED-EXPRESSION...: a patch changing FILE of the tree.
fault_patch()
{
	name=$1 file=$2
	shift 2
	cp "$tree/$file" "$out/new"
	for e in "$@"; do
		sed -i "$e" "$out/new"
	done
	if cmp -s "$tree/$file" "$out/new"; then
		echo "put-faults-back: fault $name changes nothing in $file: update this script" >&2
		exit 2
	fi
	diff -u --label "a/$file" --label "b/$file" "$tree/$file" "$out/new" >> "$out/$name.patch" || true
	rm -f "$out/new"
}

# Both series carry the same generator and kbuild rules (6.12's on a
# backport of mainline's), so one expression serves both; "-v7_3" only says
# which series and cells.
# A fault in the copy's own file (not the series): FILE edited by sed E.
client_fault()
{
	cp "$1" "$1.orig"
	sed -i "$2" "$1"
	if cmp -s "$1" "$1.orig"; then
		echo "put-faults-back: the fault changes nothing in $1: update this script" >&2
		exit 2
	fi
	rm -f "$1.orig"
}

# list_drops NAME FILE: the archive's object-tree list without FILE.
list_drops()
{
	fault_patch "$1" scripts/package/extmod-build-files \
		"s,^without_later_files() {\$,&\\n\\tsed '\\\\:^$2\$:d' |,"
}

make_patch()
{
	rm -f "$out/$1.patch"
	case ${1%-v7_3} in
	regen)
		fault_patch "$1" kernel/Makefile 's/\$(call if_changed_rule,kheaders_data)/$(call cmd,kheaders_data)/' ;;
	arch)
		fault_patch "$1" kernel/Makefile 's/"arch\/\$(SRCARCH)\/include"/"arch\/$(ARCH)\/include"/g' ;;
	spdx)
		fault_patch "$1" kernel/gen_kheaders.sh 's/s\/\\\/\\\*((?!SPDX)\.)\*?\\\*\\\/\/\/smg;/s\/\\\/\\*.*?\\*\\\/\/\/smg;/' ;;
	symvers)
		fault_patch "$1" scripts/Makefile.modpost \
			'/^ifneq (\$(wildcard \(\$(objtree)\/\)\{0,1\}include\/config\/kheaders-archive),)$/,/^endif$/d' ;;
	oot)
		# The object tree's generated headers left out, as when the
		# 2019 generator only looked in the source tree.
		fault_patch "$1" kernel/gen_kheaders.sh \
			's/^\${TAR} -c -f "\${tmpdir}.copy.tar" -T "\${objlist}"$/grep -v "\/generated\/" "${objlist}" | ${TAR} -c -f "${tmpdir}.copy.tar" -T -/' ;;
	pristine)
		fault_patch "$1" scripts/package/extmod-build-files \
			"s/^\tsed -e '\/^Module\\\\.symvers\$\/d' -e /\tsed -e /"
		fault_patch "$1" kernel/Makefile \
			's/^\(\t*     \$(srctree)\/scripts\/package\/rebuild-host-programs\) FORCE$/\1 Module.symvers FORCE/' ;;
	errors)
		fault_patch "$1" kernel/gen_kheaders.sh \
			's/^\${TAR} -c -f "\${tmpdir}.copy.tar" -T "\${objlist}"$/${TAR} -c -f - -T "${objlist}" | ${TAR} -xf - -C "${tmpdir}"/' ;;
	xzmem)
		fault_patch "$1" kernel/gen_kheaders.sh 's/--lzma2=preset=6e,lc=4,pb=0/--lzma2=preset=9,lc=4,pb=0/' ;;
	adjust)
		fault_patch "$1" kernel/gen_kheaders.sh 's/ --no-adjust \\$/ \\/' ;;
	hostarch)
		# The series without its patch that rebuilds the host programs
		# for the target: no rebuild, nothing left out, the host's strip.
		fault_patch "$1" kernel/gen_kheaders.sh \
			's/^\tif \[ "\${target}" != "\$(elf_id scripts\/basic\/fixdep)" \]; then$/\tif false; then/' \
			's/^\t\t\trm -f "\${f}"$/\t\t\t:/' \
			's/"\${STRIP}"/strip/g' ;;
	ccdecides)
		# v2's test: rebuild when CC and HOSTCC differ. With LLVM=1
		# both are clang: no rebuild, so the x86-64 programs are left
		# out and the archive has no fixdep or modpost.
		fault_patch "$1" kernel/gen_kheaders.sh \
			's/^\tif \[ "\${target}" != "\$(elf_id scripts\/basic\/fixdep)" \]; then$/\tif [ "${CC}" != "${HOSTCC}" ]; then/' ;;
	userflags)
		# The rebuild without the target's userprog flags: clang
		# without --target= builds x86-64 programs again.
		fault_patch "$1" kernel/gen_kheaders.sh \
			'/^\t\tHOSTCFLAGS="\${KBUILD_USERCFLAGS}" \\$/d' \
			'/^\t\tHOSTLDFLAGS="\${KBUILD_USERLDFLAGS}" \\$/d' ;;
	signfile)
		# The rebuild builds sign-file too: it needs the target's
		# OpenSSL headers and libcrypto, which the host has not.
		fault_patch "$1" kernel/gen_kheaders.sh 's/"\${tmpdir}" --no-sign-file >&2$/"${tmpdir}" >\&2/' ;;
	leftover)
		# Programs that are not rebuilt stay: the arm64 archive
		# carries the build machine's resolve_btfids.
		fault_patch "$1" kernel/gen_kheaders.sh 's/^\t\t\trm -f "\${f}"$/\t\t\t:/' ;;
	randstruct)
		fault_patch "$1" init/Kconfig '/^config IKHEADERS_MODBUILD$/,/^config /{/^\tdepends on !RANDSTRUCT$/d}' ;;
	touchconfig)
		fault_patch "$1" kernel/Makefile 's/^\(\t*     \)\$(obj)\/kheaders-config \\$/\1include\/config\/auto.conf \\/' ;;
	tmpfiles)
		fault_patch "$1" kernel/gen_kheaders.sh "/^trap 'exit 130' INT$/d" ;;
	config)
		fault_patch "$1" kernel/Makefile '/^\t*     \$(obj)\/kheaders-config \\$/d' ;;
	hostscript)
		# rebuild-host-programs, which the generator runs in cross
		# builds, not a prerequisite: an edit to it kept the old archive.
		fault_patch "$1" kernel/Makefile \
			's/^\(\t*     \)\$(srctree)\/scripts\/package\/rebuild-host-programs FORCE$/\1FORCE/' ;;
	script)
		# The generator run by name, not as the rule's first
		# prerequisite: an edit to it no longer regenerates the archive.
		fault_patch "$1" kernel/Makefile \
			's/^\$(obj)\/kheaders_data.tar.xz: \$(src)\/gen_kheaders.sh /$(obj)\/kheaders_data.tar.xz: /' \
			's/cmd_kheaders_data = "\$<"/cmd_kheaders_data = "$(src)\/gen_kheaders.sh"/' ;;
	snapshot)
		# The gdb helpers kept in the list: it takes in whatever
		# scripts_gdb has written into the object tree's scripts/ by
		# then, as the 2019 series' list did.
		fault_patch "$1" scripts/package/extmod-build-files 's/\\|gdb\\|sbom/\\|sbom/' ;;
	dtbindings)
		fault_patch "$1" scripts/package/extmod-build-files 's/ || (\$0 in k)//' ;;
	cc)
		fault_patch "$1" kernel/kheaders.c '/^static int __init ikheaders_init(void)$/,/^}$/s/^\tint ret;$/\tint ret/' ;;
	dkmsneeds)
		list_drops "$1" scripts/module.lds ;;
	release)
		fault_patch "$1" kernel/gen_kheaders.sh \
			's/^rm -f "\${tmpdir}\.copy\.tar"$/\0\nif [ -f "${tmpdir}\/include\/config\/kernel.release" ]; then echo 0.0.0-another-build > "${tmpdir}\/include\/config\/kernel.release"; fi/' ;;
	bccfield)
		# Not in the series: client_fault puts it into the copy.
		: ;;
	genksyms)
		# v2's list named genksyms under CONFIG_GENKSYMS, which 6.12
		# does not have: the archive went without it.
		list_drops "$1" scripts/genksyms/genksyms ;;
	kerneldoc)
		fault_patch "$1" scripts/package/extmod-build-files \
			's/\\|coccicheck\\|spdx/\\|coccicheck\\|kernel-doc\\|spdx/' ;;
	helprecipe)
		fault_patch "$1" init/Kconfig 's/^\(\t    mkdir -p \$d\) \/lib\/modules\/\$(uname -r)$/\1/' ;;
	cmdfiles|cmdpaths)
		fault_patch "$1" scripts/package/extmod-build-files \
			"s/^\t\t! -name '\.\*\.cmd' \(\\\\( -type f -o -type l \\\\) -print\)$/\t\t\1/" ;;
	symcrc)
		fault_patch "$1" kernel/module/symvers.c \
			's/^\(\t\t (u32)t->crcs\[sym - t->start\]\), kernel_symbol_name(sym),$/\1 ^ 1, kernel_symbol_name(sym),/' \
			's/^\(\t\t __start___kcrctab\[sym - __start___ksymtab\]\),$/\1 ^ 1,/' ;;
	symgpl)
		fault_patch "$1" kernel/module/symvers.c \
			'/^\t{ __start___ksymtab_gpl, __stop___ksymtab_gpl, __start___kcrctab_gpl,$/,/^\t  "EXPORT_SYMBOL_GPL" },$/d' ;;
	symnone)
		fault_patch "$1" kernel/module/symvers.c '/^late_initcall(symvers_init);$/d' ;;
	ld)
		fault_patch "$1" kernel/kheaders.c \
			'/^static int __init ikheaders_init(void)$/,/^}$/s/^\tint ret;$/\tint ret;\n\textern int khtest_undefined(void);\n\n\tkhtest_undefined();/' ;;
	*)
		echo "put-faults-back: unknown fault $1" >&2
		exit 2 ;;
	esac
}

# The cell that must catch each fault.
cell_for()
{
	case $1 in
	hostarch|ccdecides|userflags|signfile|leftover) echo arm64-m-gki ;;
	dkmsneeds|release|bccfield) echo x86_64-y-o ;;
	pristine|genksyms|symcrc|symgpl|symnone) echo x86_64-m-modversions ;;
	*-v7_3) echo arm64-m-o-v7_3 ;;
	*) echo x86_64-y-o ;;
	esac
}

status=0
for f in $faults; do
	kernel=$(kernel_of "$f")
	# The patched tree the fault patch is made against.
	tree=$("$khtest" tree --kernel "$kernel")
	make_patch "$f"
	if [ -n "${KHTEST_FAULTS_DRY:-}" ]; then
		echo "$f: $out/$f.patch"
		continue
	fi
	copy=$out/repo-$f
	rm -rf "$copy"
	mkdir -p "$copy"
	git archive HEAD | tar -x -C "$copy"
	case $f in
	bccfield)
		client_fault "$copy/images/khtest-bcc" \
			's/^    field = sys.argv\[1\] if len(sys.argv) > 1 else "pid"$/    field = "no_such_field"/' ;;
	*)
		cp "$out/$f.patch" "$copy/kernel/$kernel/9999-fault-$f.patch"
		echo "9999-fault-$f.patch" >> "$copy/kernel/$kernel/series" ;;
	esac
	# Only these faults need the regen phase: spare the others it.
	case ${f%-v7_3} in
	errors|adjust|touchconfig|tmpfiles|config|script|snapshot|cmdpaths|hostscript) ;;
	*) sed -i 's/^    regen: true$/    regen: false/' "$copy/configs/matrix.yaml" ;;
	esac
	cell=${KHTEST_FAULT_CELL:-$(cell_for "$f")}
	if KHTEST_ROOT=$copy "$khtest" run "$cell" --out "$out/out-$f" > "$out/$f.log" 2>&1; then
		echo "$f: NOT CAUGHT: $cell passed with the fault in (log: $out/$f.log)"
		status=1
	else
		echo "$f: caught by $cell:"
		# The verdict, up to the line that points at the cell's logs.
		awk '/^(FAIL|ERROR) / { on = 1 } /^  logs: / { if (on) exit } on' "$out/$f.log" |
			sed -e "s|$repo/||g" -e 's/^/    /'
		echo
	fi
	# The fault's kernel tree, with its object trees, serves no later run:
	# about 2 GB each, which eleven faults would pile up in the cache.
	# A series fault's tree is its own; a client fault's is the shared one,
	# with every cell's build: keep it.
	case $f in
	bccfield) ;;
	*) rm -rf "$(KHTEST_ROOT=$copy "$khtest" tree --kernel "$kernel")" ;;
	esac
done
exit $status
