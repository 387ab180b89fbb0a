savedcmd_kernel/kheaders_data.tar.xz := "../kernel/gen_kheaders.sh" "kernel/kheaders_data.tar.xz" "kernel/kheaders-srclist" "kernel/kheaders-objlist" "Sun Nov 17 00:00:00 UTC 2024"

deps_kernel/kheaders_data.tar.xz := \
  ../Makefile \
  ../arch/x86/Makefile \
  ../arch/x86/Makefile_32.cpu \
  scripts/module.lds \

kernel/kheaders_data.tar.xz: $(deps_kernel/kheaders_data.tar.xz)

$(deps_kernel/kheaders_data.tar.xz):
