//! Durable state in SQLite: instances with their desired configuration, labels and
//! runtime record, port allocations, the change feed (its retained entries and sequence
//! counter) and endpoints.
//!
//! The control plane keeps everything in memory for fast reads and writes through to
//! this store; [`Store::apply`] commits a batch of [`Write`]s in one transaction, so a
//! status change and its feed entry are stored together or not at all. Start reading at
//! [`Store::open`] and [`Store::load`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::model::{Instance, RuntimeInfo, StatusChange};

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened or its schema created.
    #[error("cannot open the database {path}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// The SQLite error.
        #[source]
        source: rusqlite::Error,
    },
    /// A statement failed.
    #[error("database error")]
    Sql(#[from] rusqlite::Error),
    /// A stored JSON column could not be read or written.
    #[error("stored JSON is invalid")]
    Json(#[from] serde_json::Error),
}

/// `Result` with [`StoreError`].
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What the control plane records about a run of an instance, beyond [`RuntimeInfo`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Runtime {
    /// Start and stop times, process id, metadata, error message.
    pub info: Option<RuntimeInfo>,
    /// The configuration the instance was last started with (what it runs while running).
    pub running_configuration: Option<Value>,
    /// OS process id while a process is believed alive.
    pub pid: Option<u32>,
    /// Where that process listens.
    pub host: Option<String>,
    /// Where that process listens.
    pub port: Option<u16>,
    /// Increases with every start, so an exit notice from an older run is ignored.
    pub generation: u64,
}

/// Everything stored about one instance.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceRecord {
    /// Creation order (list order).
    pub order: u64,
    /// The API object.
    pub instance: Instance,
    /// The desired configuration; `None` once it was removed (`DELETE
    /// /api/configuration/instances/{id}`), until a `PUT` gives it one again. Stored as
    /// JSON `null`.
    pub desired: Option<Value>,
    /// The runtime record.
    pub runtime: Runtime,
}

/// One change to commit.
#[derive(Debug)]
pub enum Write<'a> {
    /// Insert or replace an instance.
    Upsert(&'a InstanceRecord),
    /// Delete an instance and release its ports.
    Delete(&'a str),
    /// Append a feed entry (and advance the stored sequence counter), keeping only the
    /// newest `retain` entries.
    Change(&'a StatusChange, u64),
    /// Record that `port` is allocated to an instance.
    ClaimPort(u16, &'a str),
    /// Release `port` if it is allocated to that instance.
    ReleasePort(u16, &'a str),
    /// Insert or replace an endpoint's JSON, or delete it with `None`.
    Endpoint(&'a str, Option<&'a Value>),
}

/// Everything [`Store::load`] reads at start-up.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Instances in creation order.
    pub instances: Vec<InstanceRecord>,
    /// Port → instance id.
    pub ports: BTreeMap<u16, String>,
    /// Retained feed entries, oldest first.
    pub feed: Vec<StatusChange>,
    /// The newest sequence number ever handed out (0 if none).
    pub latest_sequence: u64,
    /// Endpoint name → its JSON.
    pub endpoints: BTreeMap<String, Value>,
}

/// The SQLite database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY,
    ord INTEGER NOT NULL,
    instance TEXT NOT NULL,
    desired TEXT NOT NULL,
    runtime TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ports (
    port INTEGER PRIMARY KEY,
    instance_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS ports_by_instance ON ports(instance_id);
CREATE TABLE IF NOT EXISTS feed (
    sequence INTEGER PRIMARY KEY,
    entry TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS endpoints (
    name TEXT PRIMARY KEY,
    endpoint TEXT NOT NULL
);
";

impl Store {
    /// Opens (creating if needed) the database at `path`, in WAL mode.
    pub fn open(path: &Path) -> Result<Self> {
        let open = || -> rusqlite::Result<Connection> {
            let conn = Connection::open(path)?;
            conn.pragma_update(None, "journal_mode", "WAL")?;
            // NORMAL in WAL mode: a crash of the OS may lose the last commits, a crash of
            // the control plane cannot. Good enough for a reference implementation.
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            conn.busy_timeout(std::time::Duration::from_secs(5))?;
            conn.execute_batch(SCHEMA)?;
            Ok(conn)
        };
        open()
            .map(|conn| Self { conn })
            .map_err(|source| StoreError::Open {
                path: path.to_owned(),
                source,
            })
    }

    /// Reads the whole state.
    pub fn load(&self) -> Result<Loaded> {
        let mut loaded = Loaded::default();
        let mut stmt = self
            .conn
            .prepare("SELECT ord, instance, desired, runtime FROM instances ORDER BY ord")?;
        let rows = stmt.query_map([], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, String>(1)?,
                row.get::<_, String>(2)?,
                row.get::<_, String>(3)?,
            ))
        })?;
        for row in rows {
            let (order, instance, desired, runtime) = row?;
            loaded.instances.push(InstanceRecord {
                order: order as u64,
                instance: serde_json::from_str(&instance)?,
                desired: serde_json::from_str(&desired)?,
                runtime: serde_json::from_str(&runtime)?,
            });
        }
        let mut stmt = self.conn.prepare("SELECT port, instance_id FROM ports")?;
        for row in stmt.query_map([], |row| Ok((row.get::<_, u16>(0)?, row.get(1)?)))? {
            let (port, id) = row?;
            loaded.ports.insert(port, id);
        }
        let mut stmt = self
            .conn
            .prepare("SELECT entry FROM feed ORDER BY sequence")?;
        for row in stmt.query_map([], |row| row.get::<_, String>(0))? {
            loaded.feed.push(serde_json::from_str(&row?)?);
        }
        loaded.latest_sequence = self
            .conn
            .query_row(
                "SELECT value FROM counters WHERE name = 'feed.sequence'",
                [],
                |row| row.get::<_, i64>(0),
            )
            .optional()?
            .unwrap_or(0) as u64;
        let mut stmt = self.conn.prepare("SELECT name, endpoint FROM endpoints")?;
        for row in stmt.query_map([], |row| {
            Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
        })? {
            let (name, endpoint) = row?;
            loaded
                .endpoints
                .insert(name, serde_json::from_str(&endpoint)?);
        }
        Ok(loaded)
    }

    /// Commits `writes` in one transaction: all of them or none.
    pub fn apply(&mut self, writes: &[Write<'_>]) -> Result<()> {
        let tx = self.conn.transaction()?;
        for write in writes {
            match write {
                Write::Upsert(record) => {
                    tx.execute(
                        "INSERT INTO instances (id, ord, instance, desired, runtime)
                         VALUES (?1, ?2, ?3, ?4, ?5)
                         ON CONFLICT(id) DO UPDATE SET instance = ?3, desired = ?4, runtime = ?5",
                        params![
                            record.instance.id,
                            record.order as i64,
                            serde_json::to_string(&record.instance)?,
                            serde_json::to_string(&record.desired)?,
                            serde_json::to_string(&record.runtime)?,
                        ],
                    )?;
                }
                Write::Delete(id) => {
                    tx.execute("DELETE FROM instances WHERE id = ?1", [id])?;
                    tx.execute("DELETE FROM ports WHERE instance_id = ?1", [id])?;
                }
                Write::Change(change, retain) => {
                    tx.execute(
                        "INSERT INTO feed (sequence, entry) VALUES (?1, ?2)",
                        params![change.sequence as i64, serde_json::to_string(change)?],
                    )?;
                    tx.execute(
                        "INSERT INTO counters (name, value) VALUES ('feed.sequence', ?1)
                         ON CONFLICT(name) DO UPDATE SET value = ?1",
                        [change.sequence as i64],
                    )?;
                    let oldest_kept = change.sequence.saturating_sub(*retain) as i64;
                    tx.execute("DELETE FROM feed WHERE sequence <= ?1", [oldest_kept])?;
                }
                Write::ReleasePort(port, id) => {
                    tx.execute(
                        "DELETE FROM ports WHERE port = ?1 AND instance_id = ?2",
                        params![port, id],
                    )?;
                }
                Write::ClaimPort(port, id) => {
                    tx.execute(
                        "INSERT INTO ports (port, instance_id) VALUES (?1, ?2)",
                        params![port, id],
                    )?;
                }
                Write::Endpoint(name, Some(endpoint)) => {
                    tx.execute(
                        "INSERT INTO endpoints (name, endpoint) VALUES (?1, ?2)
                         ON CONFLICT(name) DO UPDATE SET endpoint = ?2",
                        params![name, serde_json::to_string(endpoint)?],
                    )?;
                }
                Write::Endpoint(name, None) => {
                    tx.execute("DELETE FROM endpoints WHERE name = ?1", [name])?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{InstanceStatus, Labels, PlatformType};
    use chrono::Utc;

    fn record(id: &str, order: u64) -> InstanceRecord {
        InstanceRecord {
            order,
            instance: Instance {
                id: id.into(),
                name: format!("name-{id}"),
                description: String::new(),
                platform_type: PlatformType::Simulated,
                created_at: Utc::now(),
                last_modified_at: None,
                status: InstanceStatus::Created,
                metadata: Labels::from([("team".into(), "a".into())]),
            },
            desired: Some(serde_json::json!({"port": 1})),
            runtime: Runtime::default(),
        }
    }

    #[test]
    fn state_survives_reopening_and_the_feed_keeps_only_the_newest_entries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.db");
        {
            let mut store = Store::open(&path).unwrap();
            let (a, b) = (record("a", 1), record("b", 2));
            store
                .apply(&[Write::Upsert(&a), Write::ClaimPort(18000, "a")])
                .unwrap();
            store.apply(&[Write::Upsert(&b)]).unwrap();
            for sequence in 1..=5 {
                let change = StatusChange {
                    sequence,
                    instance_id: "a".into(),
                    status: InstanceStatus::Running,
                    previous_status: None,
                    source: "t".into(),
                    timestamp: Utc::now(),
                    metadata: Labels::new(),
                };
                store.apply(&[Write::Change(&change, 3)]).unwrap();
            }
            store.apply(&[Write::Delete("b")]).unwrap();
        }
        let loaded = Store::open(&path).unwrap().load().unwrap();
        assert_eq!(loaded.instances.len(), 1);
        assert_eq!(loaded.instances[0], record_with_time(&loaded.instances[0]));
        assert_eq!(loaded.ports.get(&18000).map(String::as_str), Some("a"));
        assert_eq!(loaded.latest_sequence, 5);
        let kept: Vec<u64> = loaded.feed.iter().map(|c| c.sequence).collect();
        assert_eq!(kept, vec![3, 4, 5]);
    }

    #[test]
    fn a_removed_desired_configuration_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cp.db");
        let mut removed = record("a", 1);
        removed.desired = None;
        Store::open(&path)
            .unwrap()
            .apply(&[Write::Upsert(&removed)])
            .unwrap();
        let loaded = Store::open(&path).unwrap().load().unwrap();
        assert_eq!(loaded.instances[0].desired, None);
    }

    fn record_with_time(loaded: &InstanceRecord) -> InstanceRecord {
        let mut expected = record("a", 1);
        expected.instance.created_at = loaded.instance.created_at;
        expected
    }
}
