//! Durable files: the one atomic-write helper of agentcore.
//!
//! A crash (kill -9, power loss) while writing leaves either the old content or the new, never
//! half of either. Files: write a temporary file in the same directory, fsync it, rename it over
//! the target, fsync the directory. Directories (checkpoints): build the whole directory under a
//! temporary name, fsync every file and the directory, rename it into place, fsync the parent.
//! Every error names the path it is about.
//!
//! The temporary files come from `tempfile` (random names, cleaned up on error).
#![deny(missing_docs)]

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// An I/O failure with the path it happened on.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {source}", path.display())]
pub struct FsError {
    /// What was being done ("writing", "renaming", ...).
    pub action: &'static str,
    /// The path concerned.
    pub path: PathBuf,
    /// The underlying error.
    #[source]
    pub source: io::Error,
}

fn err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> FsError + 'a {
    move |source| FsError { action, path: path.to_path_buf(), source }
}

/// Writes `bytes` to `path` atomically: afterwards `path` holds exactly `bytes`, and a crash
/// at any moment leaves the previous content (or no file) instead of a partial one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    let dir = parent_dir(path);
    fs::create_dir_all(dir).map_err(err("creating directory", dir))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        // Readable like any file the user creates (tempfile's default is 0600); the umask
        // still applies.
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o644))
        .tempfile_in(dir)
        .map_err(err("creating a temporary file in", dir))?;
    tmp.write_all(bytes).map_err(err("writing", tmp.path()))?;
    tmp.as_file().sync_all().map_err(err("syncing", path))?;
    tmp.persist(path).map_err(|e| FsError {
        action: "renaming into",
        path: path.into(),
        source: e.error,
    })?;
    sync_dir(dir)
}

/// Builds a directory atomically: `fill` writes the content into a fresh temporary directory
/// next to `target`, then the directory is synced and renamed to `target`. If `target` exists
/// it is replaced. On error (or panic) in `fill` the temporary directory is removed and
/// `target` is untouched.
pub fn write_dir_atomic<E>(
    target: &Path,
    fill: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), E>
where
    E: From<FsError>,
{
    let parent = parent_dir(target);
    fs::create_dir_all(parent).map_err(err("creating directory", parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempdir_in(parent)
        .map_err(err("creating a temporary directory in", parent))?;
    fill(tmp.path())?;
    for entry in fs::read_dir(tmp.path()).map_err(err("listing", tmp.path()))? {
        let entry = entry.map_err(err("listing", tmp.path()))?;
        if entry.file_type().map_err(err("inspecting", &entry.path()))?.is_file() {
            File::open(entry.path())
                .and_then(|f| f.sync_all())
                .map_err(err("syncing", &entry.path()))?;
        }
    }
    sync_dir(tmp.path())?;
    if target.exists() {
        // Replace: move the old one aside first, so that a crash leaves one complete copy.
        let old = tempfile::Builder::new()
            .prefix(".old-")
            .tempdir_in(parent)
            .map_err(err("creating a temporary directory in", parent))?;
        let old_path = old.path().join("previous");
        fs::rename(target, &old_path).map_err(err("moving aside", target))?;
        fs::rename(tmp.keep(), target).map_err(err("renaming into", target))?;
        drop(old);
    } else {
        fs::rename(tmp.keep(), target).map_err(err("renaming into", target))?;
    }
    sync_dir(parent)?;
    Ok(())
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// fsyncs a directory so that a rename inside it survives a crash.
pub fn sync_dir(dir: &Path) -> Result<(), FsError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(err("syncing directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_replaces_files() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("nested/state.json");
        write_atomic(&path, b"one").expect("write");
        write_atomic(&path, b"two").expect("replace");
        assert_eq!(fs::read(&path).expect("read"), b"two");
        // No temporary files left behind.
        let names: Vec<_> = fs::read_dir(path.parent().expect("parent"))
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("state.json")]);
    }

    #[test]
    fn a_failing_directory_write_leaves_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let target = dir.path().join("ckpt-1");
        let result: Result<(), FsError> = write_dir_atomic(&target, |tmp| {
            write_atomic(&tmp.join("weights.bin"), b"partial")?;
            Err(FsError {
                action: "simulating",
                path: tmp.into(),
                source: io::Error::other("boom"),
            })
        });
        assert!(result.is_err());
        assert!(!target.exists());
        assert_eq!(fs::read_dir(dir.path()).expect("list").count(), 0, "temporary dir removed");
    }

    #[test]
    fn directory_write_replaces_a_previous_one() {
        let dir = tempfile::tempdir().expect("temp dir");
        let target = dir.path().join("latest");
        for content in [&b"first"[..], b"second"] {
            write_dir_atomic::<FsError>(&target, |tmp| write_atomic(&tmp.join("f"), content))
                .expect("write");
        }
        assert_eq!(fs::read(target.join("f")).expect("read"), b"second");
        assert_eq!(fs::read_dir(dir.path()).expect("list").count(), 1);
    }

    #[test]
    fn errors_name_the_path() {
        let e = write_atomic(Path::new("/proc/definitely/not/writable"), b"x").unwrap_err();
        assert!(e.to_string().contains("/proc/definitely/not"), "{e}");
    }
}
