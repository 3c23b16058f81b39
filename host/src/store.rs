//! Durable state in an embedded SQLite database: applied configurations and their backups,
//! rollout state, status conditions, the audit log and approvals.
//!
//! Start reading at [`Store::open`] (pragmas and versioned migrations, [`MIGRATIONS`]), then
//! the sections below it, one per table.
//!
//! Concurrency: a rusqlite `Connection` is `Send` but not `Sync`, so the store keeps one
//! connection behind a `std::sync::Mutex`. Every operation is a handful of rows, so holding
//! the lock for its duration costs less than a connection pool or a dedicated thread would
//! add. The methods are synchronous; async callers that cannot afford a disk write on the
//! executor wrap them in `tokio::task::spawn_blocking` (the store is cheap to share in an
//! `Arc`). Other processes (the CLI while the daemon runs) may open the same file: WAL mode
//! lets readers proceed during a write, and [`BUSY_TIMEOUT`] makes a writer wait its turn.
//!
//! Durability: every write runs in one transaction, in WAL mode with `synchronous =
//! NORMAL`: a write that returned `Ok` survives a crash or kill of the daemon, and the
//! database is never corrupted; only a power loss or kernel crash can take back the
//! last transactions before a WAL checkpoint. `FULL` would fsync every commit, which
//! costs milliseconds per write on ordinary disks and made a rollout step (a handful
//! of writes) dominate event-to-action latency; what could be lost is at most a
//! rollout's last step (strategies are idempotent steps) or recent audit lines. WAL
//! checkpoints run on a thread of their own ([`CHECKPOINT_INTERVAL`]), never inside a
//! commit. Times are stored as Unix milliseconds, so they come back truncated to the
//! millisecond.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How long a write waits for another connection's write lock (the CLI approving while the
/// daemon records an audit entry) before failing. Writes are a few rows, so a wait of more
/// than a few seconds means something is wrong, not busy.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Prepared statements kept per connection: more than the store's distinct queries, so
/// none is parsed twice.
const STATEMENT_CACHE: usize = 64;

/// How many previous applied configurations are kept per instance unless configured
/// otherwise: enough to step back over a few bad changes, small enough to stay tiny.
pub const DEFAULT_BACKUP_RETENTION: usize = 5;

/// Most audit entries one [`Store::audit`] call returns, so a careless `limit` cannot load
/// the whole log into memory; page with [`AuditFilter::after_id`].
pub const MAX_AUDIT_PAGE: usize = 1000;

/// The schema, one migration per version: `MIGRATIONS[i]` takes the database from version
/// `i` to `i + 1`. Append only; never edit a migration that has shipped. The version lives in
/// SQLite's `user_version` header field, which changes in the same transaction as the
/// migration, so a failed migration leaves the old version and no half-made tables.
pub const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    r#"
    CREATE TABLE applied_configs (
        seq          INTEGER PRIMARY KEY AUTOINCREMENT,
        instance_id  TEXT    NOT NULL,
        config_json  TEXT    NOT NULL,
        digest       TEXT    NOT NULL,
        applied_at   INTEGER NOT NULL
    );
    CREATE INDEX applied_configs_by_instance ON applied_configs (instance_id, seq);

    CREATE TABLE rollouts (
        instance_id     TEXT    PRIMARY KEY,
        strategy        TEXT    NOT NULL,
        plugin_version  TEXT    NOT NULL,
        plugin_digest   TEXT    NOT NULL,
        state_json      TEXT    NOT NULL,
        step            INTEGER NOT NULL,
        phase           TEXT    NOT NULL,
        started_at      INTEGER NOT NULL,
        updated_at      INTEGER NOT NULL
    );

    CREATE TABLE conditions (
        instance_id      TEXT    NOT NULL,
        type             TEXT    NOT NULL,
        status           INTEGER NOT NULL,
        reason           TEXT    NOT NULL,
        message          TEXT    NOT NULL,
        last_transition  INTEGER NOT NULL,
        PRIMARY KEY (instance_id, type)
    );

    CREATE TABLE audit (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        at            INTEGER NOT NULL,
        instance_id   TEXT,
        kind          TEXT    NOT NULL,
        message       TEXT    NOT NULL,
        details_json  TEXT    NOT NULL
    );
    CREATE INDEX audit_by_instance ON audit (instance_id, id);

    CREATE TABLE approvals (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        instance_id   TEXT    NOT NULL,
        message       TEXT    NOT NULL,
        requested_at  INTEGER NOT NULL,
        approved_by   TEXT,
        approved_at   INTEGER,
        consumed_at   INTEGER
    );
    CREATE INDEX approvals_by_instance ON approvals (instance_id, id);
    "#,
    // 2: revisions everywhere. An approval names the desired digest it releases; an
    // applied configuration names the strategy that sent it; a given-up revision and an
    // operator's abort request are durable rows of their own, which no rollout step writes.
    r#"
    ALTER TABLE approvals ADD COLUMN digest TEXT NOT NULL DEFAULT '';
    ALTER TABLE applied_configs ADD COLUMN strategy TEXT NOT NULL DEFAULT '';

    CREATE TABLE given_up (
        instance_id  TEXT    PRIMARY KEY,
        digest       TEXT    NOT NULL,
        reason       TEXT    NOT NULL,
        at           INTEGER NOT NULL
    );

    CREATE TABLE abort_requests (
        instance_id   TEXT    PRIMARY KEY,
        digest        TEXT    NOT NULL,
        requested_by  TEXT    NOT NULL,
        at            INTEGER NOT NULL
    );

    CREATE TABLE host_stops (
        instance_id  TEXT    PRIMARY KEY,
        at           INTEGER NOT NULL
    );
    "#,
    // 3: progressive delivery. An operator's promotion is a durable row of its own, like
    // an abort request, so no step in flight can overwrite it; an abort request says
    // whether finishing it gives the revision up (an operator's abort, a missed progress
    // deadline) or not (a rollout superseded by a newer revision, undone by its strategy).
    r#"
    CREATE TABLE promote_requests (
        instance_id   TEXT    PRIMARY KEY,
        digest        TEXT    NOT NULL,
        full          INTEGER NOT NULL,
        requested_by  TEXT    NOT NULL,
        at            INTEGER NOT NULL
    );
    ALTER TABLE abort_requests ADD COLUMN give_up INTEGER NOT NULL DEFAULT 1;
    "#,
];

mod journal;

/// A mutating control-plane call recorded before it was sent ([`Store::record_intent`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Intent {
    /// Its row id.
    pub id: i64,
    /// The rollout it belongs to (an instance id or a group key).
    pub rollout_key: String,
    /// The strategy that made it, `name@version`.
    pub plugin: String,
    /// The import, for example `stop`.
    pub call: String,
    /// The instance (or endpoint) it named.
    pub target: String,
    /// The digest of the configuration it carried, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_digest: Option<String>,
    /// When it was recorded.
    pub at: SystemTime,
    /// How the call ended (`ok`, or `failed: …`), once it returned; `None` while it is
    /// in flight, and after a crash: in doubt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
}

/// Errors from the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database file (or its directory) could not be created or opened.
    #[error("cannot open state database {path}")]
    Open {
        /// The database path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database was written by a newer setpoint with a schema this one does not know.
    #[error(
        "state database {path} has schema version {found}, but this setpoint supports up to version {supported}; upgrade setpoint, or point store.path at another file"
    )]
    NewerSchema {
        /// The database path.
        path: PathBuf,
        /// Version found in the file.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
    /// A migration failed; the database stays at the version before it.
    #[error("migrating state database {path} to schema version {version} failed")]
    Migrate {
        /// The database path.
        path: PathBuf,
        /// The version the failed migration would have produced.
        version: i64,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// The filesystem holding the database (or its intent journal) is full. The write
    /// was rolled back: nothing of it is stored, and everything written before is kept.
    #[error(
        "state database {path}: {operation} failed because the filesystem is full; nothing of it was stored (what was stored before is kept). Free space on the filesystem holding {path}: setpoint retries the work, and reads go on meanwhile"
    )]
    Full {
        /// The database path.
        path: PathBuf,
        /// What the store was doing.
        operation: String,
        /// SQLite's or the journal's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The database file is damaged (overwritten, truncated): SQLite cannot read it, or
    /// its integrity check fails.
    #[error(
        "state database {path} is corrupted or truncated ({detail}); setpoint does not run on it. Stop every setpoint using it and restore the file from a backup (keep the damaged one: `sqlite3 {path} .recover` may save its records); or, to start afresh with an empty store (rollouts in flight, approvals and the audit log are then lost), move it and its -wal, -shm and -intents files aside"
    )]
    Corrupted {
        /// The database path.
        path: PathBuf,
        /// What SQLite found.
        detail: String,
    },
    /// A query or write failed.
    #[error("state database: {operation} failed")]
    Sqlite {
        /// What the store was doing, e.g. `record applied configuration`.
        operation: &'static str,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
    /// A stored value could not be decoded (edited by hand, or written by a buggy version).
    #[error("state database: {what} holds an unreadable value: {detail}")]
    Corrupt {
        /// Which column of which row.
        what: String,
        /// What was wrong with it.
        detail: String,
    },
    /// [`Store::approve`] found no pending approval for the instance.
    #[error("instance {instance_id} has no pending approval request")]
    NoPendingApproval {
        /// The instance.
        instance_id: String,
    },
    /// [`Store::approve`] was asked to approve a revision other than the one that waits.
    #[error(
        "instance {instance_id} waits for approval of revision {pending}, not {given}; run `setpoint status {instance_id}` to see what waits, then approve that"
    )]
    StaleApproval {
        /// The instance.
        instance_id: String,
        /// The digest the pending request is for.
        pending: String,
        /// The digest the operator approved.
        given: String,
    },
}

/// Result alias for store operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

trait Context<T> {
    fn during(self, operation: &'static str) -> Result<T>;
}

impl<T> Context<T> for rusqlite::Result<T> {
    fn during(self, operation: &'static str) -> Result<T> {
        self.map_err(|source| Error::Sqlite { operation, source })
    }
}

fn to_millis(at: SystemTime) -> i64 {
    match at.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_millis()).unwrap_or(i64::MAX),
        Err(before) => -i64::try_from(before.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

fn from_millis(millis: i64) -> SystemTime {
    if millis >= 0 {
        UNIX_EPOCH + Duration::from_millis(millis as u64)
    } else {
        UNIX_EPOCH - Duration::from_millis(millis.unsigned_abs())
    }
}

fn parse_json(what: impl FnOnce() -> String, text: &str) -> Result<Value> {
    serde_json::from_str(text).map_err(|error| Error::Corrupt {
        what: what(),
        detail: error.to_string(),
    })
}

/// Maps enums to and from their stored text.
macro_rules! text_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $text:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        $vis enum $name { $($(#[$vmeta])* #[serde(rename = $text)] $variant,)+ }

        impl $name {
            /// The stored and displayed name.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }

            fn parse(text: &str, what: impl FnOnce() -> String) -> Result<Self> {
                match text {
                    $($text => Ok($name::$variant),)+
                    other => Err(Error::Corrupt { what: what(), detail: format!("unknown value \"{other}\"") }),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

text_enum! {
    /// Where a persisted rollout stands.
    pub enum RolloutPhase {
        /// Steps are being executed.
        Running => "running",
        /// The strategy is paused until an operator approves.
        AwaitingApproval => "awaiting-approval",
        /// The rollout is being rolled back.
        Aborting => "aborting",
    }
}

text_enum! {
    /// Kinds of status condition, as in Kubernetes.
    pub enum ConditionType {
        /// Actual configuration equals desired.
        Synced => "Synced",
        /// A rollout is in progress.
        Progressing => "Progressing",
        /// Reconciling fails or the instance is unhealthy.
        Degraded => "Degraded",
        /// A rollout waits for an operator's approval.
        AwaitingApproval => "AwaitingApproval",
    }
}

text_enum! {
    /// What an audit entry records.
    pub enum AuditKind {
        /// What was observed (desired vs actual summary, drifts).
        Observation => "observation",
        /// What policy decided (rule, plugins, gates).
        Decision => "decision",
        /// A control-plane call made by a strategy (or simulated in dry-run).
        Action => "action",
        /// A call a plugin was not allowed to make.
        Denied => "denied",
        /// How a reconcile or rollout ended.
        Outcome => "outcome",
        /// An operator approved a paused rollout.
        Approval => "approval",
    }
}

/// One applied configuration of an instance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AppliedConfig {
    /// The instance.
    pub instance_id: String,
    /// The configuration as applied.
    pub config: Value,
    /// Content digest of the configuration (computed by the caller).
    pub digest: String,
    /// `name@version` of the strategy that sent it (empty when not recorded).
    pub strategy: String,
    /// When it was recorded.
    pub applied_at: SystemTime,
}

/// A revision the host stopped trying to apply: its rollout failed for good or an
/// operator aborted it. Kept until the desired configuration changes or an operator
/// retries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GivenUp {
    /// The instance.
    pub instance_id: String,
    /// Digest of the desired configuration given up.
    pub digest: String,
    /// Why, for an operator.
    pub reason: String,
    /// When.
    pub at: SystemTime,
}

/// An operator's request to abort the rollout of a revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AbortRequest {
    /// The instance.
    pub instance_id: String,
    /// Digest of the desired configuration whose rollout is to be aborted.
    pub digest: String,
    /// Who asked.
    pub requested_by: String,
    /// When.
    pub at: SystemTime,
    /// Whether finishing the abort gives the revision up (`false`: the rollout was
    /// superseded by a newer revision and is undone so the newer one can start).
    pub give_up: bool,
}

/// An operator's request to promote a rollout (`setpoint promote`), until the step that
/// delivers it to the strategy has been saved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromoteRequest {
    /// The instance.
    pub instance_id: String,
    /// Digest of the desired configuration whose rollout is to be promoted.
    pub digest: String,
    /// `true`: skip every remaining step; `false`: end the current pause or analysis.
    pub full: bool,
    /// Who asked.
    pub requested_by: String,
    /// When, in Unix milliseconds (also its identity: a step records which request it
    /// delivered).
    pub at_ms: u64,
}

/// The persisted state of a rollout in progress, enough to resume it after a restart with
/// the same plugin version it started with.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RolloutRecord {
    /// The instance being rolled out.
    pub instance_id: String,
    /// Strategy plugin name.
    pub strategy: String,
    /// Strategy plugin version the rollout started with.
    pub plugin_version: String,
    /// Content digest of that plugin's component.
    pub plugin_digest: String,
    /// The opaque state the strategy returned at its last step.
    pub state: Value,
    /// Steps taken so far.
    pub step: u32,
    /// When the rollout started.
    pub started_at: SystemTime,
    /// When it last changed.
    pub updated_at: SystemTime,
    /// Where it stands.
    pub phase: RolloutPhase,
}

/// A status condition of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Condition {
    /// Which condition.
    pub type_: ConditionType,
    /// Whether it holds.
    pub status: bool,
    /// Machine-readable CamelCase reason, e.g. `DriftDetected`.
    pub reason: String,
    /// Human-readable detail.
    pub message: String,
    /// When `status` last changed; [`Store::set_condition`] keeps the stored value when the
    /// status is unchanged.
    pub last_transition: SystemTime,
}

/// An audit entry to append.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    /// The instance concerned, or `None` for host-wide events (a plugin reloaded).
    pub instance_id: Option<String>,
    /// What is recorded.
    pub kind: AuditKind,
    /// One-line summary.
    pub message: String,
    /// Structured detail (drifts, call arguments, …).
    pub details: Value,
}

/// An audit entry as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    /// Increasing id: the log's order and the paging cursor.
    pub id: i64,
    /// When it was appended.
    pub at: SystemTime,
    /// The entry.
    #[serde(flatten)]
    pub entry: AuditEntry,
}

/// Which audit entries to read: ascending by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditFilter {
    /// Only entries about this instance.
    pub instance_id: Option<String>,
    /// Only entries with an id greater than this (a paging cursor).
    pub after_id: Option<i64>,
    /// At most this many entries (capped at [`MAX_AUDIT_PAGE`]).
    pub limit: usize,
}

impl Default for AuditFilter {
    fn default() -> Self {
        AuditFilter {
            instance_id: None,
            after_id: None,
            limit: MAX_AUDIT_PAGE,
        }
    }
}

/// An approval request and, once given, the approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApprovalRecord {
    /// Request id.
    pub id: i64,
    /// The instance whose rollout waits.
    pub instance_id: String,
    /// Digest of the desired configuration (the revision) the approval releases.
    pub digest: String,
    /// What is to be approved.
    pub message: String,
    /// When it was requested.
    pub requested_at: SystemTime,
    /// Who approved, once approved.
    pub approved_by: Option<String>,
    /// When it was approved.
    pub approved_at: Option<SystemTime>,
}

impl ApprovalRecord {
    /// Whether an operator has approved it.
    pub fn is_approved(&self) -> bool {
        self.approved_at.is_some()
    }
}

/// Everything the host records about one instance, read at once by
/// [`Store::instance_records`] (what a reconcile observes besides the control plane).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstanceRecords {
    /// The last applied configuration.
    pub applied: Option<AppliedConfig>,
    /// The rollout in progress.
    pub rollout: Option<RolloutRecord>,
    /// Its conditions, ordered by type.
    pub conditions: Vec<Condition>,
    /// The revision given up.
    pub given_up: Option<GivenUp>,
    /// A pending abort request.
    pub abort: Option<AbortRequest>,
    /// The approval request not yet used.
    pub approval: Option<ApprovalRecord>,
    /// Whether this host's strategy stopped it last.
    pub host_stopped: bool,
    /// A pending promotion.
    pub promote: Option<PromoteRequest>,
}

/// The durable state of one setpoint host. See the module documentation for concurrency.
#[derive(Debug)]
pub struct Store {
    /// Moves the WAL into the database off the write path (file stores only). First, so
    /// it is dropped (its thread joined) before the connection below closes. Held only
    /// for its `Drop`.
    _checkpointer: Option<Checkpointer>,
    conn: Mutex<Connection>,
    /// Mutating calls in flight (`journal.rs`): a file beside the database, not a table,
    /// so that journalling a call never waits for the database.
    intents: Mutex<journal::Journal>,
    path: PathBuf,
    backup_retention: usize,
    /// Storage faults a test injects ([`Store::inject_write_faults`]).
    faults: Mutex<Option<WriteFaults>>,
}

/// Decides, for each write the store is about to make (named by its operation, such as
/// `"record intent"` or `"save rollout"`), whether it fails as on a full filesystem.
#[doc(hidden)]
#[derive(Clone)]
pub struct WriteFaults(pub Arc<dyn Fn(&str) -> bool + Send + Sync>);

impl fmt::Debug for WriteFaults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WriteFaults(..)")
    }
}

/// How often the background checkpointer copies the WAL into the database.
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

/// A thread with a connection of its own that runs `PRAGMA wal_checkpoint(PASSIVE)`
/// every [`CHECKPOINT_INTERVAL`].
///
/// SQLite's default is to checkpoint inside the commit that takes the WAL past 1,000
/// pages: that commit copies about 4 MiB into the database file and syncs both files,
/// while holding the store's one connection, so every reconcile waits behind it. At a
/// few hundred changes a second that happened several times a second, and it was the
/// tail of event-to-action latency. A passive checkpoint runs beside writers and
/// readers (it never takes the write lock), so commits go on while it copies. The WAL
/// still holds every committed transaction until it is copied: durability is unchanged.
#[derive(Debug)]
struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(path: &Path) -> std::io::Result<Checkpointer> {
        let conn = Connection::open(path).map_err(std::io::Error::other)?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(std::io::Error::other)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let shown = path.display().to_string();
        let thread = std::thread::Builder::new()
            .name("setpoint-store-checkpoint".to_owned())
            .spawn(move || {
                let mut failing = false;
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(CHECKPOINT_INTERVAL)
                {
                    let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                        row.get::<_, i64>(0)
                    });
                    // One line when checkpoints start failing (a full disk, say: the WAL
                    // keeps every commit meanwhile) and one when they work again.
                    match (result, failing) {
                        (Err(error), false) => {
                            tracing::warn!(path = %shown, %error, "WAL checkpoint failed; retrying every {CHECKPOINT_INTERVAL:?} (nothing committed is lost)");
                            failing = true;
                        }
                        (Ok(_), true) => {
                            tracing::info!(path = %shown, "WAL checkpoints work again");
                            failing = false;
                        }
                        _ => {}
                    }
                }
            })?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // Hang up, then wait for a checkpoint in progress: the store's own connection,
        // closed after this, is then the last one and checkpoints what is left.
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Store {
    /// Opens (creating if needed, with its directory) the database at `path`, switches it to
    /// WAL mode and applies pending [`MIGRATIONS`]. Refuses a database from a newer setpoint.
    pub fn open(path: impl AsRef<Path>) -> Result<Store> {
        let path = path.as_ref().to_path_buf();
        let open_error = |source: Box<dyn std::error::Error + Send + Sync>| Error::Open {
            path: path.clone(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| open_error(Box::new(e)))?;
        }
        let mut journal_path = path.clone().into_os_string();
        journal_path.push("-intents");
        let journal_path = PathBuf::from(journal_path);
        // SQLite takes an empty file for a new database; but the journal beside it says
        // a store was opened here before (the journal is made after the schema), so the
        // file was truncated: starting afresh on it would lose every record silently.
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) && journal_path.exists() {
            return Err(Error::Corrupted {
                path,
                detail: "the file is empty, but its intent journal shows it held a store"
                    .to_owned(),
            });
        }
        let corrupted = |e: &rusqlite::Error| {
            matches!(
                e.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase)
            )
            .then(|| Error::Corrupted {
                path: path.clone(),
                detail: e.to_string(),
            })
        };
        let mut conn = Connection::open(&path).map_err(|e| open_error(Box::new(e)))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|e| open_error(Box::new(e)))?;
        // Every query the store runs is prepared once and kept: rusqlite's default of 16
        // statements is fewer than the store has, and a reconcile that re-parses its SQL
        // spends more time in SQLite's parser than in its queries.
        conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .map_err(|e| corrupted(&e).unwrap_or_else(|| open_error(Box::new(e))))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(open_error(
                format!("SQLite refused WAL journal mode (got \"{mode}\"); is the file on a network filesystem?").into(),
            ));
        }
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(|e| open_error(Box::new(e)))?;
        // Damaged pages (overwritten, cut off) are found before anything is read from
        // them or written over them. Reads every page once: milliseconds for the store's
        // usual size (figures: tests/reliability/storage.rs).
        let check: String = conn
            .query_row("PRAGMA quick_check(1)", [], |row| row.get(0))
            .map_err(|e| corrupted(&e).unwrap_or_else(|| open_error(Box::new(e))))?;
        if check != "ok" {
            return Err(Error::Corrupted {
                path,
                detail: format!("integrity check: {check}"),
            });
        }
        migrate(&mut conn, &path, MIGRATIONS)?;
        // Checkpoints run in the background (see [`Checkpointer`]), not in a commit.
        conn.pragma_update(None, "wal_autocheckpoint", 0)
            .map_err(|e| open_error(Box::new(e)))?;
        let checkpointer = Checkpointer::start(&path).map_err(|e| open_error(Box::new(e)))?;
        let journal = journal::Journal::open(&journal_path).map_err(|e| open_error(Box::new(e)))?;
        Ok(Store {
            conn: Mutex::new(conn),
            intents: Mutex::new(journal),
            faults: Mutex::new(None),
            path,
            backup_retention: DEFAULT_BACKUP_RETENTION,
            _checkpointer: Some(checkpointer),
        })
    }

    /// An in-memory database with the full schema; for unit tests of callers only (nothing
    /// survives the process).
    pub fn open_in_memory() -> Result<Store> {
        let path = PathBuf::from(":memory:");
        let mut conn = Connection::open_in_memory().map_err(|e| Error::Open {
            path: path.clone(),
            source: Box::new(e),
        })?;
        migrate(&mut conn, &path, MIGRATIONS)?;
        Ok(Store {
            conn: Mutex::new(conn),
            intents: Mutex::new(journal::Journal::in_memory()),
            faults: Mutex::new(None),
            path,
            backup_retention: DEFAULT_BACKUP_RETENTION,
            _checkpointer: None,
        })
    }

    /// Keeps `retention` previous configurations per instance (the `store.backup_retention`
    /// setting); older ones are pruned at the next [`Store::record_applied`].
    pub fn with_backup_retention(mut self, retention: usize) -> Self {
        self.backup_retention = retention;
        self
    }

    /// The database path (`:memory:` for an in-memory store).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version of the database.
    pub fn schema_version(&self) -> Result<i64> {
        self.lock()
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .during("read schema version")
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a transaction half-committed (SQLite
        // rolls back an unfinished transaction when it is dropped), so a poisoned lock still
        // guards a consistent database.
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Injects storage faults, for tests of what uses the store (the deterministic
    /// simulation): while set, every write (a database transaction, or a line of the
    /// intent journal) first asks `faults`, and one it fails is refused with
    /// [`Error::Full`] before anything is written, as a full filesystem refuses it. How
    /// the store itself meets a real full filesystem is tested on a small tmpfs
    /// (`tests/reliability/storage.rs`). `None` ends the faults.
    #[doc(hidden)]
    pub fn inject_write_faults(&self, faults: Option<WriteFaults>) {
        *self
            .faults
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = faults;
    }

    /// The refusal of `operation` when an injected fault says it fails.
    fn injected(&self, operation: &str) -> Option<Error> {
        let faults = self
            .faults
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()?;
        (faults.0)(operation).then(|| Error::Full {
            path: self.path.clone(),
            operation: operation.to_owned(),
            source: Box::new(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                "injected storage fault",
            )),
        })
    }

    fn write<T>(
        &self,
        operation: &'static str,
        body: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        if let Some(refused) = self.injected(operation) {
            return Err(refused);
        }
        let mut conn = self.lock();
        let written = (|| {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .during(operation)?;
            let value = body(&tx)?;
            tx.commit().during(operation)?;
            Ok(value)
        })();
        written.map_err(|e| self.classify(e))
    }

    /// Names the file and what to do for the failures an operator must act on: a full
    /// filesystem, a damaged file.
    fn classify(&self, error: Error) -> Error {
        let Error::Sqlite { operation, source } = error else {
            return error;
        };
        match source.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => Error::Full {
                path: self.path.clone(),
                operation: operation.to_owned(),
                source: Box::new(source),
            },
            Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
                Error::Corrupted {
                    path: self.path.clone(),
                    detail: format!("{operation}: {source}"),
                }
            }
            _ => Error::Sqlite { operation, source },
        }
    }

    // ----- applied configurations and backups -----

    /// Records `config` as applied to `instance_id` by `strategy` (`name@version`); the
    /// configuration it replaces becomes a backup, and backups beyond the retention are
    /// pruned. Recording the configuration that is already the last applied one (same
    /// digest) changes nothing and returns `false`, so repeated reconciles do not push real
    /// backups out.
    pub fn record_applied(
        &self,
        instance_id: &str,
        config: &Value,
        digest: &str,
        strategy: &str,
    ) -> Result<bool> {
        let keep = i64::try_from(self.backup_retention.saturating_add(1)).unwrap_or(i64::MAX);
        self.write("record applied configuration", |tx| {
            let current: Option<String> = tx
                .query_row(
                    "SELECT digest FROM applied_configs WHERE instance_id = ?1 ORDER BY seq DESC LIMIT 1",
                    [instance_id],
                    |row| row.get(0),
                )
                .optional()
                .during("record applied configuration")?;
            if current.as_deref() == Some(digest) {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO applied_configs (instance_id, config_json, digest, applied_at, strategy) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![instance_id, config.to_string(), digest, to_millis(SystemTime::now()), strategy],
            )
            .during("record applied configuration")?;
            tx.execute(
                "DELETE FROM applied_configs WHERE instance_id = ?1 AND seq NOT IN \
                 (SELECT seq FROM applied_configs WHERE instance_id = ?1 ORDER BY seq DESC LIMIT ?2)",
                params![instance_id, keep],
            )
            .during("prune configuration backups")?;
            Ok(true)
        })
    }

    /// The configuration last applied to `instance_id`.
    pub fn last_applied(&self, instance_id: &str) -> Result<Option<AppliedConfig>> {
        Ok(self.applied(instance_id, 0, 1)?.pop())
    }

    /// Previous applied configurations of `instance_id`, newest first.
    pub fn backups(&self, instance_id: &str) -> Result<Vec<AppliedConfig>> {
        self.applied(instance_id, 1, -1)
    }

    /// Everything recorded about `instance_id`, under one lock and with one query for
    /// the tables that are usually empty for it (given-up revisions, abort requests,
    /// approvals, host stops): a resync of thousands of converged instances reads each
    /// one's records in four short queries.
    pub fn instance_records(&self, instance_id: &str) -> Result<InstanceRecords> {
        const OP: &str = "read instance records";
        let mut conn = self.lock();
        // One read transaction for all of it: one snapshot, one WAL read lock.
        let conn = conn
            .transaction_with_behavior(TransactionBehavior::Deferred)
            .during(OP)?;
        let applied = applied_with(&conn, instance_id, 0, 1)?.pop();
        let rollout = rollouts_with(&conn, Some(instance_id))?.pop();
        let conditions = conditions_with(&conn, instance_id)?;
        type Rare = (
            (Option<String>, Option<String>, Option<i64>),
            (Option<String>, Option<String>, Option<i64>, Option<bool>),
            (Option<String>, Option<bool>, Option<String>, Option<i64>),
            bool,
            bool,
        );
        let rare: Rare = conn
            .prepare_cached(
                "SELECT g.digest, g.reason, g.at, a.digest, a.requested_by, a.at, a.give_up, \
                 p.digest, p.full, p.requested_by, p.at, \
                 EXISTS (SELECT 1 FROM host_stops WHERE instance_id = ?1), \
                 EXISTS (SELECT 1 FROM approvals WHERE instance_id = ?1 AND consumed_at IS NULL) \
                 FROM (SELECT 1) LEFT JOIN given_up g ON g.instance_id = ?1 \
                 LEFT JOIN abort_requests a ON a.instance_id = ?1 \
                 LEFT JOIN promote_requests p ON p.instance_id = ?1",
            )
            .during(OP)?
            .query_row([instance_id], |row| {
                Ok((
                    (row.get(0)?, row.get(1)?, row.get(2)?),
                    (row.get(3)?, row.get(4)?, row.get(5)?, row.get(6)?),
                    (row.get(7)?, row.get(8)?, row.get(9)?, row.get(10)?),
                    row.get(11)?,
                    row.get(12)?,
                ))
            })
            .during(OP)?;
        let (
            (g_digest, g_reason, g_at),
            (a_digest, a_by, a_at, a_give_up),
            (p_digest, p_full, p_by, p_at),
            host_stopped,
            has_approval,
        ) = rare;
        let approval = if has_approval {
            query_approvals(
                &conn,
                "WHERE instance_id = ?1 AND consumed_at IS NULL",
                [instance_id],
            )?
            .pop()
        } else {
            None
        };
        Ok(InstanceRecords {
            applied,
            rollout,
            conditions,
            given_up: g_digest.map(|digest| GivenUp {
                instance_id: instance_id.to_owned(),
                digest,
                reason: g_reason.unwrap_or_default(),
                at: from_millis(g_at.unwrap_or_default()),
            }),
            abort: a_digest.map(|digest| AbortRequest {
                instance_id: instance_id.to_owned(),
                digest,
                requested_by: a_by.unwrap_or_default(),
                at: from_millis(a_at.unwrap_or_default()),
                give_up: a_give_up.unwrap_or(true),
            }),
            approval,
            host_stopped,
            promote: p_digest.map(|digest| PromoteRequest {
                instance_id: instance_id.to_owned(),
                digest,
                full: p_full.unwrap_or(false),
                requested_by: p_by.unwrap_or_default(),
                at_ms: p_at.unwrap_or_default().max(0) as u64,
            }),
        })
        .and_then(|records| {
            conn.commit().during(OP)?;
            Ok(records)
        })
    }

    /// Every kept applied configuration of `instance_id`, newest first: the last applied
    /// one, then its backups (`setpoint history`).
    pub fn history(&self, instance_id: &str) -> Result<Vec<AppliedConfig>> {
        self.applied(instance_id, 0, -1)
    }

    /// Instances this host has applied a configuration to, or has a rollout, a given-up
    /// revision or an abort request for: what the resync visits besides the control
    /// plane's listing, so instances deleted while the daemon was down are noticed.
    pub fn known_instances(&self) -> Result<Vec<String>> {
        const OP: &str = "list recorded instances";
        let conn = self.lock();
        let mut statement = conn
            .prepare_cached(
                "SELECT instance_id FROM applied_configs UNION SELECT instance_id FROM rollouts \
                 UNION SELECT instance_id FROM given_up UNION SELECT instance_id FROM abort_requests",
            )
            .during(OP)?;
        statement
            .query_map([], |row| row.get(0))
            .during(OP)?
            .collect::<rusqlite::Result<Vec<String>>>()
            .during(OP)
    }

    /// Forgets every record of `instance_id` except its conditions and audit entries (an
    /// orphan an operator or the host has dealt with). Returns whether anything was there.
    pub fn forget_instance(&self, instance_id: &str) -> Result<bool> {
        self.write("forget instance", |tx| {
            let mut n = 0;
            for table in [
                "applied_configs",
                "rollouts",
                "given_up",
                "abort_requests",
                "promote_requests",
                "host_stops",
            ] {
                n += tx
                    .execute(
                        &format!("DELETE FROM {table} WHERE instance_id = ?1"),
                        [instance_id],
                    )
                    .during("forget instance")?;
            }
            Ok(n > 0)
        })
    }

    fn applied(&self, instance_id: &str, offset: i64, limit: i64) -> Result<Vec<AppliedConfig>> {
        applied_with(&self.lock(), instance_id, offset, limit)
    }

    // ----- rollouts -----

    /// Saves (inserts or replaces) the rollout state of `record.instance_id`.
    pub fn save_rollout(&self, record: &RolloutRecord) -> Result<()> {
        self.write("save rollout", |tx| {
            tx.execute(
                "INSERT INTO rollouts (instance_id, strategy, plugin_version, plugin_digest, state_json, step, phase, started_at, updated_at) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9) \
                 ON CONFLICT (instance_id) DO UPDATE SET strategy = ?2, plugin_version = ?3, plugin_digest = ?4, \
                 state_json = ?5, step = ?6, phase = ?7, started_at = ?8, updated_at = ?9",
                params![
                    record.instance_id,
                    record.strategy,
                    record.plugin_version,
                    record.plugin_digest,
                    record.state.to_string(),
                    record.step,
                    record.phase.as_str(),
                    to_millis(record.started_at),
                    to_millis(record.updated_at),
                ],
            )
            .during("save rollout")?;
            Ok(())
        })
    }

    /// The rollout in progress on `instance_id`, if any.
    pub fn load_rollout(&self, instance_id: &str) -> Result<Option<RolloutRecord>> {
        Ok(self.query_rollouts(Some(instance_id))?.pop())
    }

    /// Forgets the rollout of `instance_id` (finished or aborted); `false` if there was none.
    pub fn clear_rollout(&self, instance_id: &str) -> Result<bool> {
        self.write("clear rollout", |tx| {
            let deleted = tx
                .execute("DELETE FROM rollouts WHERE instance_id = ?1", [instance_id])
                .during("clear rollout")?;
            tx.execute(
                "DELETE FROM promote_requests WHERE instance_id = ?1",
                [instance_id],
            )
            .during("clear rollout")?;
            Ok(deleted > 0)
        })
    }

    /// Every rollout in progress, by instance id; what the host resumes after a restart.
    pub fn rollouts(&self) -> Result<Vec<RolloutRecord>> {
        self.query_rollouts(None)
    }

    fn query_rollouts(&self, instance_id: Option<&str>) -> Result<Vec<RolloutRecord>> {
        rollouts_with(&self.lock(), instance_id)
    }

    // ----- conditions -----

    /// Sets a condition of `instance_id`, replacing the one of the same type. If the status
    /// did not change, the stored `last_transition` is kept (only reason and message are
    /// updated). Returns the condition as stored.
    pub fn set_condition(&self, instance_id: &str, condition: &Condition) -> Result<Condition> {
        const OP: &str = "set condition";
        self.write(OP, |tx| {
            let previous: Option<(bool, i64)> = tx
                .query_row(
                    "SELECT status, last_transition FROM conditions WHERE instance_id = ?1 AND type = ?2",
                    params![instance_id, condition.type_.as_str()],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()
                .during(OP)?;
            let last_transition = match previous {
                Some((status, at)) if status == condition.status => at,
                _ => to_millis(condition.last_transition),
            };
            tx.execute(
                "INSERT INTO conditions (instance_id, type, status, reason, message, last_transition) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) \
                 ON CONFLICT (instance_id, type) DO UPDATE SET status = ?3, reason = ?4, message = ?5, last_transition = ?6",
                params![
                    instance_id,
                    condition.type_.as_str(),
                    condition.status,
                    condition.reason,
                    condition.message,
                    last_transition
                ],
            )
            .during(OP)?;
            Ok(Condition {
                last_transition: from_millis(last_transition),
                ..condition.clone()
            })
        })
    }

    /// The conditions of `instance_id`, ordered by type.
    pub fn conditions(&self, instance_id: &str) -> Result<Vec<Condition>> {
        conditions_with(&self.lock(), instance_id)
    }

    // ----- audit log -----

    /// Appends an entry to the audit log; returns its id and timestamp.
    pub fn append_audit(&self, entry: &AuditEntry) -> Result<(i64, SystemTime)> {
        self.write("append audit entry", |tx| insert_audit(tx, entry))
    }

    /// Appends several entries to the audit log in one transaction: all of them, or
    /// none when the write fails.
    pub fn append_audits(&self, entries: &[AuditEntry]) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        self.write("append audit entries", |tx| {
            for entry in entries {
                insert_audit(tx, entry)?;
            }
            Ok(())
        })
    }

    /// Whether an entry under `instance_id` names intent `id` recorded at `at_ms`: its
    /// call was audited already.
    pub fn intent_audited(&self, instance_id: &str, id: i64, at_ms: u64) -> Result<bool> {
        const OP: &str = "read audit log";
        // Newest first: an intent's entry, if any, is among the instance's last ones.
        self.lock()
            .prepare_cached(
                "SELECT 1 FROM audit WHERE instance_id = ?1 \
                 AND json_extract(details_json, '$.intent') = ?2 \
                 AND json_extract(details_json, '$.intendedAtMs') = ?3 \
                 ORDER BY id DESC LIMIT 1",
            )
            .during(OP)?
            .query_row(params![instance_id, id, at_ms as i64], |_| Ok(()))
            .optional()
            .during(OP)
            .map(|found| found.is_some())
    }

    /// Audit entries matching `filter`, oldest first.
    pub fn audit(&self, filter: &AuditFilter) -> Result<Vec<AuditRecord>> {
        const OP: &str = "read audit log";
        let limit = i64::try_from(filter.limit.min(MAX_AUDIT_PAGE)).unwrap_or(i64::MAX);
        let conn = self.lock();
        let mut statement = conn
            .prepare_cached(
                "SELECT id, at, instance_id, kind, message, details_json FROM audit \
                 WHERE (?1 IS NULL OR instance_id = ?1) AND id > ?2 ORDER BY id LIMIT ?3",
            )
            .during(OP)?;
        let rows = statement
            .query_map(
                params![filter.instance_id, filter.after_id.unwrap_or(0), limit],
                |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, i64>(1)?,
                        row.get::<_, Option<String>>(2)?,
                        row.get::<_, String>(3)?,
                        row.get::<_, String>(4)?,
                        row.get::<_, String>(5)?,
                    ))
                },
            )
            .during(OP)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .during(OP)?;
        rows.into_iter()
            .map(|(id, at, instance_id, kind, message, details)| {
                Ok(AuditRecord {
                    id,
                    at: from_millis(at),
                    entry: AuditEntry {
                        instance_id,
                        kind: AuditKind::parse(&kind, || format!("audit.kind of entry {id}"))?,
                        message,
                        details: parse_json(
                            || format!("audit.details_json of entry {id}"),
                            &details,
                        )?,
                    },
                })
            })
            .collect()
    }

    // ----- approvals -----

    /// Asks an operator to approve revision `digest` of `instance_id`; returns the request
    /// id. Idempotent while a request for the same revision is pending (its message is
    /// updated), so a rollout re-checked on every reconcile asks once; a pending request
    /// for another revision is withdrawn, so an approval can only release the revision it
    /// was given for.
    pub fn request_approval(&self, instance_id: &str, digest: &str, message: &str) -> Result<i64> {
        const OP: &str = "request approval";
        self.write(OP, |tx| {
            tx.execute(
                "DELETE FROM approvals WHERE instance_id = ?1 AND digest != ?2 AND consumed_at IS NULL",
                params![instance_id, digest],
            )
            .during(OP)?;
            let pending: Option<i64> = tx
                .query_row(
                    "SELECT id FROM approvals WHERE instance_id = ?1 AND digest = ?2 AND consumed_at IS NULL ORDER BY id DESC LIMIT 1",
                    params![instance_id, digest],
                    |row| row.get(0),
                )
                .optional()
                .during(OP)?;
            if let Some(id) = pending {
                tx.execute("UPDATE approvals SET message = ?2 WHERE id = ?1", params![id, message])
                    .during(OP)?;
                return Ok(id);
            }
            tx.execute(
                "INSERT INTO approvals (instance_id, digest, message, requested_at) VALUES (?1, ?2, ?3, ?4)",
                params![instance_id, digest, message, to_millis(SystemTime::now())],
            )
            .during(OP)?;
            Ok(tx.last_insert_rowid())
        })
    }

    /// Approves the pending request of `instance_id` on behalf of `by`, and records the
    /// approval in the audit log in the same transaction. With `digest`, only a request for
    /// that revision is approved ([`Error::StaleApproval`] otherwise), so an operator who
    /// looked at revision A never releases revision B.
    pub fn approve(
        &self,
        instance_id: &str,
        digest: Option<&str>,
        by: &str,
    ) -> Result<ApprovalRecord> {
        const OP: &str = "approve";
        self.write(OP, |tx| {
            let pending = query_approvals(
                tx,
                "WHERE instance_id = ?1 AND approved_at IS NULL AND consumed_at IS NULL",
                [instance_id],
            )?
            .pop()
            .ok_or_else(|| Error::NoPendingApproval {
                instance_id: instance_id.to_owned(),
            })?;
            if let Some(given) = digest
                && given != pending.digest
            {
                return Err(Error::StaleApproval {
                    instance_id: instance_id.to_owned(),
                    pending: pending.digest,
                    given: given.to_owned(),
                });
            }
            let now = to_millis(SystemTime::now());
            tx.execute(
                "UPDATE approvals SET approved_by = ?2, approved_at = ?3 WHERE id = ?1",
                params![pending.id, by, now],
            )
            .during(OP)?;
            let record = query_approvals(tx, "WHERE id = ?1", [pending.id])?
                .pop()
                .expect("the row just updated exists");
            insert_audit(
                tx,
                &AuditEntry {
                    instance_id: Some(instance_id.to_owned()),
                    kind: AuditKind::Approval,
                    message: format!(
                        "approved by {by} (revision {}): {}",
                        short_digest(&record.digest),
                        record.message
                    ),
                    details: serde_json::json!({ "approval_id": record.id, "approved_by": by, "digest": record.digest }),
                },
            )?;
            Ok(record)
        })
    }

    /// Requests waiting for an operator, oldest first.
    pub fn pending_approvals(&self) -> Result<Vec<ApprovalRecord>> {
        query_approvals(
            &self.lock(),
            "WHERE approved_at IS NULL AND consumed_at IS NULL",
            params![],
        )
    }

    /// Every approval request of `instance_id`, pending, approved or used, oldest first:
    /// which revisions an operator released, and when.
    pub fn approvals(&self, instance_id: &str) -> Result<Vec<ApprovalRecord>> {
        query_approvals(&self.lock(), "WHERE instance_id = ?1", [instance_id])
    }

    /// The request of `instance_id` not yet used by a rollout (pending or approved), if
    /// any.
    pub fn open_approval(&self, instance_id: &str) -> Result<Option<ApprovalRecord>> {
        Ok(query_approvals(
            &self.lock(),
            "WHERE instance_id = ?1 AND consumed_at IS NULL",
            [instance_id],
        )?
        .pop())
    }

    /// The approved request of `instance_id` for revision `digest` that no rollout step
    /// has used yet, marking it used: an approval lets one paused rollout of that revision
    /// proceed once. An approval of another revision is never taken.
    pub fn take_approval(&self, instance_id: &str, digest: &str) -> Result<Option<ApprovalRecord>> {
        const OP: &str = "take approval";
        self.write(OP, |tx| {
            let Some(record) = query_approvals(
                tx,
                "WHERE instance_id = ?1 AND digest = ?2 AND approved_at IS NOT NULL AND consumed_at IS NULL",
                params![instance_id, digest],
            )?
            .pop() else {
                return Ok(None);
            };
            tx.execute(
                "UPDATE approvals SET consumed_at = ?2 WHERE id = ?1",
                params![record.id, to_millis(SystemTime::now())],
            )
            .during(OP)?;
            Ok(Some(record))
        })
    }

    /// Withdraws every unused request of `instance_id` (its rollout converged, failed or
    /// was aborted); returns how many there were.
    pub fn withdraw_approvals(&self, instance_id: &str) -> Result<usize> {
        self.write("withdraw approvals", |tx| {
            withdraw_approvals_in(tx, instance_id)
        })
    }

    // ----- intents: mutating calls in flight -----

    fn journal(&self) -> MutexGuard<'_, journal::Journal> {
        self.intents
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records, before it is sent, that `plugin` is about to make the mutating call
    /// `call` on `target` for the rollout `rollout_key`; its id, for
    /// [`Store::settle_intent`]. In the journal beside the database when it returns: a
    /// killed process leaves it there.
    pub fn record_intent(
        &self,
        rollout_key: &str,
        plugin: &str,
        call: &str,
        target: &str,
        config_digest: Option<&str>,
    ) -> Result<i64> {
        if let Some(refused) = self.injected("intent journal: record intent") {
            return Err(refused);
        }
        self.journal()
            .record(rollout_key, plugin, call, target, config_digest)
            .map_err(|e| self.journal_error("record intent", e))
    }

    /// Records how the call of intent `id` ended, as soon as it returned: after a crash
    /// before the step's audit, the outcome is known rather than in doubt.
    pub fn settle_intent(&self, id: i64, outcome: &str) -> Result<()> {
        if let Some(refused) = self.injected("intent journal: settle intent") {
            return Err(refused);
        }
        self.journal()
            .settle(id, outcome)
            .map_err(|e| self.journal_error("settle intent", e))
    }

    /// Forgets the intents of `rollout_key` (their outcomes are in the audit log now).
    pub fn clear_intents(&self, rollout_key: &str) -> Result<usize> {
        if let Some(refused) = self.injected("intent journal: clear intents") {
            return Err(refused);
        }
        self.journal()
            .clear(rollout_key)
            .map_err(|e| self.journal_error("clear intents", e))
    }

    /// Every intent still recorded, oldest first: after a crash, the calls in doubt.
    pub fn intents(&self) -> Result<Vec<Intent>> {
        Ok(self.journal().pending())
    }

    fn journal_error(&self, what: &str, e: std::io::Error) -> Error {
        if e.kind() == std::io::ErrorKind::StorageFull {
            return Error::Full {
                path: self.path.clone(),
                operation: format!("intent journal: {what}"),
                source: Box::new(e),
            };
        }
        Error::Open {
            path: self.path.clone(),
            source: format!("intent journal: {what}: {e}").into(),
        }
    }

    // ----- stops made by this host -----

    /// Records whether the last lifecycle call this host's strategies made on
    /// `instance_id` was a `stop`, or one whose outcome is unknown (`true`), or a
    /// `start`/`restart` that succeeded (`false`). A stopped instance is left alone only
    /// when someone else stopped it.
    pub fn set_host_stopped(&self, instance_id: &str, stopped: bool) -> Result<()> {
        self.write("record host stop", |tx| {
            if stopped {
                tx.execute(
                    "INSERT INTO host_stops (instance_id, at) VALUES (?1, ?2) \
                     ON CONFLICT (instance_id) DO UPDATE SET at = ?2",
                    params![instance_id, to_millis(SystemTime::now())],
                )
            } else {
                tx.execute(
                    "DELETE FROM host_stops WHERE instance_id = ?1",
                    [instance_id],
                )
            }
            .during("record host stop")?;
            Ok(())
        })
    }

    /// Whether this host's strategies stopped `instance_id` last (see
    /// [`Store::set_host_stopped`]).
    pub fn host_stopped(&self, instance_id: &str) -> Result<bool> {
        const OP: &str = "read host stop";
        self.lock()
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM host_stops WHERE instance_id = ?1)")
            .during(OP)?
            .query_row([instance_id], |row| row.get(0))
            .during(OP)
    }

    // ----- given-up revisions -----

    /// Records that the host gave up revision `digest` of `instance_id` (replacing any
    /// earlier one).
    pub fn give_up(&self, instance_id: &str, digest: &str, reason: &str) -> Result<()> {
        self.write("record given-up revision", |tx| {
            give_up_in(tx, instance_id, digest, reason)
        })
    }

    /// The revision of `instance_id` the host gave up, if any.
    pub fn given_up(&self, instance_id: &str) -> Result<Option<GivenUp>> {
        const OP: &str = "read given-up revision";
        self.lock()
            .prepare_cached("SELECT digest, reason, at FROM given_up WHERE instance_id = ?1")
            .during(OP)?
            .query_row([instance_id], |row| {
                Ok(GivenUp {
                    instance_id: instance_id.to_owned(),
                    digest: row.get(0)?,
                    reason: row.get(1)?,
                    at: from_millis(row.get(2)?),
                })
            })
            .optional()
            .during(OP)
    }

    /// Forgets the given-up revision of `instance_id` (`setpoint retry`, or its desired
    /// configuration changed); `false` if there was none.
    pub fn clear_given_up(&self, instance_id: &str) -> Result<bool> {
        self.write("clear given-up revision", |tx| {
            Ok(tx
                .execute("DELETE FROM given_up WHERE instance_id = ?1", [instance_id])
                .during("clear given-up revision")?
                > 0)
        })
    }

    // ----- abort requests -----

    /// Records an operator's request to abort the rollout of revision `digest` of
    /// `instance_id`, if a rollout is in progress (`false`: there is none). Stored apart
    /// from the rollout record, so no step that was in flight when it arrived can
    /// overwrite it; checked in the same transaction as the rollout's existence, and
    /// [`Store::complete_rollout`] refuses to end a rollout with a pending abort, so an
    /// abort and a finishing step cannot pass each other.
    pub fn request_abort(&self, instance_id: &str, digest: &str, by: &str) -> Result<bool> {
        self.insert_abort(instance_id, digest, by, true)
    }

    /// Records that the rollout of revision `digest` is to be undone by its strategy
    /// because a newer revision superseded it: an abort that does not give the revision
    /// up. An operator's abort already pending is kept as it is.
    pub fn request_supersede(&self, instance_id: &str, digest: &str, by: &str) -> Result<bool> {
        self.insert_abort(instance_id, digest, by, false)
    }

    fn insert_abort(
        &self,
        instance_id: &str,
        digest: &str,
        by: &str,
        give_up: bool,
    ) -> Result<bool> {
        self.write("record abort request", |tx| {
            let conflict = if give_up {
                "DO UPDATE SET digest = ?2, requested_by = ?3, at = ?4, give_up = 1"
            } else {
                "DO NOTHING"
            };
            let n = tx
                .execute(
                    &format!(
                        "INSERT INTO abort_requests (instance_id, digest, requested_by, at, give_up) \
                         SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM rollouts WHERE instance_id = ?1) \
                         ON CONFLICT (instance_id) {conflict}"
                    ),
                    params![instance_id, digest, by, to_millis(SystemTime::now()), give_up],
                )
                .during("record abort request")?;
            Ok(n > 0)
        })
    }

    /// Records an operator's request to promote the rollout of revision `digest`
    /// (`full`: skip every remaining step), if a rollout is in progress (`false`: there
    /// is none). A newer request replaces a pending one.
    pub fn request_promote(
        &self,
        instance_id: &str,
        digest: &str,
        full: bool,
        by: &str,
    ) -> Result<bool> {
        self.write("record promote request", |tx| {
            let n = tx
                .execute(
                    "INSERT INTO promote_requests (instance_id, digest, full, requested_by, at) \
                     SELECT ?1, ?2, ?3, ?4, ?5 WHERE EXISTS (SELECT 1 FROM rollouts WHERE instance_id = ?1) \
                     ON CONFLICT (instance_id) DO UPDATE SET digest = ?2, full = ?3, requested_by = ?4, at = ?5",
                    params![instance_id, digest, full, by, to_millis(SystemTime::now())],
                )
                .during("record promote request")?;
            Ok(n > 0)
        })
    }

    /// Drops the promote request of `instance_id` made at `at_ms` (delivered to the
    /// strategy and saved with its state); a newer request is kept.
    pub fn clear_promote(&self, instance_id: &str, at_ms: u64) -> Result<()> {
        self.write("clear promote request", |tx| {
            tx.execute(
                "DELETE FROM promote_requests WHERE instance_id = ?1 AND at = ?2",
                params![instance_id, at_ms as i64],
            )
            .during("clear promote request")?;
            Ok(())
        })
    }

    /// Ends a rollout that finished: the record and unused approvals go. Refuses (returns
    /// `false`, changing nothing) while an abort request is pending: the abort wins.
    pub fn complete_rollout(&self, instance_id: &str) -> Result<bool> {
        const OP: &str = "complete rollout";
        self.write(OP, |tx| {
            let aborting: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM abort_requests WHERE instance_id = ?1)",
                    [instance_id],
                    |row| row.get(0),
                )
                .during(OP)?;
            if aborting {
                return Ok(false);
            }
            tx.execute("DELETE FROM rollouts WHERE instance_id = ?1", [instance_id])
                .during(OP)?;
            tx.execute(
                "DELETE FROM promote_requests WHERE instance_id = ?1",
                [instance_id],
            )
            .during(OP)?;
            withdraw_approvals_in(tx, instance_id)?;
            Ok(true)
        })
    }

    /// The pending abort request of `instance_id`, if any.
    pub fn abort_request(&self, instance_id: &str) -> Result<Option<AbortRequest>> {
        const OP: &str = "read abort request";
        self.lock()
            .prepare_cached(
                "SELECT digest, requested_by, at, give_up FROM abort_requests WHERE instance_id = ?1",
            )
            .during(OP)?
            .query_row([instance_id], |row| {
                Ok(AbortRequest {
                    instance_id: instance_id.to_owned(),
                    digest: row.get(0)?,
                    requested_by: row.get(1)?,
                    at: from_millis(row.get(2)?),
                    give_up: row.get(3)?,
                })
            })
            .optional()
            .during(OP)
    }

    /// Ends an abort: the rollout record and the abort request go, and the revision is
    /// recorded as given up, in one transaction (a crash leaves either the abort still to
    /// finish or the revision given up, never a rollout that starts again).
    pub fn finish_abort(&self, instance_id: &str, digest: &str, reason: &str) -> Result<()> {
        const OP: &str = "finish abort";
        self.write(OP, |tx| {
            tx.execute("DELETE FROM rollouts WHERE instance_id = ?1", [instance_id])
                .during(OP)?;
            tx.execute(
                "DELETE FROM abort_requests WHERE instance_id = ?1",
                [instance_id],
            )
            .during(OP)?;
            tx.execute(
                "DELETE FROM promote_requests WHERE instance_id = ?1",
                [instance_id],
            )
            .during(OP)?;
            withdraw_approvals_in(tx, instance_id)?;
            give_up_in(tx, instance_id, digest, reason)
        })
    }

    /// Ends the undoing of a superseded rollout: the rollout record, the abort request
    /// and any promotion go, nothing is given up, and the newer revision is decided next.
    pub fn finish_supersede(&self, instance_id: &str) -> Result<()> {
        const OP: &str = "finish superseded rollout";
        self.write(OP, |tx| {
            for table in ["rollouts", "abort_requests", "promote_requests"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE instance_id = ?1"),
                    [instance_id],
                )
                .during(OP)?;
            }
            withdraw_approvals_in(tx, instance_id)?;
            Ok(())
        })
    }

    /// Drops the abort request of `instance_id` without giving anything up (the rollout it
    /// named no longer exists); `false` if there was none.
    pub fn clear_abort(&self, instance_id: &str) -> Result<bool> {
        self.write("clear abort request", |tx| {
            Ok(tx
                .execute(
                    "DELETE FROM abort_requests WHERE instance_id = ?1",
                    [instance_id],
                )
                .during("clear abort request")?
                > 0)
        })
    }
}

/// The first 12 hex digits of a digest, as people read and type it.
pub fn short_digest(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}

fn applied_with(
    conn: &Connection,
    instance_id: &str,
    offset: i64,
    limit: i64,
) -> Result<Vec<AppliedConfig>> {
    const OP: &str = "read applied configurations";
    let mut statement = conn
        .prepare_cached(
            "SELECT seq, config_json, digest, applied_at, strategy FROM applied_configs \
             WHERE instance_id = ?1 ORDER BY seq DESC LIMIT ?2 OFFSET ?3",
        )
        .during(OP)?;
    let rows = statement
        .query_map(params![instance_id, limit, offset], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, i64>(3)?,
                row.get::<_, String>(4)?,
            ))
        })
        .during(OP)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .during(OP)?;
    rows.into_iter()
        .map(|(seq, config, digest, applied_at, strategy)| {
            Ok(AppliedConfig {
                instance_id: instance_id.to_owned(),
                config: parse_json(
                    || format!("applied_configs.config_json of row {seq}"),
                    &config,
                )?,
                digest,
                strategy,
                applied_at: from_millis(applied_at),
            })
        })
        .collect()
}

fn rollouts_with(conn: &Connection, instance_id: Option<&str>) -> Result<Vec<RolloutRecord>> {
    const OP: &str = "read rollouts";
    type RawRollout = (
        String,
        String,
        String,
        String,
        String,
        u32,
        String,
        i64,
        i64,
    );
    let mut statement = conn
        .prepare_cached(
            "SELECT instance_id, strategy, plugin_version, plugin_digest, state_json, step, phase, started_at, updated_at \
             FROM rollouts WHERE ?1 IS NULL OR instance_id = ?1 ORDER BY instance_id",
        )
        .during(OP)?;
    let rows: Vec<RawRollout> = statement
        .query_map([instance_id], |row| {
            Ok((
                row.get(0)?,
                row.get(1)?,
                row.get(2)?,
                row.get(3)?,
                row.get(4)?,
                row.get(5)?,
                row.get(6)?,
                row.get(7)?,
                row.get(8)?,
            ))
        })
        .during(OP)?
        .collect::<rusqlite::Result<_>>()
        .during(OP)?;
    rows.into_iter()
        .map(
            |(
                instance_id,
                strategy,
                plugin_version,
                plugin_digest,
                state,
                step,
                phase,
                started_at,
                updated_at,
            )| {
                Ok(RolloutRecord {
                    state: parse_json(|| format!("rollouts.state_json of {instance_id}"), &state)?,
                    phase: RolloutPhase::parse(&phase, || {
                        format!("rollouts.phase of {instance_id}")
                    })?,
                    instance_id,
                    strategy,
                    plugin_version,
                    plugin_digest,
                    step,
                    started_at: from_millis(started_at),
                    updated_at: from_millis(updated_at),
                })
            },
        )
        .collect()
}

fn conditions_with(conn: &Connection, instance_id: &str) -> Result<Vec<Condition>> {
    const OP: &str = "read conditions";
    let mut statement = conn
        .prepare_cached(
            "SELECT type, status, reason, message, last_transition FROM conditions WHERE instance_id = ?1",
        )
        .during(OP)?;
    let rows = statement
        .query_map([instance_id], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, bool>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
                row.get::<_, i64>(4)?,
            ))
        })
        .during(OP)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .during(OP)?;
    let mut conditions = rows
        .into_iter()
        .map(|(type_, status, reason, message, last_transition)| {
            Ok(Condition {
                type_: ConditionType::parse(&type_, || {
                    format!("conditions.type of {instance_id}")
                })?,
                status,
                reason,
                message,
                last_transition: from_millis(last_transition),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    conditions.sort_by_key(|c| c.type_);
    Ok(conditions)
}

/// Withdraws the unused approval requests of `instance_id` inside `tx`.
fn withdraw_approvals_in(tx: &rusqlite::Transaction<'_>, instance_id: &str) -> Result<usize> {
    tx.execute(
        "DELETE FROM approvals WHERE instance_id = ?1 AND consumed_at IS NULL",
        [instance_id],
    )
    .during("withdraw approvals")
}

/// Records revision `digest` of `instance_id` as given up inside `tx`.
fn give_up_in(
    tx: &rusqlite::Transaction<'_>,
    instance_id: &str,
    digest: &str,
    reason: &str,
) -> Result<()> {
    tx.execute(
        "INSERT INTO given_up (instance_id, digest, reason, at) VALUES (?1, ?2, ?3, ?4) \
         ON CONFLICT (instance_id) DO UPDATE SET digest = ?2, reason = ?3, at = ?4",
        params![instance_id, digest, reason, to_millis(SystemTime::now())],
    )
    .during("record given-up revision")?;
    Ok(())
}

fn insert_audit(tx: &rusqlite::Transaction<'_>, entry: &AuditEntry) -> Result<(i64, SystemTime)> {
    let at = to_millis(SystemTime::now());
    tx.execute(
        "INSERT INTO audit (at, instance_id, kind, message, details_json) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            at,
            entry.instance_id,
            entry.kind.as_str(),
            entry.message,
            entry.details.to_string()
        ],
    )
    .during("append audit entry")?;
    Ok((tx.last_insert_rowid(), from_millis(at)))
}

fn query_approvals(
    conn: &Connection,
    condition: &str,
    params: impl rusqlite::Params,
) -> Result<Vec<ApprovalRecord>> {
    const OP: &str = "read approvals";
    let sql = format!(
        "SELECT id, instance_id, message, requested_at, approved_by, approved_at, digest FROM approvals {condition} ORDER BY id"
    );
    let mut statement = conn.prepare_cached(&sql).during(OP)?;
    statement
        .query_map(params, approval_from_row)
        .during(OP)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .during(OP)
}

fn approval_from_row(row: &Row<'_>) -> rusqlite::Result<ApprovalRecord> {
    Ok(ApprovalRecord {
        id: row.get(0)?,
        instance_id: row.get(1)?,
        message: row.get(2)?,
        requested_at: from_millis(row.get(3)?),
        approved_by: row.get(4)?,
        approved_at: row.get::<_, Option<i64>>(5)?.map(from_millis),
        digest: row.get(6)?,
    })
}

/// Applies `migrations[current..]` in one immediate transaction, refusing a database newer
/// than `migrations.len()`.
fn migrate(conn: &mut Connection, path: &Path, migrations: &[&str]) -> Result<()> {
    let supported = migrations.len() as i64;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .during("begin migration")?;
    let found: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .during("read schema version")?;
    if found < 0 {
        return Err(Error::Corrupt {
            what: format!("the schema version of {}", path.display()),
            detail: format!("negative version {found}"),
        });
    }
    if found > supported {
        return Err(Error::NewerSchema {
            path: path.to_path_buf(),
            found,
            supported,
        });
    }
    for (index, migration) in migrations.iter().enumerate().skip(found as usize) {
        let version = index as i64 + 1;
        let migrate_error = |source| Error::Migrate {
            path: path.to_path_buf(),
            version,
            source,
        };
        tx.execute_batch(migration).map_err(migrate_error)?;
        tx.pragma_update(None, "user_version", version)
            .map_err(migrate_error)?;
    }
    tx.commit().during("commit migration")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn temp_store() -> (tempfile::TempDir, PathBuf, Store) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join("setpoint.db");
        let store = Store::open(&path).unwrap();
        (dir, path, store)
    }

    fn ms(millis: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(millis)
    }

    fn rollout(instance_id: &str) -> RolloutRecord {
        RolloutRecord {
            instance_id: instance_id.to_owned(),
            strategy: "canary".to_owned(),
            plugin_version: "1.2.0".to_owned(),
            plugin_digest: "sha256:abc".to_owned(),
            state: json!({"clone": "api-1-canary", "weights": [90, 10]}),
            step: 2,
            started_at: ms(1_700_000_000_123),
            updated_at: ms(1_700_000_060_456),
            phase: RolloutPhase::Running,
        }
    }

    fn audit_entry(instance: Option<&str>, kind: AuditKind, message: &str) -> AuditEntry {
        AuditEntry {
            instance_id: instance.map(str::to_owned),
            kind,
            message: message.to_owned(),
            details: json!({"n": message}),
        }
    }

    #[test]
    fn open_creates_the_file_in_wal_mode_at_the_newest_schema() {
        let (_dir, path, store) = temp_store();
        assert!(path.exists());
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let mode: String = store
            .lock()
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }

    /// Commits never checkpoint (`wal_autocheckpoint = 0`); the background thread moves
    /// the WAL into the database file, which only a checkpoint writes to.
    #[test]
    fn the_wal_is_checkpointed_in_the_background_not_by_commits() {
        let (_dir, path, store) = temp_store();
        let autocheckpoint: i64 = store
            .lock()
            .pragma_query_value(None, "wal_autocheckpoint", |row| row.get(0))
            .unwrap();
        assert_eq!(autocheckpoint, 0, "commits must not checkpoint");
        let db_size = || std::fs::metadata(&path).unwrap().len();
        let before = db_size();
        let message = "x".repeat(2_000);
        for _ in 0..2_000 {
            store
                .append_audit(&audit_entry(Some("i-1"), AuditKind::Action, &message))
                .unwrap();
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while db_size() <= before && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            db_size() > before,
            "nothing was checkpointed into {} within 10 s",
            path.display()
        );
        // Closing leaves no WAL behind, and everything is in the file.
        drop(store);
        let mut wal = path.clone().into_os_string();
        wal.push("-wal");
        assert!(
            !std::path::Path::new(&wal).exists(),
            "the WAL outlived the store"
        );
        let count: i64 = Store::open(&path)
            .unwrap()
            .lock()
            .query_row("SELECT COUNT(*) FROM audit", [], |row| row.get(0))
            .unwrap();
        assert_eq!(count, 2_000);
    }

    #[test]
    fn reopening_applies_no_migration_twice_and_keeps_data() {
        let (_dir, path, store) = temp_store();
        store
            .record_applied("i-1", &json!({"port": 8080}), "d1", "restart@0.1.0")
            .unwrap();
        drop(store);
        // Reopening runs the migrations again: they must be skipped, not fail on
        // "table already exists" or wipe data.
        drop(Store::open(&path).unwrap());
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(
            store.last_applied("i-1").unwrap().unwrap().config,
            json!({"port": 8080})
        );
    }

    #[test]
    fn migrations_apply_only_the_versions_a_database_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn, &path, &MIGRATIONS[..1]).unwrap();
        conn.execute(
            "INSERT INTO audit (at, instance_id, kind, message, details_json) VALUES (1, 'i', 'action', 'kept', '{}')",
            [],
        )
        .unwrap();
        let next = [MIGRATIONS[0], "ALTER TABLE audit ADD COLUMN actor TEXT;"];
        migrate(&mut conn, &path, &next).unwrap();
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 2);
        let kept: String = conn
            .query_row("SELECT message FROM audit WHERE actor IS NULL", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(kept, "kept");
    }

    #[test]
    fn failed_migration_leaves_the_previous_version_and_no_partial_tables() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("partial.db");
        let mut conn = Connection::open(&path).unwrap();
        migrate(&mut conn, &path, &MIGRATIONS[..1]).unwrap();
        let broken = [
            MIGRATIONS[0],
            "CREATE TABLE half (x INTEGER); THIS IS NOT SQL;",
        ];
        let error = migrate(&mut conn, &path, &broken).unwrap_err();
        assert!(
            matches!(error, Error::Migrate { version: 2, .. }),
            "{error:?}"
        );
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(version, 1);
        let half: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = 'half'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(half, 0);
    }

    #[test]
    fn database_from_a_newer_setpoint_is_refused_with_a_clear_message() {
        let (_dir, path, store) = temp_store();
        store
            .lock()
            .pragma_update(None, "user_version", 99)
            .unwrap();
        drop(store);
        let error = Store::open(&path).unwrap_err();
        assert!(matches!(error, Error::NewerSchema { found: 99, .. }));
        assert_eq!(
            error.to_string(),
            format!(
                "state database {} has schema version 99, but this setpoint supports up to version {}; upgrade setpoint, or point store.path at another file",
                path.display(),
                MIGRATIONS.len()
            )
        );
    }

    #[test]
    fn unopenable_path_is_reported_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, "x").unwrap();
        let error = Store::open(file.join("setpoint.db")).unwrap_err();
        assert!(matches!(error, Error::Open { .. }));
        assert!(error.to_string().contains("not-a-dir"), "{error}");
    }

    #[test]
    fn recording_a_new_configuration_keeps_the_previous_as_a_backup() {
        let (_dir, _path, store) = temp_store();
        assert!(
            store
                .record_applied("i-1", &json!({"v": 1}), "d1", "restart@0.1.0")
                .unwrap()
        );
        assert!(
            store
                .record_applied("i-1", &json!({"v": 2}), "d2", "restart@0.1.0")
                .unwrap()
        );
        assert!(
            store
                .record_applied("i-2", &json!({"other": true}), "x", "restart@0.1.0")
                .unwrap()
        );
        let last = store.last_applied("i-1").unwrap().unwrap();
        assert_eq!((last.config, last.digest.as_str()), (json!({"v": 2}), "d2"));
        let backups = store.backups("i-1").unwrap();
        assert_eq!(backups.len(), 1);
        assert_eq!(backups[0].config, json!({"v": 1}));
        assert!(store.backups("i-2").unwrap().is_empty());
        assert!(store.last_applied("unknown").unwrap().is_none());
    }

    #[test]
    fn backups_beyond_the_retention_are_pruned_newest_kept() {
        let (_dir, _path, store) = temp_store();
        let store = store.with_backup_retention(3);
        for v in 1..=10 {
            store
                .record_applied("i-1", &json!({"v": v}), &format!("d{v}"), "restart@0.1.0")
                .unwrap();
        }
        assert_eq!(store.last_applied("i-1").unwrap().unwrap().digest, "d10");
        let digests: Vec<String> = store
            .backups("i-1")
            .unwrap()
            .into_iter()
            .map(|b| b.digest)
            .collect();
        assert_eq!(digests, ["d9", "d8", "d7"]);
        let rows: i64 = store
            .lock()
            .query_row("SELECT count(*) FROM applied_configs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 4, "pruned rows are deleted, not hidden");
    }

    #[test]
    fn recording_the_same_digest_again_does_not_push_out_a_backup() {
        let (_dir, _path, store) = temp_store();
        store
            .record_applied("i-1", &json!({"v": 1}), "d1", "restart@0.1.0")
            .unwrap();
        store
            .record_applied("i-1", &json!({"v": 2}), "d2", "restart@0.1.0")
            .unwrap();
        assert!(
            !store
                .record_applied("i-1", &json!({"v": 2}), "d2", "restart@0.1.0")
                .unwrap()
        );
        assert_eq!(store.backups("i-1").unwrap().len(), 1);
    }

    #[test]
    fn rollout_round_trips_and_survives_reopen() {
        let (_dir, path, store) = temp_store();
        let mut record = rollout("i-1");
        store.save_rollout(&record).unwrap();
        record.step = 3;
        record.phase = RolloutPhase::AwaitingApproval;
        record.state = json!({"weights": [50, 50]});
        store.save_rollout(&record).unwrap();
        store.save_rollout(&rollout("i-0")).unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.load_rollout("i-1").unwrap(), Some(record.clone()));
        let all = store.rollouts().unwrap();
        assert_eq!(
            all.iter()
                .map(|r| r.instance_id.as_str())
                .collect::<Vec<_>>(),
            ["i-0", "i-1"]
        );
        assert!(store.clear_rollout("i-1").unwrap());
        assert!(!store.clear_rollout("i-1").unwrap());
        assert_eq!(store.load_rollout("i-1").unwrap(), None);
    }

    #[test]
    fn condition_transition_time_changes_only_when_status_changes() {
        let (_dir, _path, store) = temp_store();
        let synced = |status: bool, reason: &str, at: u64| Condition {
            type_: ConditionType::Synced,
            status,
            reason: reason.to_owned(),
            message: format!("{reason} message"),
            last_transition: ms(at),
        };
        let stored = store
            .set_condition("i-1", &synced(false, "DriftDetected", 1_000))
            .unwrap();
        assert_eq!(stored.last_transition, ms(1_000));
        // Same status, new reason: the transition time stays.
        let stored = store
            .set_condition("i-1", &synced(false, "Applying", 2_000))
            .unwrap();
        assert_eq!(stored.last_transition, ms(1_000));
        assert_eq!(stored.reason, "Applying");
        // Status flips: the transition time moves.
        let stored = store
            .set_condition("i-1", &synced(true, "InSync", 3_000))
            .unwrap();
        assert_eq!(stored.last_transition, ms(3_000));
        store
            .set_condition(
                "i-1",
                &Condition {
                    type_: ConditionType::Degraded,
                    ..synced(false, "Healthy", 4_000)
                },
            )
            .unwrap();
        let conditions = store.conditions("i-1").unwrap();
        assert_eq!(conditions.len(), 2);
        assert_eq!(conditions[0], synced(true, "InSync", 3_000));
        assert_eq!(conditions[1].type_, ConditionType::Degraded);
        assert!(store.conditions("i-2").unwrap().is_empty());
    }

    #[test]
    fn audit_is_ordered_and_filtered_by_instance_cursor_and_limit() {
        let (_dir, _path, store) = temp_store();
        let before = SystemTime::now() - Duration::from_secs(1);
        let mut ids = Vec::new();
        for (instance, message) in [
            (Some("a"), "a1"),
            (Some("b"), "b1"),
            (None, "host"),
            (Some("a"), "a2"),
            (Some("a"), "a3"),
        ] {
            let (id, at) = store
                .append_audit(&audit_entry(instance, AuditKind::Action, message))
                .unwrap();
            assert!(at >= before);
            ids.push(id);
        }
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");
        let messages = |filter: AuditFilter| -> Vec<String> {
            store
                .audit(&filter)
                .unwrap()
                .into_iter()
                .map(|r| r.entry.message)
                .collect()
        };
        assert_eq!(
            messages(AuditFilter::default()),
            ["a1", "b1", "host", "a2", "a3"]
        );
        assert_eq!(
            messages(AuditFilter {
                instance_id: Some("a".into()),
                ..AuditFilter::default()
            }),
            ["a1", "a2", "a3"]
        );
        assert_eq!(
            messages(AuditFilter {
                instance_id: Some("a".into()),
                after_id: Some(ids[0]),
                limit: 1,
            }),
            ["a2"]
        );
        let first = &store.audit(&AuditFilter::default()).unwrap()[0];
        assert_eq!(first.entry, audit_entry(Some("a"), AuditKind::Action, "a1"));
    }

    #[test]
    fn approval_request_is_idempotent_and_approval_is_audited() {
        let (_dir, _path, store) = temp_store();
        let id = store
            .request_approval("i-1", "rev-a", "promote canary to 100%")
            .unwrap();
        assert_eq!(
            store
                .request_approval("i-1", "rev-a", "promote canary (retry)")
                .unwrap(),
            id
        );
        store.request_approval("i-2", "rev-x", "apply").unwrap();
        let pending = store.pending_approvals().unwrap();
        assert_eq!(
            pending
                .iter()
                .map(|a| a.instance_id.as_str())
                .collect::<Vec<_>>(),
            ["i-1", "i-2"]
        );
        assert_eq!(pending[0].message, "promote canary (retry)");
        assert_eq!(pending[0].digest, "rev-a");
        assert!(
            store.take_approval("i-1", "rev-a").unwrap().is_none(),
            "not approved yet"
        );

        let approved = store.approve("i-1", Some("rev-a"), "alice").unwrap();
        assert_eq!(approved.approved_by.as_deref(), Some("alice"));
        assert!(approved.is_approved());
        assert_eq!(store.pending_approvals().unwrap().len(), 1);
        let audit = store
            .audit(&AuditFilter {
                instance_id: Some("i-1".into()),
                ..AuditFilter::default()
            })
            .unwrap();
        assert_eq!(audit.len(), 1);
        assert_eq!(audit[0].entry.kind, AuditKind::Approval);
        assert_eq!(
            audit[0].entry.message,
            "approved by alice (revision rev-a): promote canary (retry)"
        );

        assert!(
            store.take_approval("i-1", "rev-b").unwrap().is_none(),
            "an approval releases only its own revision"
        );
        assert_eq!(
            store.take_approval("i-1", "rev-a").unwrap().map(|a| a.id),
            Some(id)
        );
        assert!(
            store.take_approval("i-1", "rev-a").unwrap().is_none(),
            "an approval is used once"
        );
    }

    #[test]
    fn approving_a_stale_revision_changes_nothing() {
        let (_dir, _path, store) = temp_store();
        store.request_approval("i-1", "rev-a", "apply a").unwrap();
        // The desired configuration moved on: the request for rev-a is replaced.
        store.request_approval("i-1", "rev-b", "apply b").unwrap();
        let error = store.approve("i-1", Some("rev-a"), "alice").unwrap_err();
        assert!(
            matches!(&error, Error::StaleApproval { pending, given, .. } if pending == "rev-b" && given == "rev-a"),
            "{error}"
        );
        assert!(store.take_approval("i-1", "rev-a").unwrap().is_none());
        assert!(store.take_approval("i-1", "rev-b").unwrap().is_none());
        assert_eq!(store.pending_approvals().unwrap().len(), 1);
        assert!(store.audit(&AuditFilter::default()).unwrap().is_empty());
        assert_eq!(store.withdraw_approvals("i-1").unwrap(), 1);
        assert!(store.open_approval("i-1").unwrap().is_none());
    }

    #[test]
    fn approving_without_a_pending_request_fails_and_audits_nothing() {
        let (_dir, _path, store) = temp_store();
        let error = store.approve("i-9", None, "bob").unwrap_err();
        assert_eq!(
            error.to_string(),
            "instance i-9 has no pending approval request"
        );
        assert!(store.audit(&AuditFilter::default()).unwrap().is_empty());
    }

    #[test]
    fn given_up_revisions_and_abort_requests_survive_a_reopen() {
        let (_dir, path, store) = temp_store();
        assert!(
            !store.request_abort("i-1", "rev-a", "alice").unwrap(),
            "nothing to abort without a rollout"
        );
        store.save_rollout(&rollout("i-1")).unwrap();
        assert!(store.request_abort("i-1", "rev-a", "alice").unwrap());
        store.give_up("i-2", "rev-x", "failed for good").unwrap();
        drop(store);

        let store = Store::open(&path).unwrap();
        let abort = store.abort_request("i-1").unwrap().unwrap();
        assert_eq!(
            (abort.digest.as_str(), abort.requested_by.as_str()),
            ("rev-a", "alice")
        );
        assert_eq!(store.given_up("i-2").unwrap().unwrap().digest, "rev-x");
        let mut known = store.known_instances().unwrap();
        known.sort();
        assert_eq!(known, ["i-1", "i-2"]);

        assert!(
            !store.complete_rollout("i-1").unwrap(),
            "a pending abort keeps the rollout from completing"
        );
        assert!(store.load_rollout("i-1").unwrap().is_some());
        store
            .finish_abort("i-1", "rev-a", "aborted by alice")
            .unwrap();
        assert!(store.load_rollout("i-1").unwrap().is_none());
        assert!(store.abort_request("i-1").unwrap().is_none());
        assert_eq!(
            store.given_up("i-1").unwrap().unwrap().reason,
            "aborted by alice"
        );
        assert!(store.clear_given_up("i-1").unwrap());
        assert!(!store.clear_given_up("i-1").unwrap());
        assert!(store.forget_instance("i-2").unwrap());
        assert!(store.given_up("i-2").unwrap().is_none());
    }

    #[test]
    fn instance_records_read_everything_at_once() {
        let (_dir, _path, store) = temp_store();
        assert_eq!(
            store.instance_records("i-1").unwrap(),
            InstanceRecords::default()
        );
        store
            .record_applied("i-1", &json!({"v": 1}), "d1", "restart@0.1.0")
            .unwrap();
        store.save_rollout(&rollout("i-1")).unwrap();
        store.request_abort("i-1", "rev-a", "alice").unwrap();
        store.give_up("i-1", "rev-0", "failed").unwrap();
        store.request_approval("i-1", "rev-a", "go?").unwrap();
        store.set_host_stopped("i-1", true).unwrap();
        let r = store.instance_records("i-1").unwrap();
        assert_eq!(r.applied, store.last_applied("i-1").unwrap());
        assert_eq!(r.rollout, store.load_rollout("i-1").unwrap());
        assert_eq!(r.abort, store.abort_request("i-1").unwrap());
        assert_eq!(r.given_up, store.given_up("i-1").unwrap());
        assert_eq!(r.approval, store.open_approval("i-1").unwrap());
        assert!(r.host_stopped);
        assert_eq!(r.conditions, store.conditions("i-1").unwrap());
        assert_eq!(
            store.instance_records("i-2").unwrap(),
            InstanceRecords::default(),
            "another instance's rows are not read"
        );
    }

    #[test]
    fn a_stop_made_by_this_host_is_remembered_until_it_starts_the_instance() {
        let (_dir, path, store) = temp_store();
        assert!(!store.host_stopped("i-1").unwrap());
        store.set_host_stopped("i-1", true).unwrap();
        drop(store);
        let store = Store::open(&path).unwrap();
        assert!(store.host_stopped("i-1").unwrap());
        store.set_host_stopped("i-1", false).unwrap();
        assert!(!store.host_stopped("i-1").unwrap());
    }

    #[test]
    fn history_lists_applied_revisions_newest_first_with_their_strategy() {
        let (_dir, _path, store) = temp_store();
        store
            .record_applied("i-1", &json!({"v": 1}), "d1", "restart@0.1.0")
            .unwrap();
        store
            .record_applied("i-1", &json!({"v": 2}), "d2", "canary@0.1.0")
            .unwrap();
        let history = store.history("i-1").unwrap();
        assert_eq!(
            history
                .iter()
                .map(|a| (a.digest.as_str(), a.strategy.as_str()))
                .collect::<Vec<_>>(),
            [("d2", "canary@0.1.0"), ("d1", "restart@0.1.0")]
        );
    }

    #[test]
    fn an_intent_is_known_as_audited_by_its_id_and_time() {
        let store = Store::open_in_memory().unwrap();
        let mut entry = audit_entry(Some("i-1"), AuditKind::Action, "p called stop on i-1: ok");
        entry.details = serde_json::json!({ "intent": 3, "intendedAtMs": 1000 });
        store.append_audit(&entry).unwrap();
        assert!(store.intent_audited("i-1", 3, 1000).unwrap());
        // Ids start again when the journal is emptied: the time tells them apart.
        assert!(!store.intent_audited("i-1", 3, 1001).unwrap());
        assert!(!store.intent_audited("i-1", 4, 1000).unwrap());
        assert!(!store.intent_audited("i-2", 3, 1000).unwrap());
    }

    #[test]
    fn several_audit_entries_are_written_whole_or_not_at_all() {
        let store = Store::open_in_memory().unwrap();
        let entries = [
            audit_entry(Some("i-1"), AuditKind::Action, "one"),
            audit_entry(Some("i-1"), AuditKind::Action, "two"),
        ];
        store.inject_write_faults(Some(WriteFaults(Arc::new(|op: &str| {
            op == "append audit entries"
        }))));
        let refused = store.append_audits(&entries).unwrap_err();
        assert!(matches!(refused, Error::Full { .. }), "{refused}");
        assert!(store.audit(&AuditFilter::default()).unwrap().is_empty());
        // An intent is refused the same way, before anything is journalled.
        store.inject_write_faults(Some(WriteFaults(Arc::new(|op: &str| {
            op.starts_with("intent journal")
        }))));
        assert!(
            store
                .record_intent("i-1", "p@1", "stop", "i-1", None)
                .is_err()
        );
        assert!(store.intents().unwrap().is_empty());
        store.inject_write_faults(None);
        store.append_audits(&entries).unwrap();
        let written: Vec<_> = store
            .audit(&AuditFilter::default())
            .unwrap()
            .into_iter()
            .map(|r| r.entry.message)
            .collect();
        assert_eq!(written, ["one", "two"]);
    }

    #[test]
    fn intents_survive_a_reopen_until_cleared_by_their_rollout() {
        let (_dir, path, store) = temp_store();
        let a = store
            .record_intent("i-1", "restart@0.1.0", "stop", "i-1", None)
            .unwrap();
        let b = store
            .record_intent(
                "group:r/app=x",
                "rolling@0.1.0",
                "start",
                "i-2",
                Some("sha256:ab"),
            )
            .unwrap();
        assert!(b > a);
        store.settle_intent(a, "ok").unwrap();
        drop(store);
        // What a crash leaves: the rows, in order.
        let store = Store::open(&path).unwrap();
        let left = store.intents().unwrap();
        assert_eq!(
            left.iter()
                .map(|i| (i.rollout_key.as_str(), i.call.as_str(), i.target.as_str()))
                .collect::<Vec<_>>(),
            [("i-1", "stop", "i-1"), ("group:r/app=x", "start", "i-2")]
        );
        assert_eq!(left[1].config_digest.as_deref(), Some("sha256:ab"));
        assert_eq!(
            (left[0].outcome.as_deref(), left[1].outcome.as_deref()),
            (Some("ok"), None)
        );
        assert_eq!(store.clear_intents("i-1").unwrap(), 1);
        assert_eq!(store.intents().unwrap().len(), 1);
        assert_eq!(store.clear_intents("i-1").unwrap(), 0);
    }

    #[test]
    fn corrupt_stored_values_are_reported_not_panicked_on() {
        let store = Store::open_in_memory().unwrap();
        store.save_rollout(&rollout("i-1")).unwrap();
        store
            .lock()
            .execute("UPDATE rollouts SET phase = 'paused'", [])
            .unwrap();
        let error = store.load_rollout("i-1").unwrap_err();
        assert_eq!(
            error.to_string(),
            "state database: rollouts.phase of i-1 holds an unreadable value: unknown value \"paused\""
        );
    }

    #[test]
    fn store_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Store>();
        let store = std::sync::Arc::new(Store::open_in_memory().unwrap());
        let handles: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for n in 0..25 {
                        store
                            .append_audit(&audit_entry(
                                None,
                                AuditKind::Outcome,
                                &format!("{t}-{n}"),
                            ))
                            .unwrap();
                    }
                })
            })
            .collect();
        for handle in handles {
            handle.join().unwrap();
        }
        assert_eq!(store.audit(&AuditFilter::default()).unwrap().len(), 100);
    }
}
