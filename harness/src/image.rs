//! The image: a busybox initramfs written as a `newc` cpio archive
//! directly (no root, no `cpio` tool, same bytes every time).
//!
//! It holds `/init` (`images/init`, which drives the guest side of the
//! protocol in [`crate::vm`]), a static busybox, and `/dev/console`.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::matrix::Arch;

/// Where a static busybox for `arch` is on this (x86_64) host.
pub fn busybox_for(arch: Arch) -> PathBuf {
    PathBuf::from(arch.facts().busybox)
}

/// One entry of a `newc` archive.
enum Entry<'a> {
    Dir(&'a str),
    File { name: &'a str, mode: u32, data: &'a [u8] },
    CharDev { name: &'a str, major: u32, minor: u32 },
}

/// Append one `newc` header, name and data, each padded to 4 bytes.
fn write_entry(out: &mut Vec<u8>, ino: u32, name: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
    let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
    let fields = [ino, mode, 0, 0, nlink, 0, data.len() as u32, 0, 0, rdev.0, rdev.1, name.len() as u32 + 1, 0];
    out.extend_from_slice(b"070701");
    for f in fields {
        write!(out, "{f:08X}").unwrap();
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    out.extend_from_slice(data);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while out.len() % 4 != 0 {
        out.push(0);
    }
}

fn cpio(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let ino = i as u32 + 1;
        match *e {
            Entry::Dir(name) => write_entry(&mut out, ino, name, 0o040755, (0, 0), &[]),
            Entry::File { name, mode, data } => write_entry(&mut out, ino, name, 0o100000 | mode, (0, 0), data),
            Entry::CharDev { name, major, minor } => write_entry(&mut out, ino, name, 0o020600, (major, minor), &[]),
        }
    }
    write_entry(&mut out, 0, "TRAILER!!!", 0, (0, 0), &[]);
    out
}

/// Where [`make`] puts extra files in the guest.
pub const MODULES_DIR: &str = "/lib/modules";

/// The initramfs bytes for `init` (the script), `busybox`, `modules`
/// (name, bytes) under [`MODULES_DIR`] and `programs` (name, bytes) in
/// `/bin`.
pub fn initramfs(init: &[u8], busybox: &[u8], modules: &[(String, Vec<u8>)], programs: &[(String, Vec<u8>)]) -> Vec<u8> {
    let names: Vec<String> = modules.iter().map(|(n, _)| format!("{}/{n}", &MODULES_DIR[1..])).collect();
    let program_names: Vec<String> = programs.iter().map(|(n, _)| format!("bin/{n}")).collect();
    let mut entries = vec![
        Entry::Dir("bin"),
        Entry::Dir("dev"),
        Entry::Dir("lib"),
        Entry::Dir("lib/modules"),
        Entry::Dir("proc"),
        Entry::Dir("sys"),
        Entry::Dir("tmp"),
        Entry::CharDev { name: "dev/console", major: 5, minor: 1 },
        Entry::File { name: "bin/busybox", mode: 0o755, data: busybox },
        Entry::File { name: "init", mode: 0o755, data: init },
    ];
    for (name, (_, data)) in names.iter().zip(modules) {
        entries.push(Entry::File { name, mode: 0o644, data });
    }
    for (name, (_, data)) in program_names.iter().zip(programs) {
        entries.push(Entry::File { name, mode: 0o755, data });
    }
    cpio(&entries)
}

/// Write the initramfs for `arch` to `dest`, with the kernel modules
/// `modules` in [`MODULES_DIR`] and `programs` in `/bin` (the serial line
/// is slow host-to-guest: what is known before boot travels in the image).
pub fn make(images_dir: &Path, arch: Arch, modules: &[PathBuf], programs: &[PathBuf], dest: &Path) -> Result<()> {
    let init_path = images_dir.join("init");
    let init = std::fs::read(&init_path).with_context(|| format!("cannot read {}", init_path.display()))?;
    let bb_path = busybox_for(arch);
    let busybox = std::fs::read(&bb_path).with_context(|| format!("cannot read {} (run scripts/setup-host.sh)", bb_path.display()))?;
    let (mods, progs) = (named_files(modules)?, named_files(programs)?);
    std::fs::write(dest, initramfs(&init, &busybox, &mods, &progs)).with_context(|| format!("cannot write {}", dest.display()))
}

/// Each of `paths` as its file name and bytes.
fn named_files(paths: &[PathBuf]) -> Result<Vec<(String, Vec<u8>)>> {
    paths
        .iter()
        .map(|p| {
            let name = p.file_name().context("a path without a file name")?.to_string_lossy().into_owned();
            Ok((name, std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    #[test]
    fn newc_is_read_back_by_cpio() {
        let bytes = initramfs(b"#!/bin/sh\necho hi\n", b"\x7fELF-not-really", &[("m.ko".into(), b"ko".to_vec())], &[("p".into(), b"x".to_vec())]);
        assert_eq!(bytes.len() % 4, 0);
        let mut child = Command::new("cpio")
            .args(["-t", "-v", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("cpio (Debian package cpio)");
        child.stdin.take().unwrap().write_all(&bytes).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let listing = String::from_utf8(out.stdout).unwrap();
        for name in ["bin/busybox", "dev/console", "init", "tmp", "lib/modules/m.ko", "bin/p"] {
            assert!(listing.lines().any(|l| l.ends_with(name)), "{name} missing from:\n{listing}");
        }
        assert!(listing.lines().any(|l| l.starts_with("crw") && l.contains("5,") && l.ends_with("dev/console")), "{listing}");
        assert_eq!(initramfs(b"a", b"b", &[], &[]), initramfs(b"a", b"b", &[], &[]), "not deterministic");
    }
}
