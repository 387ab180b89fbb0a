//! The eBPF consumer, the archive's first user: compile a kprobe program
//! against the extracted headers the way BCC and `samples/bpf` do (no BTF:
//! the kernel's own headers for the arch, `-D__KERNEL__`, `kconfig.h`
//! forced in, the host-side clang front end for the arch's types, then
//! `llc -march=bpf`), and check the object that comes out.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::matrix::Arch;
use crate::process::{output_limited, run_logged, tail, TOOL_LIMIT};
use crate::report::Verdict;

/// The program's section, and the helpers it calls, by their numbers in
/// `uapi/linux/bpf.h` (`call 35` is `bpf_get_current_task`, `call 113`
/// `bpf_probe_read_kernel`): finding them proves the archived uapi was read.
pub const SECTION: &str = "kprobe/do_nanosleep";
const HELPER_CALLS: &[&str] = &["call 35", "call 113"];

/// `EM_BPF` in an ELF header.
const EM_BPF: u16 = 247;

/// The program compiled for the bench and every cell.
pub fn program(project_root: &Path) -> PathBuf {
    project_root.join("harness/bpf/kheaders_probe.bpf.c")
}

/// The clang front-end arguments for `headers` (an extracted archive).
pub fn clang_args(headers: &Path, arch: Arch) -> Vec<String> {
    let a = arch.srcarch();
    let h = |p: &str| format!("-I{}", headers.join(p).display());
    let mut v = vec![format!("--target={}", clang_target(arch)), "-nostdinc".into()];
    for dir in [
        format!("arch/{a}/include"),
        format!("arch/{a}/include/generated"),
        "include".into(),
        format!("arch/{a}/include/uapi"),
        format!("arch/{a}/include/generated/uapi"),
        "include/uapi".into(),
        "include/generated/uapi".into(),
    ] {
        v.push(h(&dir));
    }
    v.push("-include".into());
    v.push(headers.join("include/linux/kconfig.h").display().to_string());
    for f in [
        "-D__KERNEL__",
        "-D__BPF_TRACING__",
        "-Wno-unused-value",
        "-Wno-pointer-sign",
        "-Wno-compare-distinct-pointer-types",
        "-Wno-gnu-variable-sized-type-not-at-end",
        "-Wno-address-of-packed-member",
        "-Wno-tautological-compare",
        "-Wno-unknown-warning-option",
        "-fno-stack-protector",
        "-fno-asynchronous-unwind-tables",
        // Since 6.19 the kernel's headers use tagged anonymous struct
        // members (`struct ns_tree;` in struct ns_common), as the kernel
        // builds with -fms-extensions.
        "-fms-extensions",
        "-Wno-microsoft-anon-tag",
        "-O2",
        "-emit-llvm",
        "-Xclang",
        "-disable-llvm-passes",
    ] {
        v.push(f.into());
    }
    v
}

fn clang_target(arch: Arch) -> &'static str {
    arch.facts().triple
}

/// Compile `program` against `headers` into `work/kheaders_probe.bpf.o`;
/// all output goes to `log`.
pub fn compile(program: &Path, headers: &Path, arch: Arch, work: &Path, log: &Path) -> Verdict {
    let bc = work.join("kheaders_probe.bc");
    let opt = work.join("kheaders_probe.opt.bc");
    let obj = work.join("kheaders_probe.bpf.o");
    // The clang resource directory: stddef.h and friends without libc.
    let resource = match output_limited(Command::new("clang").arg("-print-file-name=include"), TOOL_LIMIT) {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        Ok(o) => return Verdict::Error(format!("clang -print-file-name failed: {}", String::from_utf8_lossy(&o.stderr))),
        Err(e) => return Verdict::Error(format!("cannot run clang (Debian package clang): {e:#}")),
    };
    let mut front = Command::new("clang");
    front.args(clang_args(headers, arch)).args(["-isystem", &resource]).arg("-c").arg(program).arg("-o").arg(&bc);
    let mut middle = Command::new("opt");
    middle.arg("-O2").arg(&bc).arg("-o").arg(&opt);
    let mut back = Command::new("llc");
    back.args(["-march=bpf", "-filetype=obj"]).arg(&opt).arg("-o").arg(&obj);
    for (what, mut cmd) in [("clang", front), ("opt", middle), ("llc", back)] {
        match run_logged(&mut cmd, log, Duration::from_secs(300)) {
            Ok(st) if st.success() => {}
            Ok(st) => {
                return Verdict::Fail(format!(
                    "{what} failed ({st}) on the archive's headers (log: {}):\n    {}",
                    log.display(),
                    tail(log, 8).replace('\n', "\n    ")
                ))
            }
            Err(e) => return Verdict::Error(format!("{e:#}")),
        }
    }
    let dump = match output_limited(Command::new("llvm-objdump").arg("-h").arg("-d").arg(&obj), TOOL_LIMIT) {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => return Verdict::Error(format!("llvm-objdump failed: {}", String::from_utf8_lossy(&o.stderr))),
        Err(e) => return Verdict::Error(format!("cannot run llvm-objdump (Debian package llvm): {e:#}")),
    };
    let machine = std::fs::read(&obj).ok().and_then(|b| kheaders_selftest::elf::machine(&b));
    judge(machine, &dump)
}

/// The object must be BPF, with a non-empty program section calling the
/// helpers the program uses.
pub fn judge(machine: Option<u16>, objdump: &str) -> Verdict {
    if machine != Some(EM_BPF) {
        return Verdict::Fail(format!("the object is not a BPF ELF file (e_machine {machine:?})"));
    }
    let size = objdump.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.len() >= 3 && f[1] == SECTION).then(|| u64::from_str_radix(f[2], 16).ok()).flatten()
    });
    match size {
        None => return Verdict::Fail(format!("the object has no {SECTION} section")),
        Some(0) => return Verdict::Fail(format!("the {SECTION} section is empty")),
        Some(_) => {}
    }
    let missing: Vec<&str> = HELPER_CALLS.iter().copied().filter(|c| !objdump.lines().any(|l| l.trim_end().ends_with(c))).collect();
    if !missing.is_empty() {
        return Verdict::Fail(format!("the program does not make the helper calls it should ({})", missing.join(", ")));
    }
    Verdict::Pass
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "\nSections:\nIdx Name                    Size     VMA              Type\n  3 kprobe/do_nanosleep     000000e0 0000000000000000 TEXT\n\
                        \nDisassembly of section kprobe/do_nanosleep:\n       1:\t85 00 00 00 23 00 00 00\tcall 35\n      11:\t85 00 00 00 71 00 00 00\tcall 113\n";

    #[test]
    fn a_bpf_object_with_the_program_passes() {
        assert_eq!(judge(Some(EM_BPF), DUMP), Verdict::Pass);
    }

    #[test]
    fn wrong_machine_missing_section_or_calls_fail() {
        assert!(matches!(judge(Some(62), DUMP), Verdict::Fail(m) if m.contains("not a BPF")));
        assert!(matches!(judge(Some(EM_BPF), "Sections:\n"), Verdict::Fail(m) if m.contains("no kprobe")));
        let empty = DUMP.replace("000000e0", "00000000");
        assert!(matches!(judge(Some(EM_BPF), &empty), Verdict::Fail(m) if m.contains("empty")));
        let no_calls = DUMP.replace("call 113", "exit");
        assert!(matches!(judge(Some(EM_BPF), &no_calls), Verdict::Fail(m) if m.contains("call 113")));
    }

    #[test]
    fn include_paths_follow_the_arch() {
        let a = clang_args(Path::new("/h"), Arch::Arm64);
        assert!(a.contains(&"--target=aarch64-linux-gnu".to_owned()));
        assert!(a.contains(&"-I/h/arch/arm64/include/generated/uapi".to_owned()));
        assert!(a.contains(&"/h/include/linux/kconfig.h".to_owned()));
    }
}
