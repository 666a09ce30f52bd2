//! A read-only look into a spool, without its lock: the cursors and the ids already spooled,
//! for `once --dry-run`, which must work while the service runs and must change nothing.
//!
//! SQLite's WAL mode lets a reader see the last committed state while another process writes;
//! the connection is opened read-only, so nothing here can move a cursor or enqueue a record.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::SpoolError;

/// Read-only access to `<dir>/spool.db`; empty when there is no spool yet (first run).
pub struct Peek {
    conn: Option<Connection>,
}

impl Peek {
    /// Opens `<dir>/spool.db` read-only, if it exists.
    pub fn open(dir: &Path) -> Result<Peek, SpoolError> {
        let path = dir.join("spool.db");
        if !path.exists() {
            return Ok(Peek { conn: None });
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        Ok(Peek { conn: Some(conn) })
    }

    /// The account's cursor, as the next live poll would use it.
    pub fn cursor(&self, account: &str) -> Result<Option<i64>, SpoolError> {
        let Some(conn) = &self.conn else {
            return Ok(None);
        };
        Ok(conn
            .query_row(
                "SELECT cursor_ms FROM cursors WHERE account = ?1",
                [account],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Whether the record (`record_id` with its event time) of `account` was already spooled
    /// (and so would not be sent again).
    pub fn seen(
        &self,
        account: &str,
        event_time_ms: i64,
        record_id: &str,
    ) -> Result<bool, SpoolError> {
        let Some(conn) = &self.conn else {
            return Ok(false);
        };
        Ok(conn
            .query_row(
                "SELECT 1 FROM seen WHERE account = ?1 AND event_time_ms = ?2 AND record_id = ?3",
                params![account, event_time_ms, record_id],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{NewRecord, Spool};
    use super::*;

    #[test]
    fn peeks_while_another_handle_holds_the_lock_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            Peek::open(dir.path()).unwrap().cursor("acme").unwrap(),
            None
        );
        let s = Spool::open(dir.path()).unwrap();
        let rec = NewRecord {
            invalid: None,
            event_time_ms: 0,
            record_id: "r1".into(),
            event: b"{}".to_vec(),
        };
        s.enqueue_page("acme", &[rec], Some(42)).unwrap();
        let peek = Peek::open(dir.path()).unwrap();
        assert_eq!(peek.cursor("acme").unwrap(), Some(42));
        assert!(peek.seen("acme", 0, "r1").unwrap());
        assert!(!peek.seen("acme", 0, "r2").unwrap());
        assert!(!peek.seen("other", 0, "r1").unwrap());
        drop(peek);
        assert_eq!(s.depth().unwrap(), 1);
    }
}
