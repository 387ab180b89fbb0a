//! The kernel series itself: it applies to Debian's 6.12 and is
//! `checkpatch.pl --strict` clean.

use std::process::Command;

use khtest::cache::Cache;
use khtest::tree::{self, Source};
use khtest::Project;

/// The default kernel tree from the shared cache, patched or not.
fn prepared(project: &Project, patched: bool) -> tree::Tree {
    let cache = Cache::open(&khtest::default_cache_dir()).unwrap();
    tree::prepare(&cache, &Source::from_arg(None).unwrap(), project, patched, &|_| {}).unwrap()
}

#[test]
fn series_is_checkpatch_strict_clean() {
    let project = Project::locate();
    // checkpatch from the unpatched tree, run inside it (it looks for the
    // tree it belongs to).
    let tree = prepared(&project, false);
    let patches = tree::series(&project).unwrap();
    let out = Command::new("perl")
        .arg("scripts/checkpatch.pl")
        .args(["--strict", "--color=never"])
        .args(&patches)
        .current_dir(&tree.path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let clean = text.matches("total: 0 errors, 0 warnings, 0 checks").count();
    assert!(out.status.success() && clean == patches.len(), "checkpatch --strict is not clean:\n{text}");
}

#[test]
fn series_applies_to_the_default_tree() {
    let tree = prepared(&Project::locate(), true);
    assert!(tree.path.join("kernel/kheaders.c").is_file());
    let kheaders = std::fs::read_to_string(tree.path.join("kernel/kheaders.c")).unwrap();
    assert!(kheaders.contains("proc_create("), "the series' procfs file is not in the patched tree");
}
