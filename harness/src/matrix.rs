//! The matrix: `configs/matrix.yaml`, one entry per cell.
//!
//! Parsing is strict (unknown keys are errors) and everything a cell refers to
//! is checked before anything is built, so that a typo costs seconds, not a
//! kernel build.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Matrix {
    pub cells: Vec<Cell>,
    /// Directory the fragment names are relative to (set after parsing).
    #[serde(skip)]
    pub fragment_dir: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Arch {
    #[serde(rename = "x86_64")]
    X86_64,
    #[serde(rename = "arm64")]
    Arm64,
}

/// Which kernel a cell builds: its source and its series under `kernel/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
pub enum Kernel {
    /// The LTS that Android 16 devices run.
    #[default]
    #[serde(rename = "6.12")]
    V6_12,
    /// Current mainline, as Debian's trixie-backports carries it.
    #[serde(rename = "7.3")]
    V7_3,
}

/// Everything that differs between the kernels, in one place.
#[derive(Debug)]
pub struct KernelFacts {
    /// The matrix's name for it, and its series' directory under `kernel/`.
    pub version: &'static str,
    /// The Debian package that carries its source as a `.tar.xz`.
    pub package: &'static str,
    /// Where that package puts the `.tar.xz`.
    pub tarball: &'static str,
    /// The apt suite that has the package, when the host's sources do not
    /// (a private sources list fetches it; the host's apt is not changed).
    pub suite: Option<&'static str>,
}

const V6_12: KernelFacts = KernelFacts { version: "6.12", package: "linux-source-6.12", tarball: "/usr/src/linux-source-6.12.tar.xz", suite: None };

const V7_3: KernelFacts =
    KernelFacts { version: "7.3", package: "linux-source-7.3", tarball: "/usr/src/linux-source-7.3.tar.xz", suite: Some("trixie-backports") };

impl Kernel {
    pub const ALL: [Kernel; 2] = [Kernel::V6_12, Kernel::V7_3];

    pub fn facts(self) -> &'static KernelFacts {
        match self {
            Kernel::V6_12 => &V6_12,
            Kernel::V7_3 => &V7_3,
        }
    }

    pub fn version(self) -> &'static str {
        self.facts().version
    }
}

impl std::str::FromStr for Kernel {
    type Err = String;

    fn from_str(s: &str) -> Result<Kernel, String> {
        Kernel::ALL.into_iter().find(|k| k.version() == s).ok_or_else(|| {
            let known: Vec<&str> = Kernel::ALL.iter().map(|k| k.version()).collect();
            format!("no kernel {s:?}: the series are for {}", known.join(", "))
        })
    }
}

/// How kheaders is built into the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum Kheaders {
    #[serde(rename = "y")]
    BuiltIn,
    #[serde(rename = "m")]
    Module,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BuildKind {
    /// `make O=<dir>` against a shared, read-only patched tree.
    #[default]
    OutOfTree,
    /// `make` inside the cell's own copy of the tree.
    InTree,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cell {
    /// Test name: `[a-z0-9_-]+`, unique.
    pub name: String,
    /// What the cell proves, for the report.
    #[serde(default)]
    pub description: String,
    /// The kernel it builds (default 6.12).
    #[serde(default)]
    pub kernel: Kernel,
    pub arch: Arch,
    pub kheaders: Kheaders,
    /// Ask for module-build artifacts in the archive (CONFIG_IKHEADERS_MODBUILD).
    #[serde(default = "yes")]
    pub modbuild: bool,
    #[serde(default)]
    pub build: BuildKind,
    /// Apply the kernel's series, `kernel/<version>/series` (false: the
    /// kernel as Debian ships it).
    #[serde(default = "yes")]
    pub patched: bool,
    /// Where the configuration starts (default `tinyconfig`).
    #[serde(default)]
    pub base: Base,
    /// Kconfig fragments merged over the base, in order.
    #[serde(default)]
    pub fragments: Vec<String>,
    /// Also exercise the archive's build rules in a scratch object tree:
    /// a second build, added/changed/removed headers, config and timestamp
    /// changes, generator errors (K6, K7, K9). Out-of-tree, patched cells.
    #[serde(default)]
    pub regen: bool,
    /// What loading the test module must do in this cell's guest.
    #[serde(default)]
    pub module_load: ModuleLoad,
    /// Run the archive's real users on the device after the device phase
    /// (the `clients` phase: DKMS).
    #[serde(default)]
    pub clients: bool,
    /// The device's recipe builds the test module with `W=1`: kbuild's
    /// extra warnings, which run `scripts/kernel-doc` on every C file.
    #[serde(default)]
    pub w1: bool,
    /// The compilers the kernel is built with (and the device's modules).
    #[serde(default)]
    pub toolchain: Toolchain,
    /// Also serve `/proc/kheaders.tar.xz` (`CONFIG_IKHEADERS_PROC`, the
    /// series' opt-in); false: the file must not exist. Patched cells.
    #[serde(default = "yes")]
    pub proc: bool,
}

/// The compilers a cell's kernel, and every module built against its
/// archive, are built with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Toolchain {
    /// GCC and binutils: `CROSS_COMPILE=<triple>-` when cross-building.
    #[default]
    Gcc,
    /// `LLVM=` (clang, lld and the llvm tools), as Android builds every
    /// GKI kernel: no `CROSS_COMPILE`, clang's `--target` follows `ARCH`.
    Llvm,
}

/// The `LLVM=` of LLVM cells: Debian 12's newest LLVM, version-suffixed
/// (its unsuffixed `clang` is 14; 7.3 needs 17.0.1 or later).
pub const LLVM_SUFFIX: &str = "-19";

/// The Debian packages of [`LLVM_SUFFIX`]'s LLVM: clang, ld.lld, llvm-ar
/// and the other tools `LLVM=` names.
pub const LLVM_PACKAGES: [&str; 3] = ["clang-19", "lld-19", "llvm-19"];

impl Toolchain {
    /// The make variables, besides `ARCH`, that select this toolchain for
    /// a build of `arch` on this host.
    pub fn make_vars(self, arch: Arch) -> Vec<(&'static str, String)> {
        match self {
            Toolchain::Gcc if arch.is_host() => vec![],
            Toolchain::Gcc => vec![("CROSS_COMPILE", arch.cross_compile())],
            Toolchain::Llvm => vec![("LLVM", LLVM_SUFFIX.to_owned())],
        }
    }

    /// What a module build on the device itself needs besides make's
    /// defaults: the device is native, so only the toolchain's choice.
    pub fn device_vars(self) -> Vec<(&'static str, String)> {
        match self {
            Toolchain::Gcc => vec![],
            Toolchain::Llvm => vec![("LLVM", LLVM_SUFFIX.to_owned())],
        }
    }

    /// The C compiler of a build of `arch` (kbuild's `CC`).
    pub fn cc(self, arch: Arch) -> String {
        match self {
            Toolchain::Gcc => format!("{}gcc", arch.cross_compile()),
            Toolchain::Llvm => format!("clang{LLVM_SUFFIX}"),
        }
    }

    /// The build machine's compiler (kbuild's `HOSTCC`).
    pub fn hostcc(self) -> String {
        match self {
            Toolchain::Gcc => "gcc".to_owned(),
            Toolchain::Llvm => format!("clang{LLVM_SUFFIX}"),
        }
    }

    /// The linker of a build of `arch` (kbuild's `LD`).
    pub fn ld(self, arch: Arch) -> String {
        match self {
            Toolchain::Gcc => format!("{}ld", arch.cross_compile()),
            Toolchain::Llvm => format!("ld.lld{LLVM_SUFFIX}"),
        }
    }
}

/// The expected outcome of `insmod test.ko`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModuleLoad {
    /// It loads, prints `Hello, world`, and unloads printing `Goodbye, world`.
    #[default]
    Loads,
    /// A `CONFIG_MODVERSIONS` kernel that serves no symbol versions
    /// refuses it: the archive has no `Module.symvers`, so the module
    /// carries none. (A kernel of the series serves them: `Loads`.)
    RefusedNoVersions,
}

/// The fragment with what the clients phase's programs need of the kernel.
pub const CLIENTS_FRAGMENT: &str = "clients.config";

/// Where a cell's configuration starts, before its fragments and its
/// kheaders options are merged on top.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum Base {
    /// A kbuild target that writes `.config`: `tinyconfig`, `defconfig`,
    /// or an arch's `*_defconfig`, such as Android's `gki_defconfig` in an
    /// Android tree given with `--tree`.
    Target(String),
    /// A whole `.config`: a file under `configs/` (a name with a `/`, or
    /// ending in `.config`), such as a distribution's config.
    File(String),
}

impl Default for Base {
    fn default() -> Base {
        Base::Target("tinyconfig".into())
    }
}

impl TryFrom<String> for Base {
    type Error = String;

    fn try_from(s: String) -> Result<Base, String> {
        if s.contains('/') || s.ends_with(".config") {
            if s.starts_with('/') || s.split('/').any(|part| part == ".." || part.is_empty()) {
                return Err(format!("base {s:?}: name a file under configs/ by a relative path without `..`"));
            }
            return Ok(Base::File(s));
        }
        if s.ends_with("config") && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Ok(Base::Target(s));
        }
        Err(format!(
            "base {s:?}: use tinyconfig, defconfig, an arch's *_defconfig target (such as gki_defconfig), \
             or a file under configs/ (a path with a `/`, or ending in `.config`)"
        ))
    }
}

impl From<Base> for String {
    fn from(b: Base) -> String {
        match b {
            Base::Target(s) | Base::File(s) => s,
        }
    }
}

fn yes() -> bool {
    true
}

/// Everything that differs between the architectures, in one place.
#[derive(Debug)]
pub struct ArchFacts {
    /// The kernel's `ARCH=`.
    pub kernel_arch: &'static str,
    /// The kernel's `SRCARCH`: the directory under `arch/`.
    pub srcarch: &'static str,
    /// Rust's name for it (`std::env::consts::ARCH`) when it is the host.
    pub rust_arch: &'static str,
    /// The GNU triple: `CROSS_COMPILE=` is it and a dash, clang's `--target`.
    pub triple: &'static str,
    /// Debian's cross compiler, binutils and C library for it.
    pub cross_packages: [&'static str; 3],
    /// Debian's GCC plugin headers for its gcc (the host's or the cross
    /// one): the RANDSTRUCT probe of a gcc cell needs them.
    pub gcc_plugin_package: &'static str,
    /// The boot image, in the object tree.
    pub kernel_image: &'static str,
    pub qemu: &'static str,
    pub qemu_package: &'static str,
    /// QEMU's machine options.
    pub qemu_board: &'static [&'static str],
    /// The guest's serial console.
    pub console: &'static str,
    /// The virtio-serial controller that carries the transfer port.
    pub virtio_serial: &'static str,
    /// A static busybox for the guest, on this host, and its package.
    pub busybox: &'static str,
    pub busybox_package: &'static str,
    /// Debian's name for it (a package's architecture).
    pub debian_arch: &'static str,
    /// The Rust target of the kselftest port's static binary for the guest.
    pub musl_target: &'static str,
    /// The virtio transport of the guest's 9p shares.
    pub virtio_9p: &'static str,
    /// Its ELF `e_machine` (EM_X86_64, EM_AARCH64).
    pub elf_machine: u16,
}

const X86_64: ArchFacts = ArchFacts {
    kernel_arch: "x86_64",
    srcarch: "x86",
    rust_arch: "x86_64",
    triple: "x86_64-linux-gnu",
    cross_packages: ["gcc-x86-64-linux-gnu", "binutils-x86-64-linux-gnu", "libc6-dev-amd64-cross"],
    gcc_plugin_package: "gcc-12-plugin-dev",
    kernel_image: "arch/x86/boot/bzImage",
    qemu: "qemu-system-x86_64",
    qemu_package: "qemu-system-x86",
    qemu_board: &[],
    console: "ttyS0",
    virtio_serial: "virtio-serial-pci",
    busybox: "/bin/busybox",
    busybox_package: "busybox-static",
    debian_arch: "amd64",
    musl_target: "x86_64-unknown-linux-musl",
    virtio_9p: "virtio-9p-pci",
    elf_machine: 62,
};

const ARM64: ArchFacts = ArchFacts {
    kernel_arch: "arm64",
    srcarch: "arm64",
    rust_arch: "aarch64",
    triple: "aarch64-linux-gnu",
    cross_packages: ["gcc-aarch64-linux-gnu", "binutils-aarch64-linux-gnu", "libc6-dev-arm64-cross"],
    gcc_plugin_package: "gcc-12-plugin-dev-aarch64-linux-gnu",
    kernel_image: "arch/arm64/boot/Image",
    qemu: "qemu-system-aarch64",
    qemu_package: "qemu-system-arm",
    qemu_board: &["-M", "virt", "-cpu", "cortex-a57"],
    console: "ttyAMA0",
    virtio_serial: "virtio-serial-device",
    // Unpacked from Debian's busybox-static:arm64 by scripts/setup-host.sh
    // (installing it would replace the host's /bin/busybox).
    busybox: "/usr/local/lib/khtest/arm64/busybox",
    busybox_package: "busybox-static:arm64, unpacked by scripts/setup-host.sh",
    debian_arch: "arm64",
    musl_target: "aarch64-unknown-linux-musl",
    virtio_9p: "virtio-9p-device",
    elf_machine: 183,
};

impl Arch {
    pub fn facts(self) -> &'static ArchFacts {
        match self {
            Arch::X86_64 => &X86_64,
            Arch::Arm64 => &ARM64,
        }
    }

    /// The kernel's `ARCH=`.
    pub fn kernel_arch(self) -> &'static str {
        self.facts().kernel_arch
    }

    /// The kernel's `SRCARCH` (the directory under `arch/`).
    pub fn srcarch(self) -> &'static str {
        self.facts().srcarch
    }

    pub fn is_host(self) -> bool {
        self.facts().rust_arch == std::env::consts::ARCH
    }

    /// `CROSS_COMPILE=` for this arch on this host (empty for native).
    pub fn cross_compile(self) -> String {
        if self.is_host() {
            String::new()
        } else {
            format!("{}-", self.facts().triple)
        }
    }
}

impl Matrix {
    pub fn load(path: &Path) -> Result<Matrix> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read the matrix {}", path.display()))?;
        let dir = path.parent().unwrap_or(Path::new("."));
        Matrix::parse(&text, &dir.join("fragments")).with_context(|| format!("in the matrix {}", path.display()))
    }

    /// Parse and validate; `fragment_dir` is where fragment names resolve.
    pub fn parse(text: &str, fragment_dir: &Path) -> Result<Matrix> {
        let mut m: Matrix = yaml_serde::from_str(text)?;
        m.fragment_dir = fragment_dir.to_owned();
        m.validate()?;
        Ok(m)
    }

    fn validate(&self) -> Result<()> {
        if self.cells.is_empty() {
            bail!("`cells` is empty: a matrix needs at least one cell");
        }
        let mut seen = HashSet::new();
        for c in &self.cells {
            let ok = !c.name.is_empty() && c.name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
            if !ok {
                bail!("cell name {:?}: use only a-z, 0-9, '-' and '_' (it names a test and a directory)", c.name);
            }
            if !seen.insert(&c.name) {
                bail!("duplicate cell name {:?}: cell names must be unique", c.name);
            }
            if c.modbuild && !c.patched {
                bail!(
                    "cell {:?}: `modbuild: true` needs `patched: true` (mainline has no module-build artifacts); \
                     set `modbuild: false` for the headers-only baseline",
                    c.name
                );
            }
            if c.regen && (!c.patched || c.build != BuildKind::OutOfTree) {
                bail!(
                    "cell {:?}: `regen: true` needs `patched: true` and `build: out-of-tree` \
                     (it drives the series' generator in a second object tree)",
                    c.name
                );
            }
            if c.module_load != ModuleLoad::Loads && !c.modbuild {
                bail!("cell {:?}: `module_load` needs `modbuild: true` (no module is built otherwise)", c.name);
            }
            if c.clients && c.module_load != ModuleLoad::Loads {
                bail!("cell {:?}: `clients: true` needs a module that loads (DKMS loads what it builds with modprobe)", c.name);
            }
            if c.w1 && !(c.modbuild && c.patched) {
                bail!("cell {:?}: `w1: true` needs the module-build archive (patched, modbuild): the recipe builds nothing without it", c.name);
            }
            if !c.proc && !c.patched {
                bail!("cell {:?}: `proc` is the series' option (CONFIG_IKHEADERS_PROC): leave it out of an unpatched cell", c.name);
            }
            if c.clients && c.toolchain == Toolchain::Llvm {
                bail!("cell {:?}: `clients: true` needs `toolchain: gcc`: the clients phase runs DKMS and bcc with the device's gcc", c.name);
            }
            if c.clients && !c.fragments.iter().any(|f| f == CLIENTS_FRAGMENT) {
                bail!("cell {:?}: `clients: true` needs the {CLIENTS_FRAGMENT} fragment (bcc's kernel options): add it to `fragments`", c.name);
            }
            if let Base::File(f) = &c.base {
                let p = self.config_dir().join(f);
                if !p.is_file() {
                    bail!("cell {:?}: base {:?} not found (looked for {})", c.name, f, p.display());
                }
            }
            for f in &c.fragments {
                let p = self.fragment_dir.join(f);
                if !p.is_file() {
                    bail!("cell {:?}: fragment {:?} not found (looked for {})", c.name, f, p.display());
                }
            }
        }
        Ok(())
    }

    /// `configs/`: the matrix's directory, where a base file's name resolves.
    pub fn config_dir(&self) -> PathBuf {
        self.fragment_dir.parent().unwrap_or(Path::new(".")).to_owned()
    }

    pub fn fragment_paths(&self, cell: &Cell) -> Vec<PathBuf> {
        cell.fragments.iter().map(|f| self.fragment_dir.join(f)).collect()
    }

    /// The cells whose names are in `names` (all cells if `names` is empty);
    /// an unknown name is an error that lists the known ones.
    pub fn select(&self, names: &[String]) -> Result<Vec<&Cell>> {
        if names.is_empty() {
            return Ok(self.cells.iter().collect());
        }
        names
            .iter()
            .map(|n| {
                self.cells.iter().find(|c| &c.name == n).with_context(|| {
                    let known: Vec<_> = self.cells.iter().map(|c| c.name.as_str()).collect();
                    format!("no cell named {n:?}; the matrix has: {}", known.join(", "))
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frag_dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("base.config"), "CONFIG_MODULES=y\n").unwrap();
        d
    }

    const GOOD: &str = "
cells:
  - name: x86_64-y
    arch: x86_64
    kheaders: y
    fragments: [base.config]
  - name: baseline
    arch: x86_64
    kheaders: y
    patched: false
    modbuild: false
    build: in-tree
";

    #[test]
    fn parses_a_good_matrix_with_defaults() {
        let d = frag_dir();
        let m = Matrix::parse(GOOD, d.path()).unwrap();
        assert_eq!(m.cells.len(), 2);
        let c = &m.cells[0];
        assert!(c.patched && c.modbuild);
        assert_eq!(c.build, BuildKind::OutOfTree);
        assert_eq!(m.cells[1].build, BuildKind::InTree);
        assert_eq!(m.fragment_paths(c), vec![d.path().join("base.config")]);
        assert_eq!(c.kernel, Kernel::V6_12, "6.12 is the default kernel");
    }

    #[test]
    fn the_kernel_key_takes_the_series_versions_and_shows_in_json() {
        let m = Matrix::parse("cells:\n  - name: a\n    kernel: \"7.3\"\n    arch: x86_64\n    kheaders: y\n", frag_dir().path()).unwrap();
        assert_eq!(m.cells[0].kernel, Kernel::V7_3);
        let json = serde_json::to_string(&m.cells).unwrap();
        assert!(json.contains(r#""kernel":"7.3""#), "{json}");
        let e = err("cells:\n  - name: a\n    kernel: \"5.4\"\n    arch: x86_64\n    kheaders: y\n");
        assert!(e.contains("5.4") && e.contains("line 3"), "{e}");
        assert_eq!("7.3".parse::<Kernel>(), Ok(Kernel::V7_3));
        assert!("7".parse::<Kernel>().unwrap_err().contains("6.12, 7.3"));
    }

    #[test]
    fn the_toolchain_key_picks_the_make_variables() {
        let m = Matrix::parse(
            "cells:\n  - {name: a, arch: arm64, kheaders: y, toolchain: llvm}\n  - {name: b, arch: arm64, kheaders: y}\n",
            frag_dir().path(),
        )
        .unwrap();
        assert_eq!(m.cells[0].toolchain, Toolchain::Llvm);
        assert_eq!(m.cells[1].toolchain, Toolchain::Gcc, "gcc is the default");
        // Android's way: LLVM= alone, clang's --target follows ARCH.
        assert_eq!(Toolchain::Llvm.make_vars(Arch::Arm64), [("LLVM", "-19".to_owned())]);
        assert_eq!(Toolchain::Llvm.device_vars(), [("LLVM", "-19".to_owned())]);
        assert!(Toolchain::Gcc.device_vars().is_empty());
        let host = if Arch::X86_64.is_host() { Arch::X86_64 } else { Arch::Arm64 };
        assert!(Toolchain::Gcc.make_vars(host).is_empty());
        let other = if host == Arch::X86_64 { Arch::Arm64 } else { Arch::X86_64 };
        assert_eq!(Toolchain::Gcc.make_vars(other), [("CROSS_COMPILE", other.cross_compile())]);
        assert_eq!((Toolchain::Llvm.cc(Arch::Arm64), Toolchain::Llvm.hostcc()), ("clang-19".to_owned(), "clang-19".to_owned()));
        let e = err("cells:\n  - {name: a, arch: arm64, kheaders: y, toolchain: icc}\n");
        assert!(e.contains("icc"), "{e}");
    }

    fn err(text: &str) -> String {
        let d = frag_dir();
        format!("{:#}", Matrix::parse(text, d.path()).unwrap_err())
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = err("cells:\n  - name: a\n    arch: x86_64\n    kheaders: y\n    colour: blue\n");
        assert!(e.contains("unknown field `colour`") && e.contains("line 5"), "{e}");
    }

    #[test]
    fn unknown_arch_and_bad_values_are_errors() {
        let e = err("cells:\n  - name: a\n    arch: riscv\n    kheaders: y\n");
        assert!(e.contains("riscv") && e.contains("line 3"), "{e}");
        let e = err("cells:\n  - name: a\n    arch: x86_64\n    kheaders: maybe\n");
        assert!(e.contains("maybe"), "{e}");
    }

    #[test]
    fn malformed_yaml_is_an_error_with_a_location() {
        let e = err("cells:\n  - name: [unclosed\n");
        assert!(e.contains("line"), "{e}");
    }

    #[test]
    fn duplicate_names_missing_fragments_and_bad_names() {
        let dup = "cells:\n  - {name: a, arch: x86_64, kheaders: y}\n  - {name: a, arch: x86_64, kheaders: m}\n";
        assert!(err(dup).contains("duplicate cell name \"a\""));
        let missing = "cells:\n  - {name: a, arch: x86_64, kheaders: y, fragments: [nope.config]}\n";
        assert!(err(missing).contains("fragment \"nope.config\" not found"));
        let bad = "cells:\n  - {name: 'A b', arch: x86_64, kheaders: y}\n";
        assert!(err(bad).contains("use only a-z"));
        assert!(err("cells: []\n").contains("at least one cell"));
    }

    #[test]
    fn modbuild_needs_the_series() {
        let e = err("cells:\n  - {name: a, arch: x86_64, kheaders: y, patched: false}\n");
        assert!(e.contains("`modbuild: true` needs `patched: true`"), "{e}");
    }

    #[test]
    fn regen_and_module_load_need_what_they_drive() {
        let e = err("cells:\n  - {name: a, arch: x86_64, kheaders: y, regen: true, build: in-tree}\n");
        assert!(e.contains("`regen: true` needs"), "{e}");
        let e = err("cells:\n  - {name: a, arch: x86_64, kheaders: y, patched: false, modbuild: false, module_load: refused-no-versions}\n");
        assert!(e.contains("`module_load` needs `modbuild: true`"), "{e}");
        let e = err("cells:\n  - {name: a, arch: x86_64, kheaders: y, clients: true, fragments: [base.config]}\n");
        assert!(e.contains("needs the clients.config fragment"), "{e}");
        let e = err("cells:\n  - {name: a, arch: x86_64, kheaders: y, patched: false, modbuild: false, proc: false}\n");
        assert!(e.contains("`proc` is the series' option"), "{e}");
        let e = err("cells:\n  - {name: a, arch: x86_64, kheaders: y, clients: true, toolchain: llvm, fragments: [base.config, clients.config]}\n");
        assert!(e.contains("`clients: true` needs `toolchain: gcc`"), "{e}");
        let e = err("cells:\n  - {name: a, arch: x86_64, kheaders: y, modbuild: false, w1: true, fragments: [base.config]}\n");
        assert!(e.contains("`w1: true` needs the module-build archive"), "{e}");
        let e = err("cells:\n  - {name: a, arch: x86_64, kheaders: y, module_load: maybe}\n");
        assert!(e.contains("maybe") && e.contains("refused-no-versions"), "{e}");
        let d = frag_dir();
        let m = Matrix::parse("cells:\n  - {name: a, arch: x86_64, kheaders: m, regen: true, module_load: refused-no-versions}\n", d.path()).unwrap();
        assert!(m.cells[0].regen);
        assert_eq!(m.cells[0].module_load, ModuleLoad::RefusedNoVersions);
    }

    #[test]
    fn select_names_unknown_cells() {
        let d = frag_dir();
        let m = Matrix::parse(GOOD, d.path()).unwrap();
        assert_eq!(m.select(&[]).unwrap().len(), 2);
        assert_eq!(m.select(&["baseline".into()]).unwrap()[0].name, "baseline");
        let e = m.select(&["nope".into()]).unwrap_err().to_string();
        assert!(e.contains("x86_64-y, baseline"), "{e}");
    }

    #[test]
    fn the_base_is_a_config_target_or_a_file_under_configs() {
        let configs = tempfile::tempdir().unwrap();
        let frags = configs.path().join("fragments");
        std::fs::create_dir_all(configs.path().join("bases")).unwrap();
        std::fs::create_dir_all(&frags).unwrap();
        std::fs::write(configs.path().join("bases/distro.config"), "CONFIG_MODULES=y\n").unwrap();
        let parse = |base: &str| Matrix::parse(&format!("cells:\n  - {{name: a, arch: x86_64, kheaders: y, base: {base}}}\n"), &frags);
        let m = Matrix::parse("cells:\n  - {name: a, arch: x86_64, kheaders: y}\n", &frags).unwrap();
        assert_eq!(m.cells[0].base, Base::Target("tinyconfig".into()), "tinyconfig is the default");
        assert_eq!(parse("defconfig").unwrap().cells[0].base, Base::Target("defconfig".into()));
        assert_eq!(parse("gki_defconfig").unwrap().cells[0].base, Base::Target("gki_defconfig".into()));
        assert_eq!(parse("bases/distro.config").unwrap().cells[0].base, Base::File("bases/distro.config".into()));
        assert_eq!(m.config_dir(), configs.path());
        let e = format!("{:#}", parse("bases/missing.config").unwrap_err());
        assert!(e.contains("base \"bases/missing.config\" not found") && e.contains("bases/missing.config"), "{e}");
        for bad in ["allyes", "../etc/passwd.config", "/etc/kernel.config", "'make defconfig'"] {
            let e = format!("{:#}", parse(bad).unwrap_err());
            assert!(e.contains("base "), "{bad}: {e}");
        }
    }
}
