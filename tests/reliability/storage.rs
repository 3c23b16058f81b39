//! Storage faults: the state database on a full filesystem, and a corrupted or truncated
//! database file.
//!
//! Full filesystem: a real one, a small tmpfs mounted for the test (needs root or
//! CAP_SYS_ADMIN; without them the test says so and is skipped). Writes are made until
//! the filesystem refuses one; then every refused write must be an error naming the
//! file and what to do, nothing partial may be stored, reads keep working, a retry after
//! space is freed (the tmpfs grown) succeeds, and everything that was accepted is there
//! after the store is reopened. The intent journal beside the database is held to the
//! same rules.
//!
//! Corruption: a store with records is closed, then its file is damaged four ways
//! (header overwritten, pages in the middle overwritten, truncated to half, truncated to
//! nothing); opening it (and starting the daemon on it) must refuse with an error naming the
//! file and saying what to do, never panic, never start on an empty store in its place,
//! and never modify the damaged file.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::json;
use setpoint::store::{AuditEntry, AuditFilter, AuditKind, Store};
use setpoint_tests::figures::{self, Figures};

/// A tmpfs mounted for one test, unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `kib` KiB, or says why it cannot.
    fn mount(kib: u64) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Grows the filesystem: what an operator freeing space does.
    fn grow(&self, kib: u64) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,size={kib}k")])
            .arg(self.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "remount: {out:?}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn entry(n: usize) -> AuditEntry {
    AuditEntry {
        instance_id: Some(format!("instance-{}", n % 7)),
        kind: AuditKind::Observation,
        message: format!("entry {n}"),
        // About 2 KiB a row, so a small filesystem fills after a few hundred.
        details: json!({ "n": n, "padding": "x".repeat(2048) }),
    }
}

/// Every audit message in the store, in order.
fn messages(store: &Store) -> Vec<String> {
    let mut out = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .audit(&AuditFilter {
                after_id: after,
                ..AuditFilter::default()
            })
            .expect("the audit log reads");
        let Some(last) = page.last() else {
            return out;
        };
        after = Some(last.id);
        out.extend(page.into_iter().map(|r| r.entry.message));
    }
}

/// The error says which file, that the disk is full, and what to do about it.
fn assert_full_error(text: &str, db: &Path) {
    assert!(
        text.contains(&db.display().to_string()),
        "the error names the file: {text}"
    );
    let lower = text.to_lowercase();
    assert!(
        lower.contains("filesystem is full") && lower.contains("free space"),
        "the error says the filesystem is full and to free space: {text}"
    );
}

#[test]
fn a_full_filesystem_refuses_writes_clearly_and_loses_nothing_accepted() {
    let started = Instant::now();
    let fs = match Tmpfs::mount(768) {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!(
                "SKIPPED: a full filesystem needs a small tmpfs, and mounting one is not allowed here ({why}); run as root or with CAP_SYS_ADMIN"
            );
            return;
        }
    };
    let db = fs.path().join("state.db");
    let store = Store::open(&db).expect("the store opens on the tmpfs");

    // Fill it: every write that returned Ok is accepted and must survive.
    let mut accepted = Vec::new();
    let mut refused = 0;
    let mut first_error = None;
    let mut n = 0;
    while refused < 5 {
        match store.append_audit(&entry(n)) {
            Ok(_) => accepted.push(format!("entry {n}")),
            Err(error) => {
                let text = setpoint::error_chain(&error);
                assert_full_error(&text, &db);
                first_error.get_or_insert(text);
                refused += 1;
            }
        }
        n += 1;
        assert!(n < 100_000, "a 768 KiB filesystem never filled");
    }
    let first_error = first_error.unwrap();
    assert!(accepted.len() > 10, "only {} writes fit", accepted.len());

    // Reads go on while the disk is full, and show exactly what was accepted.
    assert_eq!(messages(&store), accepted, "reads while full");

    // The intent journal beside the database, on the same full filesystem: refused with
    // the file named, and nothing torn left behind for the next record.
    let mut journal_refusals = 0;
    let mut journalled = Vec::new();
    for i in 0..200 {
        match store.record_intent("rollout-a", "restart@1", "start", &format!("t-{i}"), None) {
            Ok(id) => journalled.push(id),
            Err(error) => {
                let text = setpoint::error_chain(&error);
                assert_full_error(&text, &db);
                journal_refusals += 1;
            }
        }
    }
    assert!(journal_refusals > 0, "the journal never filled");

    // An operator frees space; the same writes, retried, succeed.
    fs.grow(8 * 1024);
    let retried = n;
    store
        .append_audit(&entry(retried))
        .expect("a retry after space was freed succeeds");
    accepted.push(format!("entry {retried}"));
    let after_id = store
        .record_intent("rollout-a", "restart@1", "start", "after-free", None)
        .expect("the journal takes records again");
    journalled.push(after_id);
    drop(store);

    // Reopened: everything accepted is there, nothing refused is.
    let store = Store::open(&db).expect("the store reopens");
    assert_eq!(messages(&store), accepted, "after reopening");
    let pending: Vec<i64> = store.intents().unwrap().iter().map(|i| i.id).collect();
    for id in &journalled {
        assert!(
            pending.contains(id),
            "accepted intent {id} lost after reopening (pending: {pending:?})"
        );
    }
    drop(store);

    let mut f = Figures::new("storage_full_filesystem");
    f.load = format!(
        "{} audit writes of ~2 KiB, 200 intent journal appends",
        accepted.len()
    );
    f.faults =
        "a real full filesystem: a 768 KiB tmpfs (mount -t tmpfs), grown to 8 MiB to free space"
            .to_owned();
    f.bad_inputs =
        format!("{refused} refused database writes, {journal_refusals} refused journal appends");
    f.trials = "1 fill, 1 retry after freeing space, 1 reopen".to_owned();
    f.notes = format!(
        "error: \"{}\"; {:.1} s",
        first_error,
        started.elapsed().as_secs_f64()
    );
    figures::record(&f);
}

/// A store with some of everything, closed; its path.
fn populated(dir: &Path) -> PathBuf {
    let db = dir.join("state.db");
    let store = Store::open(&db).unwrap();
    for n in 0..300 {
        store.append_audit(&entry(n)).unwrap();
    }
    store
        .record_applied(
            "instance-1",
            &json!({"port": 8080}),
            "sha256:a",
            "restart@1",
        )
        .unwrap();
    store
        .request_approval("instance-1", "sha256:b", "policy asks")
        .unwrap();
    store
        .record_intent("rollout-a", "restart@1", "start", "instance-1", None)
        .unwrap();
    drop(store);
    db
}

fn page_size(db: &Path) -> usize {
    let header = std::fs::read(db).unwrap();
    match u16::from_be_bytes([header[16], header[17]]) {
        1 => 65536,
        n => usize::from(n),
    }
}

/// Damages `db` one way; a description of the damage.
fn damage(db: &Path, how: &str) -> String {
    let mut bytes = std::fs::read(db).unwrap();
    let len = bytes.len();
    let page = page_size(db);
    match how {
        "header" => {
            bytes[..100].fill(0x5a);
            std::fs::write(db, &bytes).unwrap();
            "first 100 bytes (the header) overwritten".to_owned()
        }
        "pages" => {
            // Pages 2 to 4 (the schema table is page 1) overwritten with a pattern.
            let end = (4 * page).min(len);
            for (i, b) in bytes[page..end].iter_mut().enumerate() {
                *b = (i as u8).wrapping_mul(31).wrapping_add(7);
            }
            std::fs::write(db, &bytes).unwrap();
            format!("pages 2-4 of {} overwritten", len / page)
        }
        "half" => {
            let half = (len / page / 2) * page;
            std::fs::OpenOptions::new()
                .write(true)
                .open(db)
                .unwrap()
                .set_len(half as u64)
                .unwrap();
            format!("truncated from {len} to {half} bytes")
        }
        "empty" => {
            std::fs::OpenOptions::new()
                .write(true)
                .open(db)
                .unwrap()
                .set_len(0)
                .unwrap();
            format!("truncated from {len} bytes to nothing")
        }
        _ => unreachable!(),
    }
}

#[test]
fn a_corrupted_database_is_refused_with_the_file_named_and_left_as_it_was() {
    let started = Instant::now();
    let mut notes = Vec::new();
    for how in ["header", "pages", "half", "empty"] {
        let dir = tempfile::tempdir().unwrap();
        let db = populated(dir.path());
        let what = damage(&db, how);
        let damaged = std::fs::read(&db).unwrap();

        // The library refuses it.
        let error = match Store::open(&db) {
            Ok(store) => {
                let kept = messages(&store).len();
                panic!("{what}: the store opened (with {kept} of 300 audit entries)")
            }
            Err(error) => setpoint::error_chain(&error),
        };
        assert!(
            error.contains(&db.display().to_string()),
            "{what}: the error names the file: {error}"
        );
        assert!(
            error.contains("corrupt") || error.contains("truncated"),
            "{what}: the error says the file is damaged: {error}"
        );
        assert!(
            error.contains("backup"),
            "{what}: the error says what to do: {error}"
        );

        // So does the daemon, at once: `Daemon::start` is what `setpoint run` calls,
        // and its error chain is what the binary prints.
        let plugins = dir.path().join("plugins");
        std::fs::create_dir_all(&plugins).unwrap();
        let settings = setpoint::config::Settings::load_text(
            None,
            Vec::new(),
            &setpoint::config::Overrides::new()
                .set("store.path", db.display().to_string())
                .set("plugins.dir", plugins.display().to_string())
                .set("control_plane.url", "http://127.0.0.1:9")
                .set("admin.listen", "127.0.0.1:0"),
        )
        .unwrap();
        let t = Instant::now();
        let started = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(setpoint::daemon::Daemon::start(settings));
        let daemon_error = match started {
            Ok(_) => panic!("{what}: the daemon started"),
            Err(error) => setpoint::error_chain(&error),
        };
        assert!(
            daemon_error.contains(&db.display().to_string()) && daemon_error.contains("backup"),
            "{what}: the daemon says which file and what to do: {daemon_error}"
        );
        assert!(t.elapsed() < Duration::from_secs(20));

        // And neither touched the damaged file.
        assert_eq!(
            std::fs::read(&db).unwrap(),
            damaged,
            "{what}: the damaged file was modified"
        );
        notes.push(format!("{how}: {}", error.lines().next().unwrap_or("")));
    }

    let mut f = Figures::new("storage_corruption");
    f.load =
        "a store of 300 audit entries, an applied configuration, an approval, an intent".to_owned();
    f.faults = "header overwritten; pages 2-4 overwritten; truncated to half; truncated to 0 bytes"
        .to_owned();
    f.bad_inputs = "4 damaged database files".to_owned();
    f.trials =
        "4 library opens, 4 daemon starts (`Daemon::start`, what `setpoint run` calls)".to_owned();
    f.notes = format!(
        "every one refused, file named, file untouched; {:.1} s",
        started.elapsed().as_secs_f64()
    );
    figures::record(&f);
}
