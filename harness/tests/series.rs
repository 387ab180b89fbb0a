//! The kernel series themselves: each applies to its Debian kernel (6.12,
//! 7.3) and is `checkpatch.pl --strict` clean, and every file it adds has a
//! maintainer.

use std::process::Command;

use khtest::cache::Cache;
use khtest::matrix::Kernel;
use khtest::tree;
use khtest::Project;

/// `kernel`'s Debian tree from the shared cache, patched or not.
fn prepared(project: &Project, kernel: Kernel, patched: bool) -> tree::Tree {
    let cache = Cache::open(&khtest::default_cache_dir()).unwrap();
    tree::prepare(&cache, None, project, kernel, patched, &|_| {}).unwrap()
}

#[test]
fn series_are_checkpatch_strict_clean() {
    for kernel in Kernel::ALL {
        checkpatch_clean(kernel);
    }
}

fn checkpatch_clean(kernel: Kernel) {
    let project = Project::locate();
    // checkpatch from the unpatched tree, run inside it (it looks for the
    // tree it belongs to).
    let tree = prepared(&project, kernel, false);
    let patches = tree::series(&project, kernel).unwrap();
    // FILE_PATH_CHANGES ("does MAINTAINERS need updating?") fires for any
    // new file; `every_new_file_has_a_maintainer` answers it instead.
    // UNKNOWN_COMMIT_ID fires for every commit a message names when the
    // tree has no git history to look it up in, as Debian's has not; the
    // form `commit <id> ("<subject>")` is still checked.
    let out = Command::new("perl")
        .arg("scripts/checkpatch.pl")
        .args(["--strict", "--color=never", "--ignore", "FILE_PATH_CHANGES,UNKNOWN_COMMIT_ID"])
        .args(&patches)
        .current_dir(&tree.path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let clean = text.matches("total: 0 errors, 0 warnings, 0 checks").count();
    assert!(out.status.success() && clean == patches.len(), "checkpatch --strict is not clean on the {} series:\n{text}", kernel.version());
}

/// The files the patches create.
fn new_files(patches: &[std::path::PathBuf]) -> Vec<String> {
    let mut files = Vec::new();
    for p in patches {
        let text = std::fs::read_to_string(p).unwrap();
        let mut last = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("diff --git a/") {
                last = rest.split(" b/").next().map(str::to_owned);
            } else if line.starts_with("new file mode") {
                files.extend(last.take());
            }
        }
    }
    files
}

#[test]
fn every_new_file_has_a_maintainer() {
    for kernel in Kernel::ALL {
        new_files_have_maintainers(kernel);
    }
}

fn new_files_have_maintainers(kernel: Kernel) {
    let project = Project::locate();
    let tree = prepared(&project, kernel, true);
    let patches = tree::series(&project, kernel).unwrap();
    let maintainers = std::fs::read_to_string(tree.path.join("MAINTAINERS")).unwrap();
    let patterns: Vec<&str> = maintainers.lines().filter_map(|l| l.strip_prefix("F:")).map(str::trim).collect();
    for f in new_files(&patches) {
        assert!(
            patterns.iter().any(|p| *p == f || (p.ends_with('/') && f.starts_with(p))),
            "{f} is new in the {} series and no F: line of MAINTAINERS covers it: add one",
            kernel.version()
        );
    }
}

#[test]
fn each_series_applies_to_its_debian_tree() {
    for kernel in Kernel::ALL {
        let tree = prepared(&Project::locate(), kernel, true);
        let kheaders = std::fs::read_to_string(tree.path.join("kernel/kheaders.c")).unwrap();
        assert!(kheaders.contains("proc_create("), "the {} series' procfs file is not in the patched tree", kernel.version());
    }
}

/// One file list (K26): the archive's lists are `install-extmod-build`'s,
/// printed by `scripts/package/extmod-build-files`, which both use; the
/// kernel's Makefile keeps no list of the object tree's or the source
/// tree's files of its own, which would drift as v2's copy did.
#[test]
fn the_archive_and_the_packages_take_one_file_list() {
    for kernel in Kernel::ALL {
        let tree = prepared(&Project::locate(), kernel, true);
        let read = |rel: &str| std::fs::read_to_string(tree.path.join(rel)).unwrap();
        let (makefile, install) = (read("kernel/Makefile"), read("scripts/package/install-extmod-build"));
        let v = kernel.version();
        for list in ["srctree", "objtree"] {
            assert!(install.contains(&format!("${{files}} {list} |")), "{v}: install-extmod-build does not install extmod-build-files' {list} list");
        }
        let modbuild = makefile.split("ifdef CONFIG_IKHEADERS_MODBUILD").skip(1).map(|s| s.split("endif").next().unwrap()).collect::<Vec<_>>();
        assert_eq!(modbuild.len(), 2, "{v}: kernel/Makefile should set the two lists under CONFIG_IKHEADERS_MODBUILD");
        for (section, list) in modbuild.iter().zip(["objtree", "srctree"]) {
            assert!(
                section.contains("scripts/package/extmod-build-files") && section.contains(&format!("{list} --in-kernel")),
                "{v}: the archive's {list} list is not extmod-build-files --in-kernel:\n{section}"
            );
            for own in ["find ", "echo scripts/", "echo include/"] {
                assert!(!section.contains(own), "{v}: kernel/Makefile lists files of its own ({own:?}):\n{section}");
            }
        }
    }
}
