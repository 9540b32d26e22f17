//! Stored responses of the Responses API, in an embedded database (redb: a pure-Rust, crash-safe key-value store)
//! under `--state-dir`, so `previous_response_id` chains and `GET /v1/responses/{id}` survive a restart.
//!
//! One record per response: the response object, the items its request gave, and the whole conversation up to and
//! including its output (what a later `previous_response_id` continues). The store is bounded: at most
//! `max_count` responses and none older than `max_age`; the oldest go first, checked at every insert.

use std::path::Path;
use std::time::Duration;

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use super::api::responses::{Item, ResponseObject};

const RESPONSES: TableDefinition<&str, &[u8]> = TableDefinition::new("responses");
/// (created_at, id): the insertion order, for pruning.
const BY_TIME: TableDefinition<(u64, &str), ()> = TableDefinition::new("responses_by_time");

/// What is kept of one response.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stored {
    pub response: ResponseObject,
    /// The items of this request's `input` (its `instructions` are in `response`).
    pub input_items: Vec<Item>,
    /// Every item of the conversation through this response's output, oldest first.
    pub conversation: Vec<Item>,
}

pub struct ResponseStore {
    db: redb::Database,
    max_count: usize,
    max_age: Duration,
}

fn db_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("response store: {e}")
}

impl ResponseStore {
    /// Opens (or creates) `dir/responses.redb`.
    pub fn open(dir: &Path, max_count: usize, max_age: Duration) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        let path = dir.join("responses.redb");
        let db = redb::Database::create(&path).map_err(|e| {
            anyhow::anyhow!(
                "opening {}: {e} (is another radixserve using this --state-dir? give each server its own)",
                path.display()
            )
        })?;
        let tx = db.begin_write().map_err(db_err)?;
        tx.open_table(RESPONSES).map_err(db_err)?;
        tx.open_table(BY_TIME).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(Self { db, max_count: max_count.max(1), max_age })
    }

    pub fn put(&self, s: &Stored) -> anyhow::Result<()> {
        let bytes = serde_json::to_vec(s)?;
        let id = s.response.id.as_str();
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut responses = tx.open_table(RESPONSES).map_err(db_err)?;
            let mut by_time = tx.open_table(BY_TIME).map_err(db_err)?;
            responses.insert(id, bytes.as_slice()).map_err(db_err)?;
            by_time.insert((s.response.created_at, id), ()).map_err(db_err)?;
            // Prune: too many, or too old.
            let cutoff = super::now_secs().saturating_sub(self.max_age.as_secs());
            let mut excess = (responses.len().map_err(db_err)? as usize).saturating_sub(self.max_count);
            let mut doomed: Vec<(u64, String)> = Vec::new();
            for entry in by_time.iter().map_err(db_err)? {
                let (k, _) = entry.map_err(db_err)?;
                let (t, old) = k.value();
                if excess == 0 && t >= cutoff {
                    break;
                }
                excess = excess.saturating_sub(1);
                doomed.push((t, old.to_string()));
            }
            for (t, old) in doomed {
                by_time.remove((t, old.as_str())).map_err(db_err)?;
                responses.remove(old.as_str()).map_err(db_err)?;
            }
        }
        tx.commit().map_err(db_err)
    }

    pub fn get(&self, id: &str) -> anyhow::Result<Option<Stored>> {
        let tx = self.db.begin_read().map_err(db_err)?;
        let table = tx.open_table(RESPONSES).map_err(db_err)?;
        let Some(v) = table.get(id).map_err(db_err)? else { return Ok(None) };
        Ok(Some(serde_json::from_slice(v.value())?))
    }

    /// Removes a response; false if there was none.
    pub fn delete(&self, id: &str) -> anyhow::Result<bool> {
        let Some(s) = self.get(id)? else { return Ok(false) };
        let tx = self.db.begin_write().map_err(db_err)?;
        {
            let mut responses = tx.open_table(RESPONSES).map_err(db_err)?;
            let mut by_time = tx.open_table(BY_TIME).map_err(db_err)?;
            responses.remove(id).map_err(db_err)?;
            by_time.remove((s.response.created_at, id)).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::api::responses::TextConfig;

    fn stored(id: &str, created_at: u64) -> Stored {
        let response = ResponseObject {
            id: id.into(),
            object: "response".into(),
            created_at,
            status: "completed".into(),
            error: None,
            incomplete_details: None,
            instructions: None,
            max_output_tokens: None,
            model: "m".into(),
            output: Vec::new(),
            parallel_tool_calls: true,
            previous_response_id: None,
            store: true,
            temperature: None,
            top_p: None,
            top_logprobs: None,
            text: TextConfig { format: None },
            tool_choice: serde_json::Value::from("auto"),
            tools: Vec::new(),
            truncation: "disabled".into(),
            usage: None,
            user: None,
            metadata: Default::default(),
        };
        Stored { response, input_items: Vec::new(), conversation: Vec::new() }
    }

    #[test]
    fn the_store_keeps_reopens_deletes_and_prunes_the_oldest_and_the_expired() {
        let dir = std::env::temp_dir().join(format!("radixserve-store-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let now = crate::server::now_secs();
        {
            let s = ResponseStore::open(&dir, 2, Duration::from_secs(3600)).unwrap();
            s.put(&stored("a", now - 2)).unwrap();
            s.put(&stored("b", now - 1)).unwrap();
            s.put(&stored("c", now)).unwrap();
            assert!(s.get("a").unwrap().is_none(), "over the count: the oldest goes");
            assert!(s.get("b").unwrap().is_some() && s.get("c").unwrap().is_some());
            assert!(ResponseStore::open(&dir, 2, Duration::from_secs(3600)).is_err(), "one server per folder");
        }
        // Reopened (a restart): still there; an expired one goes at the next insert.
        let s = ResponseStore::open(&dir, 10, Duration::from_secs(3600)).unwrap();
        assert_eq!(s.get("c").unwrap().unwrap().response.id, "c");
        s.put(&stored("old", now - 7200)).unwrap();
        s.put(&stored("d", now)).unwrap();
        assert!(s.get("old").unwrap().is_none(), "older than the age limit");
        assert!(s.delete("d").unwrap());
        assert!(!s.delete("d").unwrap());
        assert!(s.get("d").unwrap().is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
