//! Dead letters: events a destination refused permanently, listed and requeued, each with
//! the destination it belongs to.

use rusqlite::params;

use super::*;
use crate::config::Destination;
use crate::time::now_ms;

/// An event that a destination refused permanently (settled with [`Spool::settle`]).
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The outbox row.
    pub seq: i64,
    /// Why (HEC's text and code, or the local validation failure).
    pub reason: String,
    /// HEC code, when HEC said it.
    pub hec_code: Option<i64>,
}

/// A stored dead letter.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeadLetterRow {
    /// Its id, for `spool requeue --id`.
    pub id: i64,
    /// When it was dead-lettered (ms since epoch).
    pub dead_at_ms: i64,
    /// Account name.
    pub account: String,
    /// Record id.
    pub record_id: String,
    /// Why HEC (or local validation) refused it.
    pub reason: String,
    /// HEC code, when HEC said it.
    pub hec_code: Option<i64>,
    /// The destination that refused it (a requeue puts it back into that one's outbox).
    pub destination: Destination,
    /// The serialized HEC event, as it was spooled.
    #[serde(serialize_with = "as_json")]
    pub event: Vec<u8>,
}

/// Writes spooled event bytes as the JSON they are (or as a string if they are not JSON).
pub(super) fn as_json<S: serde::Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
    use serde::Serialize;
    match serde_json::from_slice::<&serde_json::value::RawValue>(bytes) {
        Ok(raw) => raw.serialize(s),
        Err(_) => String::from_utf8_lossy(bytes).serialize(s),
    }
}

/// What [`Spool::requeue`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requeued {
    /// Dead letters moved back to the outbox.
    pub moved: usize,
    /// Requested ids that are not dead letters (then nothing moved).
    pub missing: Vec<i64>,
}

impl Spool {
    /// Dead letters of every destination, oldest first.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetterRow>, SpoolError> {
        Ok(reader::dead_letters(&self.conn(), None)?)
    }

    /// Moves dead letters back to the end of their destination's outbox (all of them, or
    /// those with the given ids; of `dest` only, when given), in one transaction, each event
    /// passed through `render(account, stored_event)` on the way: the cause of a dead letter
    /// is usually the envelope (an index HEC refuses), so the requeued event is rendered again
    /// with the current routes rather than resent as stored. An id that is not a dead letter
    /// (of `dest`, when given) moves nothing at all (the operator mistyped, or another requeue
    /// came first), and is reported in [`Requeued::missing`].
    pub fn requeue(
        &self,
        dest: Option<Destination>,
        ids: Option<&[i64]>,
        render: &dyn Fn(&str, &[u8]) -> Vec<u8>,
    ) -> Result<Requeued, SpoolError> {
        let now = now_ms();
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let rows: Vec<(i64, String, String, Vec<u8>, Destination)> = {
            let mut stmt = tx.prepare(
                "SELECT id, account, record_id, event, destination FROM dead_letters
                 WHERE (?1 IS NULL OR id = ?1) AND (?2 IS NULL OR destination = ?2) ORDER BY id",
            )?;
            let dest = dest.map(Destination::name);
            let mut read = |id: Option<i64>| {
                stmt.query_map(params![id, dest], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        reader::destination(r, 4)?,
                    ))
                })?
                .collect::<Result<Vec<_>, _>>()
            };
            match ids {
                None => read(None)?,
                Some(ids) => {
                    // An id named twice moves once.
                    let ids: std::collections::BTreeSet<i64> = ids.iter().copied().collect();
                    let mut rows = Vec::with_capacity(ids.len());
                    for id in ids {
                        rows.extend(read(Some(id))?);
                    }
                    rows
                }
            }
        };
        let missing: Vec<i64> = ids
            .unwrap_or_default()
            .iter()
            .copied()
            .filter(|id| !rows.iter().any(|r| r.0 == *id))
            .collect();
        if !missing.is_empty() {
            return Ok(Requeued { moved: 0, missing });
        }
        // What moves, per destination and account, for the running counts.
        let mut moved: std::collections::BTreeMap<
            Destination,
            std::collections::HashMap<String, i64>,
        > = Default::default();
        for (id, account, record_id, event, d) in &rows {
            tx.prepare_cached(&sql(*d, INSERT_OUTBOX))?
                .execute(params![account, record_id, render(account, event), now])?;
            tx.execute("DELETE FROM dead_letters WHERE id = ?1", [id])?;
            *moved
                .entry(*d)
                .or_default()
                .entry(account.clone())
                .or_default() += 1;
        }
        for (d, by_account) in &moved {
            let moving: i64 = by_account.values().sum();
            add_tallies(&tx, *d, by_account, -moving)?;
        }
        tx.commit()?;
        drop(conn);
        for d in moved.keys() {
            self.notify(*d);
        }
        Ok(Requeued {
            moved: rows.len(),
            missing,
        })
    }
}
