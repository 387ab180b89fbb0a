savedcmd_kernel/kheaders_data.tar.xz := sh ../kernel/gen_kheaders.sh archive kernel/kheaders.list kernel/kheaders_data.tar.xz kernel/.kheaders_data.tar.xz.d "Sun Nov 17 00:00:00 UTC 2024"

source_kernel/kheaders_data.tar.xz := ../Makefile

deps_kernel/kheaders_data.tar.xz := \
    $(wildcard include/config/SHELL) \
    $(wildcard include/config/FUNCTION_TRACER) \
    $(wildcard include/config/CC_OPTIMIZE_FOR_PERFORMANCE) \
    $(wildcard include/config/CC_OPTIMIZE_FOR_SIZE) \
    $(wildcard include/config/RUST_DEBUG_ASSERTIONS) \
    $(wildcard include/config/RUST_OVERFLOW_CHECKS) \
    $(wildcard include/config/CC_IS_GCC) \
    $(wildcard include/config/READABLE_ASM) \
    $(wildcard include/config/STACKPROTECTOR) \
  ../arch/x86/Makefile \
  tools/objtool/objtool \

kernel/kheaders_data.tar.xz: $(deps_kernel/kheaders_data.tar.xz)

$(deps_kernel/kheaders_data.tar.xz):
