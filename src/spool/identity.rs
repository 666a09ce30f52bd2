//! Which RingCentral account each account name stood for, so a renamed account continues where
//! it was instead of polling its whole `initial_lookback` again (cursors and dedup are kept by
//! name; a rename once re-delivered a day of records).
//!
//! `account_identity(account, identity)`: the identity is a digest of what makes an account
//! the same RingCentral account ([`crate::config::AccountConfig::identity`]). A configured name
//! with no cursor whose identity was last seen under a name no longer configured takes over
//! that name's cursor and dedup, in one transaction. The table is created on first use (older
//! programs ignore it), so the schema version does not change.

use rusqlite::{OptionalExtension, params};

use super::{Spool, SpoolError};

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS account_identity(
    account TEXT PRIMARY KEY,
    identity TEXT NOT NULL) WITHOUT ROWID";

impl Spool {
    /// Records that `name` is the account `identity`. If `name` has no cursor yet and another
    /// name, not in `configured`, was the same account, `name` adopts that name's cursor and
    /// dedup (the old name is forgotten); returns the old name.
    pub fn adopt_account(
        &self,
        name: &str,
        identity: &str,
        configured: &[String],
    ) -> Result<Option<String>, SpoolError> {
        let mut conn = self.conn();
        conn.execute_batch(SCHEMA)?;
        let tx = conn.transaction()?;
        let has_cursor = tx
            .query_row("SELECT 1 FROM cursors WHERE account = ?1", [name], |_| {
                Ok(())
            })
            .optional()?
            .is_some();
        let mut adopted = None;
        if !has_cursor {
            let candidates: Vec<String> = {
                let mut stmt = tx.prepare(
                    "SELECT i.account FROM account_identity i JOIN cursors c ON c.account = i.account
                     WHERE i.identity = ?1 AND i.account != ?2 ORDER BY c.updated_at_ms DESC",
                )?;
                stmt.query_map(params![identity, name], |r| r.get(0))?
                    .collect::<Result<_, _>>()?
            };
            if let Some(old) = candidates.into_iter().find(|c| !configured.contains(c)) {
                tx.execute(
                    "UPDATE cursors SET account = ?1 WHERE account = ?2",
                    params![name, old],
                )?;
                tx.execute(
                    "UPDATE OR IGNORE seen SET account = ?1 WHERE account = ?2",
                    params![name, old],
                )?;
                // The completeness evidence follows the account too (`spool ledger`).
                for table in ["ledger", "reconciliations"] {
                    tx.execute(
                        &format!("UPDATE OR IGNORE {table} SET account = ?1 WHERE account = ?2"),
                        params![name, old],
                    )?;
                }
                tx.execute(
                    "DELETE FROM account_identity WHERE account = ?1",
                    params![old],
                )?;
                adopted = Some(old);
            }
        }
        tx.execute(
            "INSERT OR REPLACE INTO account_identity(account, identity) VALUES (?1, ?2)",
            params![name, identity],
        )?;
        tx.commit()?;
        Ok(adopted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::NewRecord;

    fn record(id: &str) -> NewRecord {
        NewRecord {
            record_id: id.into(),
            event_time_ms: 1000,
            event: format!(r#"{{"event":{{"id":"{id}"}}}}"#).into_bytes(),
            invalid: None,
        }
    }

    #[test]
    fn a_renamed_account_keeps_its_cursor_and_dedup_and_others_are_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path()).unwrap();
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            s.adopt_account("acme", "id-1", &names(&["acme", "beta"]))
                .unwrap(),
            None
        );
        assert_eq!(
            s.adopt_account("beta", "id-2", &names(&["acme", "beta"]))
                .unwrap(),
            None
        );
        s.enqueue_page("acme", &[record("r1")], Some(5000)).unwrap();
        s.enqueue_page("beta", &[record("r2")], Some(6000)).unwrap();
        // Renamed in the config: acme -> acme-eu.
        let now = names(&["acme-eu", "beta"]);
        assert_eq!(
            s.adopt_account("acme-eu", "id-1", &now).unwrap(),
            Some("acme".into())
        );
        assert_eq!(s.adopt_account("beta", "id-2", &now).unwrap(), None);
        assert_eq!(s.cursor("acme-eu").unwrap(), Some(5000));
        assert_eq!(s.cursor("acme").unwrap(), None);
        let again = s.enqueue_page("acme-eu", &[record("r1")], None).unwrap();
        assert_eq!(again.inserted, 0, "the old name's dedup came along");
        assert_eq!(s.cursor("beta").unwrap(), Some(6000));
        // A new account with its own identity starts fresh; a name still configured is never
        // taken over.
        assert_eq!(s.adopt_account("gamma", "id-3", &now).unwrap(), None);
        assert_eq!(
            s.adopt_account("beta-copy", "id-2", &names(&["beta", "beta-copy"]))
                .unwrap(),
            None
        );
    }
}
