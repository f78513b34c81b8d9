//! Finding and reading the manifest files under a path, within limits.
//!
//! Symlinks are followed, as a mounted ConfigMap needs (its files link through `..data`),
//! but each directory is read once: a link back to an ancestor (a loop) or to a directory
//! already read is refused with both paths named, rather than recursing until the kernel's
//! path limits stop it, or forever when links branch. Sizes are capped per file and per
//! load, checked before reading and enforced while reading, so that a file that grows
//! meanwhile cannot exceed them either.

use super::parse::{Problem, file_problem, is_manifest};
use std::collections::HashMap;
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The largest manifest file read. Kubernetes objects are at most 1.5 MiB (etcd's request
/// limit), so this leaves room for many in one file while refusing a stray dump.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// The most read in one load, over every file.
pub const MAX_TOTAL_BYTES: u64 = 64 << 20;

/// The manifest files under a path, in sorted order, and what was wrong on the way.
#[derive(Debug, Default)]
pub(super) struct Walk {
    pub(super) files: Vec<PathBuf>,
    pub(super) problems: Vec<Problem>,
    /// Directories read, by device and inode, with the path they were first reached by.
    dirs: HashMap<(u64, u64), PathBuf>,
    /// The sizes of `files`, as listed.
    total: u64,
}

impl Walk {
    /// Lists `path`: one file (read whatever its extension), or every `.yaml`, `.yml` and
    /// `.json` file below a directory. Names starting with `.` are skipped, which also skips
    /// the `..data` links of a mounted ConfigMap while the links beside them are followed.
    pub(super) fn new(path: &Path) -> Self {
        let mut walk = Walk::default();
        walk.visit(path, true);
        if walk.total > MAX_TOTAL_BYTES {
            let message = format!(
                "the manifests total {} bytes, over the {} MiB limit for one load",
                walk.total,
                MAX_TOTAL_BYTES >> 20
            );
            walk.problems.push(file_problem(path, message));
            // Nothing is read: the load fails whatever the files hold.
            walk.files.clear();
        }
        walk
    }

    fn visit(&mut self, path: &Path, top: bool) {
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) => return self.refuse(path, unfollowable(path, &e)),
        };
        if meta.is_dir() {
            return self.visit_dir(path, &meta);
        }
        // A file named explicitly is read whatever its extension; others by extension.
        if !(top || is_manifest(path)) {
            return;
        }
        if !meta.is_file() {
            // A FIFO or a device would block the read or never end.
            return self.refuse(path, "not a regular file or a directory".into());
        }
        if meta.len() > MAX_FILE_BYTES {
            return self.refuse(path, too_big(meta.len()));
        }
        self.total += meta.len();
        self.files.push(path.to_path_buf());
    }

    fn visit_dir(&mut self, path: &Path, meta: &Metadata) {
        let id = (meta.dev(), meta.ino());
        if let Some(first) = self.dirs.get(&id) {
            let message = if path.starts_with(first) {
                format!(
                    "symlink loop: leads back to {}, which contains it",
                    first.display()
                )
            } else {
                format!(
                    "this directory was already read as {}, through another link; its objects would be defined twice",
                    first.display()
                )
            };
            return self.refuse(path, message);
        }
        self.dirs.insert(id, path.to_path_buf());
        let entries = match std::fs::read_dir(path) {
            Ok(e) => e,
            Err(e) => return self.refuse(path, format!("cannot list: {e}")),
        };
        let mut children: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !n.starts_with('.'))
            })
            .collect();
        children.sort();
        for child in children {
            self.visit(&child, false);
        }
    }

    fn refuse(&mut self, path: &Path, message: String) {
        self.problems.push(file_problem(path, message));
    }
}

/// Reads one listed file, at most [`MAX_FILE_BYTES`] and at most what is left of `budget`
/// (which it lowers). The limits hold even if the file grew since it was listed.
pub(super) fn read(file: &Path, budget: &mut u64) -> Result<String, String> {
    let limit = MAX_FILE_BYTES.min(*budget);
    let mut bytes = Vec::new();
    File::open(file)
        .and_then(|f| f.take(limit + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read: {e}"))?;
    let read = bytes.len() as u64;
    if read > limit {
        return Err(if limit == MAX_FILE_BYTES {
            format!(
                "grew while being read, over the {} MiB limit for one file",
                MAX_FILE_BYTES >> 20
            )
        } else {
            format!(
                "grew while being read: the manifests total over the {} MiB limit for one load",
                MAX_TOTAL_BYTES >> 20
            )
        });
    }
    *budget -= read;
    String::from_utf8(bytes).map_err(|e| format!("cannot read: not UTF-8: {e}"))
}

fn too_big(len: u64) -> String {
    format!(
        "the file is {len} bytes, over the {} MiB limit for one file",
        MAX_FILE_BYTES >> 20
    )
}

/// Why `path` cannot be followed. A symlink that ends where it started (itself, or links
/// that point at each other) is named as a loop, with the chain.
fn unfollowable(path: &Path, e: &std::io::Error) -> String {
    let mut chain = vec![path.to_path_buf()];
    let mut at = path.to_path_buf();
    // The kernel gives up after 40 links; a longer chain is not worth describing.
    for _ in 0..40 {
        let Ok(target) = std::fs::read_link(&at) else {
            break;
        };
        at = at.parent().map_or(target.clone(), |dir| dir.join(&target));
        if chain.contains(&at) {
            chain.push(at);
            let shown: Vec<String> = chain.iter().map(|p| p.display().to_string()).collect();
            return format!("symlink loop: {}", shown.join(" -> "));
        }
        chain.push(at.clone());
    }
    if chain.len() > 1 && e.kind() == std::io::ErrorKind::NotFound {
        return format!("symlink to a missing file: {e}");
    }
    format!("cannot read: {e}")
}

#[cfg(test)]
mod tests {
    use super::super::parse::load;
    use super::*;
    use std::os::unix::fs::symlink;

    fn ns(name: &str) -> String {
        format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {name}}}\n")
    }

    fn names(path: &Path) -> Vec<String> {
        let loaded = load(path).unwrap_or_else(|e| panic!("{e}"));
        loaded
            .snapshot
            .namespaces
            .iter()
            .map(|n| n.metadata.name.clone().unwrap())
            .collect()
    }

    /// The one problem of a failed load, as the user sees it.
    fn refusal(path: &Path) -> String {
        let err = load(path).expect_err("the load is refused");
        assert_eq!(err.problems.len(), 1, "{err}");
        err.problems[0].to_string()
    }

    #[test]
    fn a_file_over_the_cap_is_refused_without_being_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), ns("a")).unwrap();
        let big = dir.path().join("big.yaml");
        // Sparse: the size is checked before any byte is read.
        File::create(&big)
            .unwrap()
            .set_len(MAX_FILE_BYTES + 1)
            .unwrap();
        let text = refusal(dir.path());
        assert_eq!(
            text,
            format!(
                "{}: the file is 16777217 bytes, over the 16 MiB limit for one file",
                big.display()
            )
        );
        // A file named explicitly is held to the same cap.
        assert!(refusal(&big).contains("over the 16 MiB limit"));
        // At the cap exactly is fine (as far as the size goes).
        File::create(&big).unwrap().set_len(MAX_FILE_BYTES).unwrap();
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(!err.contains("limit"), "{err}");
    }

    #[test]
    fn a_directory_over_the_total_cap_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..5 {
            let f = File::create(dir.path().join(format!("{i}.yaml"))).unwrap();
            f.set_len(15 << 20).unwrap();
        }
        assert_eq!(
            refusal(dir.path()),
            format!(
                "{}: the manifests total 78643200 bytes, over the 64 MiB limit for one load",
                dir.path().display()
            )
        );
    }

    #[test]
    fn reads_are_bounded_even_when_a_file_grows_after_listing() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, ns("a")).unwrap();
        let walk = Walk::new(dir.path());
        assert_eq!(walk.files, std::slice::from_ref(&file));
        File::options()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(MAX_FILE_BYTES + 10)
            .unwrap();
        let mut budget = MAX_TOTAL_BYTES;
        let err = read(&file, &mut budget).unwrap_err();
        assert_eq!(
            err,
            "grew while being read, over the 16 MiB limit for one file"
        );
        // The load's budget bounds a read too.
        std::fs::write(&file, ns("a")).unwrap();
        let mut budget = 10;
        let err = read(&file, &mut budget).unwrap_err();
        assert!(err.contains("over the 64 MiB limit for one load"), "{err}");
        let mut budget = 100;
        assert_eq!(read(&file, &mut budget).unwrap(), ns("a"));
        assert_eq!(budget, 100 - ns("a").len() as u64);
    }

    #[test]
    fn a_link_back_to_an_ancestor_is_a_loop() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("a.yaml"), ns("a")).unwrap();
        // Two links, so that following them would branch: 2^40 paths before the kernel's
        // path limits stopped it.
        symlink("..", sub.join("up")).unwrap();
        symlink("..", sub.join("up2")).unwrap();
        let err = load(dir.path()).unwrap_err();
        let text: Vec<String> = err.problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            text,
            [
                format!(
                    "{}: symlink loop: leads back to {}, which contains it",
                    sub.join("up").display(),
                    dir.path().display()
                ),
                format!(
                    "{}: symlink loop: leads back to {}, which contains it",
                    sub.join("up2").display(),
                    dir.path().display()
                ),
            ]
        );
    }

    #[test]
    fn links_to_themselves_or_each_other_are_loops() {
        let dir = tempfile::tempdir().unwrap();
        let own = dir.path().join("self.yaml");
        symlink("self.yaml", &own).unwrap();
        assert_eq!(
            refusal(dir.path()),
            format!("{0}: symlink loop: {0} -> {0}", own.display())
        );
        std::fs::remove_file(&own).unwrap();
        let (a, b) = (dir.path().join("a"), dir.path().join("b"));
        symlink("b", &a).unwrap();
        symlink(&a, &b).unwrap();
        let err = load(dir.path()).unwrap_err();
        assert_eq!(
            err.problems[0].to_string(),
            format!(
                "{0}: symlink loop: {0} -> {1} -> {0}",
                a.display(),
                b.display()
            )
        );
    }

    #[test]
    fn a_directory_reached_twice_is_read_once() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("shared.yaml"), ns("shared")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        symlink(outside.path(), dir.path().join("a")).unwrap();
        symlink(outside.path(), dir.path().join("b")).unwrap();
        assert_eq!(
            refusal(dir.path()),
            format!(
                "{}: this directory was already read as {}, through another link; its objects would be defined twice",
                dir.path().join("b").display(),
                dir.path().join("a").display()
            )
        );
    }

    #[test]
    fn links_out_of_the_directory_are_followed() {
        let outside = tempfile::tempdir().unwrap();
        std::fs::create_dir(outside.path().join("more")).unwrap();
        std::fs::write(outside.path().join("more/b.yaml"), ns("b")).unwrap();
        std::fs::write(outside.path().join("c.yaml"), ns("c")).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), ns("a")).unwrap();
        symlink(outside.path().join("more"), dir.path().join("more")).unwrap();
        symlink(outside.path().join("c.yaml"), dir.path().join("c.yaml")).unwrap();
        assert_eq!(names(dir.path()), ["a", "c", "b"]);
        // A link to nothing says so.
        symlink("gone.yaml", dir.path().join("d.yaml")).unwrap();
        assert!(refusal(dir.path()).contains("symlink to a missing file"));
    }

    /// The layout the kubelet gives a mounted ConfigMap: the visible names link through
    /// `..data` to a timestamped directory, which an update replaces atomically.
    #[test]
    fn a_mounted_config_map_loads_once() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("..2026_01_01_00_00_00.000000001");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("gateway.yaml"), ns("a")).unwrap();
        std::fs::write(data.join("routes.yaml"), ns("b")).unwrap();
        symlink(data.file_name().unwrap(), dir.path().join("..data")).unwrap();
        for f in ["gateway.yaml", "routes.yaml"] {
            symlink(format!("..data/{f}"), dir.path().join(f)).unwrap();
        }
        assert_eq!(names(dir.path()), ["a", "b"]);
    }
}
