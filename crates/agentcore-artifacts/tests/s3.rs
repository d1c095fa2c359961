//! The artifact store against a real S3-compatible server on loopback (moto, from PyPI via
//! `scripts/setup_s3.sh`). Skips, saying so, when the server is not installed, unless
//! `AGENTCORE_REQUIRE_S3` is set (CI).

use std::fs;
use std::path::Path;

use agentcore_artifacts::Artifacts;
use agentcore_artifacts::testing::S3Server;

fn server(bucket: &str) -> Option<S3Server> {
    S3Server::start(bucket).unwrap_or_else(|e| panic!("{e}"))
}

fn write(dir: &Path, name: &str, bytes: &[u8]) {
    fs::create_dir_all(dir).expect("mkdir");
    fs::write(dir.join(name), bytes).expect("write");
}

/// A checkpoint-like directory: two files and a "manifest" listing their contents.
fn make_dir(data: &Path, rel: &str, content: &str) {
    let dir = data.join(rel);
    write(&dir, "a.bin", content.as_bytes());
    write(&dir, "b.json", format!("{{\"c\":\"{content}\"}}").as_bytes());
    write(&dir, "MANIFEST.json", format!("{content}|{content}").as_bytes());
}

/// The check a reader runs before the directory is put in place: files agree with the manifest.
fn check(dir: &Path) -> Result<(), String> {
    let m = fs::read_to_string(dir.join("MANIFEST.json")).map_err(|e| e.to_string())?;
    let a = fs::read_to_string(dir.join("a.bin")).map_err(|e| e.to_string())?;
    if m.split('|').next() == Some(a.as_str()) {
        Ok(())
    } else {
        Err(format!("a.bin is {a:?}, the manifest says {m:?}"))
    }
}

#[test]
fn directories_round_trip_complete_or_absent_and_files_and_removal_work() {
    let Some(s3) = server("artifacts") else { return };
    let store = s3.artifacts("team/prod").expect("open");
    assert!(store.is_remote());
    assert_eq!(store.describe(), "s3://artifacts/team/prod");
    let (writer, reader) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));

    // Nothing there yet.
    assert_eq!(store.list_dirs("runs/j1/checkpoints").expect("list"), Vec::<String>::new());
    assert!(!store.get_file(reader.path(), "runs/j1/job.json").expect("get"));

    // A single file.
    write(&writer.path().join("runs/j1"), "job.json", b"{\"seed\":7}");
    store.put_file(writer.path(), "runs/j1/job.json").expect("put file");
    assert!(store.get_file(reader.path(), "runs/j1/job.json").expect("get"));
    assert_eq!(fs::read(reader.path().join("runs/j1/job.json")).expect("read"), b"{\"seed\":7}");

    // Two directories; each arrives whole, verified.
    for (n, content) in [(1, "one"), (2, "two")] {
        let rel = format!("runs/j1/checkpoints/ckpt-{n:05}");
        make_dir(writer.path(), &rel, content);
        store.put_dir(writer.path(), &rel, "MANIFEST.json").expect("put dir");
    }
    assert_eq!(
        store.list_dirs("runs/j1/checkpoints").expect("list"),
        vec!["ckpt-00001".to_owned(), "ckpt-00002".to_owned()]
    );
    let rel2 = "runs/j1/checkpoints/ckpt-00002";
    assert!(store.get_dir(reader.path(), rel2, "MANIFEST.json", check).expect("get dir"));
    for name in ["a.bin", "b.json", "MANIFEST.json"] {
        assert_eq!(
            fs::read(reader.path().join(rel2).join(name)).expect("read"),
            fs::read(writer.path().join(rel2).join(name)).expect("read"),
            "{name}"
        );
    }

    // A directory whose manifest never arrived (a writer killed mid-upload) is not there.
    let partial = "runs/j1/checkpoints/ckpt-00003";
    make_dir(writer.path(), partial, "three");
    fs::remove_file(writer.path().join(partial).join("MANIFEST.json")).expect("rm");
    let e = store.put_dir(writer.path(), partial, "MANIFEST.json").unwrap_err();
    assert!(e.to_string().contains("MANIFEST.json"), "{e}");
    store.put_file(writer.path(), &format!("{partial}/a.bin")).expect("put one file");
    assert!(!store.get_dir(reader.path(), partial, "MANIFEST.json", check).expect("get"));
    assert!(!reader.path().join(partial).exists());

    // A directory that does not verify (its file replaced behind the manifest's back) is
    // refused and leaves the local copy untouched.
    write(&writer.path().join(rel2), "a.bin", b"tampered");
    store.put_file(writer.path(), &format!("{rel2}/a.bin")).expect("overwrite");
    let e = store.get_dir(reader.path(), rel2, "MANIFEST.json", check).unwrap_err();
    assert!(e.to_string().contains("verifying") && e.to_string().contains("tampered"), "{e}");
    assert_eq!(fs::read(reader.path().join(rel2).join("a.bin")).expect("read"), b"two");

    // Removal: gone from listings and reads.
    store.remove_dir("runs/j1/checkpoints/ckpt-00001", "MANIFEST.json").expect("remove");
    let left = store.list_dirs("runs/j1/checkpoints").expect("list");
    assert!(!left.contains(&"ckpt-00001".to_owned()), "{left:?}");
    let rel1 = "runs/j1/checkpoints/ckpt-00001";
    assert!(!store.get_dir(reader.path(), rel1, "MANIFEST.json", check).expect("get"));

    // Another prefix of the same bucket sees none of it.
    let other = s3.artifacts("team/staging").expect("open");
    assert!(other.list_dirs("runs/j1/checkpoints").expect("list").is_empty());
}

#[test]
fn large_files_go_up_in_parts_and_come_back_identical() {
    let Some(s3) = server("big") else { return };
    let store = s3.artifacts("p").expect("open");
    let (writer, reader) = (tempfile::tempdir().expect("tmp"), tempfile::tempdir().expect("tmp"));
    let size =
        usize::try_from(agentcore_artifacts::MULTIPART_THRESHOLD_BYTES).expect("size") * 2 + 12_345;
    let bytes: Vec<u8> =
        (0..size).map(|i| u8::try_from((i * 31 + i / 977) % 251).expect("u8")).collect();
    write(writer.path(), "weights.bin", &bytes);
    store.put_file(writer.path(), "weights.bin").expect("multipart upload");
    assert!(store.get_file(reader.path(), "weights.bin").expect("download"));
    let back = fs::read(reader.path().join("weights.bin")).expect("read");
    assert_eq!(back.len(), bytes.len());
    assert!(back == bytes, "content differs");
}

#[test]
fn bad_urls_and_keys_are_refused_naming_the_rule() {
    let e = Artifacts::open("ftp://host/x").unwrap_err().to_string();
    assert!(e.contains("ftp"), "{e}");
    let e = Artifacts::open("not a url").unwrap_err().to_string();
    assert!(e.contains("s3://bucket/prefix"), "{e}");
    let e = Artifacts::open_with("s3://b/p", &[("aws_no_such_setting", "1")]).unwrap_err();
    assert!(e.to_string().contains("aws_no_such_setting"), "{e}");
    // Credentials in the URL never reach a message.
    let store = Artifacts::open_with(
        "s3://user:secret@b/p?token=hidden",
        &[("aws_endpoint", "http://127.0.0.1:9"), ("aws_allow_http", "true")],
    )
    .expect("open");
    let shown = store.describe();
    assert!(!shown.contains("secret") && !shown.contains("hidden"), "{shown}");
    let e = store.put_file(Path::new("/"), "../etc/passwd").unwrap_err().to_string();
    assert!(e.contains("plain components"), "{e}");
    // The local backend does nothing and reports nothing there.
    let local = Artifacts::local();
    assert!(!local.is_remote());
    assert!(!local.get_file(Path::new("/nonexistent"), "x").expect("local"));
    assert!(local.list_dirs("runs").expect("local").is_empty());
}
