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
