//! The spool's unit tests (the storage contract in `spool.rs`'s docs).

use super::*;
use crate::config::Destination;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension};

fn rec(id: &str) -> NewRecord {
    NewRecord {
        invalid: None,
        event_time_ms: 0,
        record_id: id.to_string(),
        event: format!("{{\"event\":{{\"id\":\"{id}\"}}}}").into_bytes(),
    }
}

/// A second open of `dir` while `first` holds it is refused, naming this process (read from
/// /proc/locks); once `first` is dropped, the directory opens again.
fn assert_second_open_refused(dir: &std::path::Path, first: Spool) {
    let e = Spool::open(dir).err().expect("second open must fail");
    let msg = e.to_string();
    assert!(msg.contains("in use by another rc-audit-hec"), "{msg}");
    assert!(
        msg.contains(&format!("pid {}", std::process::id())),
        "the holder is named from /proc/locks: {msg}"
    );
    drop(first);
    Spool::open(dir).expect("lock is released with the spool");
}

#[test]
fn a_second_instance_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let first = Spool::open(dir.path()).unwrap();
    assert_second_open_refused(dir.path(), first);
}

#[test]
fn records_and_cursor_commit_together_and_dedup_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path()).unwrap();
    let page1 = [rec("a"), rec("b")];
    assert_eq!(s.enqueue_page("acme", &page1, None).unwrap().inserted, 2);
    assert_eq!(
        s.cursor("acme").unwrap(),
        None,
        "no cursor before the window ends"
    );
    let page2 = [rec("b"), rec("c")];
    let e = s.enqueue_page("acme", &page2, Some(1234)).unwrap();
    assert_eq!(
        e,
        Enqueued {
            inserted: 1,
            duplicates: 1,
            dead_lettered: 0,
        }
    );
    assert_eq!(s.cursor("acme").unwrap(), Some(1234));
    // The same id in another account is another record.
    assert_eq!(
        s.enqueue_page("other", &[rec("a")], None).unwrap().inserted,
        1
    );
    let ids: Vec<_> = s
        .read_batch(Destination::Hec, 100, 1 << 20)
        .unwrap()
        .into_iter()
        .map(|r| r.record_id)
        .collect();
    assert_eq!(ids, ["a", "b", "c", "a"]);
}

#[test]
fn a_failed_transaction_moves_neither_records_nor_cursor() {
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path()).unwrap();
    s.enqueue_page("acme", &[rec("a")], Some(1)).unwrap();
    // Make the outbox insert fail after `seen` accepted the id.
    s.conn()
        .execute_batch(
            "CREATE TRIGGER boom BEFORE INSERT ON outbox WHEN NEW.record_id = 'bad'
             BEGIN SELECT RAISE(ABORT, 'disk full (simulated)'); END;",
        )
        .unwrap();
    let err = s.enqueue_page("acme", &[rec("b"), rec("bad")], Some(2));
    assert!(err.is_err());
    assert_eq!(s.cursor("acme").unwrap(), Some(1), "cursor must not move");
    assert_eq!(s.depth().unwrap(), 1, "no record of the failed page stays");
    s.conn().execute_batch("DROP TRIGGER boom").unwrap();
    // The ids were not remembered either: the retry enqueues them.
    assert_eq!(
        s.enqueue_page("acme", &[rec("b"), rec("bad")], Some(2))
            .unwrap()
            .inserted,
        2
    );
}

#[test]
fn batches_respect_limits_and_settle_deletes_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path()).unwrap();
    let recs: Vec<_> = (0..10).map(|i| rec(&format!("r{i}"))).collect();
    s.enqueue_page("acme", &recs, None).unwrap();
    let size = recs[0].event.len();
    assert_eq!(s.read_batch(Destination::Hec, 4, 1 << 20).unwrap().len(), 4);
    assert_eq!(
        s.read_batch(Destination::Hec, 100, size * 3).unwrap().len(),
        3
    );
    assert_eq!(
        s.read_batch(Destination::Hec, 100, 1).unwrap().len(),
        1,
        "an over-size event goes alone"
    );
    let batch = s.read_batch(Destination::Hec, 5, 1 << 20).unwrap();
    s.settle(
        Destination::Hec,
        Some((batch[0].seq, batch[2].seq)),
        &[DeadLetter {
            seq: batch[3].seq,
            reason: "bad".into(),
            hec_code: Some(6),
        }],
    )
    .unwrap();
    let rest: Vec<_> = s
        .read_batch(Destination::Hec, 100, 1 << 20)
        .unwrap()
        .into_iter()
        .map(|r| r.record_id)
        .collect();
    assert_eq!(rest, ["r4", "r5", "r6", "r7", "r8", "r9"]);
    let dl = s.dead_letters().unwrap();
    assert_eq!(dl.len(), 1);
    assert_eq!(
        (dl[0].record_id.as_str(), dl[0].reason.as_str()),
        ("r3", "bad")
    );
    assert_eq!(dl[0].hec_code, Some(6));
    let st = s.status().unwrap();
    assert_eq!((st.depth, st.dead_letters), (6, 1));
}

#[test]
fn contents_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Spool::open(dir.path()).unwrap();
        s.enqueue_page("acme", &[rec("a")], Some(99)).unwrap();
    }
    let s = Spool::open(dir.path()).unwrap();
    assert_eq!(s.depth().unwrap(), 1);
    assert_eq!(s.cursor("acme").unwrap(), Some(99));
    assert_eq!(
        s.enqueue_page("acme", &[rec("a")], None).unwrap().inserted,
        0
    );
}

fn ids(s: &Spool) -> Vec<String> {
    s.read_batch(Destination::Hec, 10_000, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| r.record_id)
        .collect()
}

#[test]
fn a_file_that_is_not_a_database_is_set_aside_and_a_fresh_spool_starts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("spool.db"),
        b"this is not sqlite at all, just garbage bytes....",
    )
    .unwrap();
    let s = Spool::open(dir.path()).expect("starts anyway");
    let r = s.recovery().expect("recovery reported");
    assert!(r.aside.exists(), "the damaged file is kept");
    assert!(
        r.aside
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("spool.db.damaged-")
    );
    assert_eq!(
        std::fs::read(&r.aside).unwrap(),
        b"this is not sqlite at all, just garbage bytes...."
    );
    s.enqueue_page("acme", &[rec("a")], Some(1)).unwrap();
    drop(s);
    // The next start finds a healthy spool: no further recovery, no crash loop.
    let s = Spool::open(dir.path()).unwrap();
    assert!(s.recovery().is_none());
    assert_eq!(ids(&s), ["a"]);
}

/// Overwrites part of page `page_no` (1-based, as `sqlite_master.rootpage`) of a closed
/// database file, keeping the page header intact, so `quick_check` finds it damaged.
fn scribble_over_page(path: &std::path::Path, page_no: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    // The page size is in the header (bytes 16-17, big-endian; 1 means 65536).
    let page = match u16::from_be_bytes([bytes[16], bytes[17]]) {
        1 => 65536,
        n => n as usize,
    };
    let at = (page_no - 1) * page;
    for b in &mut bytes[at + 8..at + 200] {
        *b = 0xA5;
    }
    std::fs::write(path, &bytes).unwrap();
}

#[test]
fn a_corrupted_page_is_detected_and_readable_rows_are_salvaged() {
    let dir = tempfile::tempdir().unwrap();
    let index_page = {
        let s = Spool::open(dir.path()).unwrap();
        let recs: Vec<_> = (0..50).map(|i| rec(&format!("r{i}"))).collect();
        s.enqueue_page("acme", &recs, Some(77)).unwrap();
        // Delivered: the background check waits for an empty backlog.
        let batch = s.read_batch(Destination::Hec, 50, usize::MAX).unwrap();
        s.settle(Destination::Hec, Some((batch[0].seq, batch[49].seq)), &[])
            .unwrap();
        // Checkpoint so the data lives in the main file, then damage an index page.
        s.conn()
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
        s.conn()
            .query_row(
                "SELECT rootpage FROM sqlite_master WHERE name = 'seen_by_seen_at'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap() as usize
    };
    // Scribble over an index page of `seen`.
    scribble_over_page(&dir.path().join("spool.db"), index_page);
    // The spool was closed cleanly, so this start checks in the background, finds the
    // damage and recovers it in place: no restart needed.
    let s = Spool::open(dir.path()).unwrap();
    let recovered = (0..500).find_map(|_| {
        std::thread::sleep(Duration::from_millis(10));
        s.recovery()
    });
    let r = recovered.expect("damage found and recovered without a restart");
    assert!(
        r.detail.contains("integrity") || r.detail.contains("malformed"),
        "{}",
        r.detail
    );
    // Whatever was readable came over; what did not is in the kept file, never deleted.
    assert!(r.aside.exists());
    // Delivered rows (hidden by the marker, maybe not yet purged) stay behind.
    assert_eq!(r.salvaged[0], ("outbox", Some(0)), "{:?}", r.salvaged);
    assert!(s.integrity_problem().is_none());
    assert!(s.file_problem().is_none(), "{:?}", s.file_problem());
    assert!(ids(&s).is_empty());
    assert_eq!(s.depth().unwrap(), 0);
    assert_eq!(s.cursor("acme").unwrap(), Some(77));
    s.enqueue_page("acme", &[rec("new")], Some(78)).unwrap();
    drop(s);
    let s = Spool::open(dir.path()).unwrap();
    assert!(s.recovery().is_none(), "healthy after the recovery");
    assert_eq!(ids(&s), ["new"]);
    assert_eq!(s.cursor("acme").unwrap(), Some(78));
}

#[test]
fn a_recovery_interrupted_after_its_salvage_is_finished_by_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Spool::open(dir.path()).unwrap();
        s.enqueue_page("acme", &[rec("a"), rec("b")], Some(5))
            .unwrap();
    }
    // As a kill between steps 3 and 5 leaves it: the complete salvage beside the damaged
    // file (here, a copy of the good one stands for the salvage).
    std::fs::copy(dir.path().join("spool.db"), dir.path().join(SALVAGED)).unwrap();
    std::fs::write(dir.path().join("spool.db"), b"garbage, not a database").unwrap();
    std::fs::write(dir.path().join("spool.db-wal"), b"stale wal").unwrap();
    // An interrupted salvage from an earlier attempt is dropped.
    std::fs::write(dir.path().join(SALVAGE), b"half a salvage").unwrap();
    let s = Spool::open(dir.path()).unwrap();
    assert!(s.recovery().is_some());
    assert_eq!(ids(&s), ["a", "b"]);
    assert_eq!(s.cursor("acme").unwrap(), Some(5));
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        !names.iter().any(|n| n.starts_with("spool.db.salv")),
        "{names:?}"
    );
    let kept = names
        .iter()
        .find(|n| n.starts_with("spool.db.damaged-") && !n.ends_with("-wal"))
        .expect("damaged file kept");
    assert_eq!(
        std::fs::read(dir.path().join(kept)).unwrap(),
        b"garbage, not a database"
    );
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("spool.db.damaged-") && n.ends_with("-wal"))
    );
}

#[test]
fn status_queries_never_scan_the_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path()).unwrap();
    // Every query, for every destination.
    let queries: Vec<String> = Destination::ALL
        .into_iter()
        .flat_map(|d| STATUS_QUERIES.map(|q| sql(d, q)))
        .collect();
    let steps = |s: &Spool| -> Vec<i32> {
        let conn = s.conn();
        queries
            .iter()
            .map(|sql| {
                let mut stmt = conn.prepare(sql).unwrap();
                let mut rows = stmt.query([]).unwrap();
                while rows.next().unwrap().is_some() {}
                drop(rows);
                stmt.get_status(rusqlite::StatementStatus::VmStep)
            })
            .collect()
    };
    s.set_destinations(&Destination::ALL);
    for account in ["acme", "beta"] {
        let recs: Vec<_> = (0..2000).map(|i| rec(&format!("{account}{i}"))).collect();
        s.enqueue_page(account, &recs, None).unwrap();
    }
    for sql in &queries {
        let conn = s.conn();
        let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
        let plan: Vec<String> = stmt
            .query_map([], |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            !plan.iter().any(|p| p.starts_with("SCAN")),
            "{sql}: {plan:?}"
        );
    }
    let few = steps(&s);
    let recs: Vec<_> = (0..20_000).map(|i| rec(&format!("more{i}"))).collect();
    s.enqueue_page("acme", &recs, None).unwrap();
    let many = steps(&s);
    // The same work for 4,000 or 24,000 events (a count over the outbox takes a VM step
    // per row).
    assert_eq!(few, many, "status work grows with the backlog");
    assert!(many.iter().all(|&n| n < 100), "{many:?}");
}

#[test]
fn running_counts_stay_right_across_enqueue_settle_dead_letter_requeue_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let truth = |s: &Spool| -> (u64, u64, Vec<(String, u64)>, Option<i64>) {
        let conn = s.conn();
        let n = |sql: &str| conn.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap() as u64;
        let mut stmt = conn
            .prepare(
                "SELECT account, count(*) FROM outbox
                 WHERE seq > (SELECT upto_seq FROM delivered) GROUP BY account ORDER BY account",
            )
            .unwrap();
        let by = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        // The head of the outbox (what the sink sends next).
        let oldest = conn
            .query_row(
                "SELECT spooled_at_ms FROM outbox
                 WHERE seq > (SELECT upto_seq FROM delivered) ORDER BY seq LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .unwrap();
        (
            // What waits: rows the `delivered` marker hides are settled.
            n("SELECT count(*) FROM outbox WHERE seq > (SELECT upto_seq FROM delivered)"),
            n("SELECT count(*) FROM dead_letters"),
            by,
            oldest,
        )
    };
    let check = |s: &Spool, what: &str| {
        let st = s.status().unwrap();
        let t = truth(s);
        assert_eq!(
            (
                st.depth,
                st.dead_letters,
                st.depth_by_account,
                st.oldest_spooled_ms
            ),
            t,
            "after {what}"
        );
        assert_eq!(s.depth().unwrap(), t.0);
    };
    let s = Spool::open(dir.path()).unwrap();
    check(&s, "open");
    let recs: Vec<_> = (0..10).map(|i| rec(&format!("r{i}"))).collect();
    s.enqueue_page("acme", &recs, Some(1)).unwrap();
    s.enqueue_page("beta", &recs[..3], None).unwrap();
    s.enqueue_page("acme", &recs, None).unwrap(); // duplicates only
    check(&s, "enqueue");
    let batch = s.read_batch(Destination::Hec, 5, usize::MAX).unwrap();
    s.settle(
        Destination::Hec,
        Some((batch[0].seq, batch[2].seq)),
        &[DeadLetter {
            seq: batch[3].seq,
            reason: "bad".into(),
            hec_code: Some(6),
        }],
    )
    .unwrap();
    check(&s, "settle with a dead letter");
    let invalid = NewRecord {
        invalid: Some("empty".into()),
        ..rec("inv")
    };
    s.enqueue_page("beta", &[invalid], None).unwrap();
    check(&s, "a locally invalid record");
    assert_eq!(s.requeue(None, None, &|_, e| e.to_vec()).unwrap().moved, 2);
    check(&s, "requeue");
    // Another process (`spool requeue` beside the service) writes through its own
    // connection: the counts follow, as they live in the database.
    let dl = s.read_batch(Destination::Hec, 1, usize::MAX).unwrap();
    s.settle(
        Destination::Hec,
        None,
        &[DeadLetter {
            seq: dl[0].seq,
            reason: "again".into(),
            hec_code: None,
        }],
    )
    .unwrap();
    check(&s, "another dead letter");
    let other = Spool::open_for_inspection(dir.path()).unwrap();
    let id = other.dead_letters().unwrap()[0].id;
    assert_eq!(
        other
            .requeue(None, Some(&[id, id]), &|_, e| e.to_vec())
            .unwrap()
            .moved,
        1
    );
    check(&s, "a write by another connection");
    drop(s);
    let s = Spool::open(dir.path()).unwrap();
    check(&s, "reopen");
    let all = s.read_batch(Destination::Hec, 1000, usize::MAX).unwrap();
    s.settle(
        Destination::Hec,
        Some((all[0].seq, all[all.len() - 1].seq)),
        &[],
    )
    .unwrap();
    check(&s, "draining everything");
    assert_eq!(s.status().unwrap().depth_by_account, vec![]);
}

#[test]
fn a_version_2_spool_gets_its_counts_from_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = Connection::open(dir.path().join("spool.db")).unwrap();
        conn.execute_batch(MIGRATIONS[0].1).unwrap();
        conn.execute_batch(MIGRATIONS[1].1).unwrap();
        conn.execute_batch(
            "PRAGMA user_version = 2;
             INSERT INTO outbox(account, record_id, event, spooled_at_ms) VALUES
                 ('acme', 'a', x'7b7d', 5), ('acme', 'b', x'7b7d', 6), ('beta', 'c', x'7b7d', 7);
             INSERT INTO dead_letters(account, record_id, event, reason, dead_at_ms)
                 VALUES ('acme', 'd', x'7b7d', 'bad', 1);",
        )
        .unwrap();
    }
    let s = Spool::open(dir.path()).unwrap();
    let st = s.status().unwrap();
    assert_eq!(
        (st.depth, st.dead_letters, st.oldest_spooled_ms),
        (3, 1, Some(5))
    );
    assert_eq!(
        st.depth_by_account,
        vec![("acme".to_string(), 2), ("beta".to_string(), 1)]
    );
}

#[test]
fn deleting_spool_lock_does_not_let_a_second_instance_in() {
    let dir = tempfile::tempdir().unwrap();
    let first = Spool::open(dir.path()).unwrap();
    std::fs::remove_file(dir.path().join(LOCK_FILE)).unwrap();
    assert_second_open_refused(dir.path(), first);
}

#[test]
fn a_deleted_spool_file_is_noticed_and_pauses_polling() {
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path()).unwrap();
    s.set_min_free_bytes(0);
    assert_eq!(s.room_to_poll(u64::MAX).unwrap(), None);
    assert!(s.file_problem().is_none());
    std::fs::remove_file(dir.path().join("spool.db")).unwrap();
    let p = s.file_problem().expect("noticed");
    assert!(p.contains("deleted"), "{p}");
    let no = s.room_to_poll(u64::MAX).unwrap().expect("polling paused");
    assert!(no.0.contains("deleted"), "{}", no.0);
    // The open file still serves delivery.
    s.enqueue_page("acme", &[rec("a")], None).unwrap();
    assert_eq!(ids(&s), ["a"]);
}

#[test]
fn the_delivery_reserve_is_real_blocks_and_polling_leaves_min_free_bytes() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path()).unwrap();
    let reserve = dir.path().join(RESERVE);
    let m = std::fs::metadata(&reserve).expect("reserve created at open");
    assert_eq!(m.len(), RESERVE_BYTES);
    assert!(
        m.blocks() * 512 >= RESERVE_BYTES,
        "not sparse: {} blocks",
        m.blocks()
    );
    s.set_min_free_bytes(u64::MAX / 4);
    let no = s.room_to_poll(u64::MAX).unwrap().expect("no room");
    assert!(no.0.contains("spool.min_free_bytes"), "{}", no.0);
    s.set_min_free_bytes(0);
    assert_eq!(s.room_to_poll(u64::MAX).unwrap(), None);
    assert!(s.release_reserve());
    assert!(!reserve.exists());
    // Re-created on the next check, as there is room again.
    assert_eq!(s.room_to_poll(u64::MAX).unwrap(), None);
    assert!(reserve.exists());
}

#[test]
fn without_a_readable_outbox_no_cursor_or_seen_id_is_carried_over() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("old.db");
    {
        let conn = Connection::open(&old).unwrap();
        conn.execute_batch(MIGRATIONS[0].1).unwrap();
        conn.execute_batch(
            "INSERT INTO cursors VALUES ('acme', 42, 1);
             INSERT INTO seen VALUES ('acme', 'gone', 1);
             DROP TABLE outbox;",
        )
        .unwrap();
    }
    let s = Spool::open(&dir.path().join("new")).unwrap();
    let salvaged = salvage(&s.conn(), &old);
    assert_eq!(
        &salvaged[..3],
        &[("outbox", None), ("cursors", None), ("seen", None)]
    );
    // The account re-polls from scratch, so the record whose outbox row was lost comes back.
    assert_eq!(s.cursor("acme").unwrap(), None);
    assert_eq!(
        s.enqueue_page("acme", &[rec("gone")], None)
            .unwrap()
            .inserted,
        1
    );
}

#[test]
fn a_torn_wal_tail_loses_only_the_uncommitted_transaction() {
    let live = tempfile::tempdir().unwrap();
    let s = Spool::open(live.path()).unwrap();
    s.enqueue_page("acme", &[rec("a"), rec("b")], Some(10))
        .unwrap();
    s.enqueue_page("acme", &[rec("c")], Some(20)).unwrap();
    // Snapshot the files while the process "runs" (as a crash would leave them)...
    let crashed = tempfile::tempdir().unwrap();
    for f in ["spool.db", "spool.db-wal"] {
        std::fs::copy(live.path().join(f), crashed.path().join(f)).unwrap();
    }
    // ...and tear the last transaction's frames: its commit never reached the disk.
    let wal = crashed.path().join("spool.db-wal");
    let len = std::fs::metadata(&wal).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&wal)
        .unwrap()
        .set_len(len - 100)
        .unwrap();
    let s2 = Spool::open(crashed.path()).unwrap();
    assert!(
        s2.recovery().is_none(),
        "a torn tail is normal crash recovery, not damage"
    );
    assert_eq!(ids(&s2), ["a", "b"]);
    assert_eq!(
        s2.cursor("acme").unwrap(),
        Some(10),
        "cursor and records agree"
    );
}

#[test]
fn a_version_1_spool_is_migrated_with_its_contents() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = Connection::open(dir.path().join("spool.db")).unwrap();
        conn.execute_batch(MIGRATIONS[0].1).unwrap();
        conn.execute_batch(
            "PRAGMA user_version = 1;
             INSERT INTO outbox(account, record_id, event, spooled_at_ms) VALUES ('acme', 'old', x'7b7d', 1);
             INSERT INTO seen VALUES ('acme', 'old', 1);
             INSERT INTO cursors VALUES ('acme', 42, 1);",
        )
        .unwrap();
    }
    let s = Spool::open(dir.path()).unwrap();
    let v: i64 = s
        .conn()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    assert_eq!(ids(&s), ["old"]);
    assert_eq!(s.cursor("acme").unwrap(), Some(42));
    assert_eq!(
        s.status().unwrap().depth_by_account,
        vec![("acme".to_string(), 1)]
    );
    // Re-polled, the record comes with the event time v1 stored for it: still a duplicate.
    let old = NewRecord {
        event_time_ms: 1,
        ..rec("old")
    };
    assert_eq!(s.enqueue_page("acme", &[old], None).unwrap().inserted, 0);
}

#[test]
fn a_spool_from_a_newer_version_is_refused_not_touched() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = Connection::open(dir.path().join("spool.db")).unwrap();
        conn.execute_batch("PRAGMA user_version = 99;").unwrap();
    }
    let e = Spool::open(dir.path()).err().unwrap();
    assert!(
        matches!(e, SpoolError::NewerSchema { found: 99, .. }),
        "{e}"
    );
    assert!(
        !std::fs::read_dir(dir.path()).unwrap().any(|f| f
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("damaged"))
    );
}

#[test]
fn a_stale_lock_file_from_a_killed_process_does_not_block() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("spool.lock"), "999999\n").unwrap();
    Spool::open(dir.path()).expect("only a held lock blocks");
}

#[test]
fn inspection_works_beside_a_running_instance() {
    let dir = tempfile::tempdir().unwrap();
    let running = Spool::open(dir.path()).unwrap();
    running
        .enqueue_page("acme", &[rec("a"), rec("b")], None)
        .unwrap();
    let batch = running.read_batch(Destination::Hec, 1, usize::MAX).unwrap();
    running
        .settle(
            Destination::Hec,
            None,
            &[DeadLetter {
                seq: batch[0].seq,
                reason: "code 7".into(),
                hec_code: Some(7),
            }],
        )
        .unwrap();
    let inspect = Spool::open_for_inspection(dir.path()).unwrap();
    assert_eq!(inspect.status().unwrap().depth, 1);
    let dead = inspect.dead_letters().unwrap();
    assert_eq!(dead[0].record_id, "a");
    let keep = |_: &str, e: &[u8]| e.to_vec();
    assert_eq!(
        inspect
            .requeue(None, Some(&[dead[0].id + 1]), &keep)
            .unwrap(),
        Requeued {
            moved: 0,
            missing: vec![dead[0].id + 1]
        },
        "an unknown id moves nothing"
    );
    assert_eq!(
        inspect
            .requeue(None, Some(&[dead[0].id]), &keep)
            .unwrap()
            .moved,
        1
    );
    assert_eq!(
        ids(&running),
        ["b", "a"],
        "the running instance sees the requeued event"
    );
    assert!(running.dead_letters().unwrap().is_empty());
    let missing = tempfile::tempdir().unwrap();
    assert!(matches!(
        Spool::open_for_inspection(missing.path()),
        Err(SpoolError::Missing(_))
    ));
}

#[test]
fn a_full_disk_fails_the_page_and_leaves_cursor_and_records_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path()).unwrap();
    s.enqueue_page("acme", &[rec("a")], Some(5)).unwrap();
    let pages: i64 = s
        .conn()
        .query_row("PRAGMA page_count", [], |r| r.get(0))
        .unwrap();
    s.set_max_page_count(pages as u64).unwrap();
    let big: Vec<_> = (0..200)
        .map(|i| NewRecord {
            invalid: None,
            event_time_ms: 0,
            record_id: format!("big{i}"),
            event: vec![b'x'; 2000],
        })
        .collect();
    let e = s.enqueue_page("acme", &big, Some(6)).unwrap_err();
    assert!(e.to_string().contains("full"), "{e}");
    assert_eq!(s.cursor("acme").unwrap(), Some(5));
    assert_eq!(ids(&s), ["a"]);
    s.set_max_page_count(1 << 30).unwrap();
    assert_eq!(
        s.enqueue_page("acme", &big, Some(6)).unwrap().inserted,
        200,
        "recovers when space returns"
    );
}

#[test]
fn an_event_that_fails_local_validation_goes_straight_to_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path()).unwrap();
    let bad = NewRecord {
        invalid: Some("`event` is null or empty (HEC code 13)".into()),
        ..rec("bad")
    };
    let e = s
        .enqueue_page("acme", &[rec("a"), bad.clone()], Some(7))
        .unwrap();
    assert_eq!((e.inserted, e.dead_lettered), (1, 1));
    assert_eq!(ids(&s), ["a"], "never in the outbox");
    let dead = s.dead_letters().unwrap();
    assert_eq!(dead[0].record_id, "bad");
    assert!(dead[0].reason.contains("code 13"), "{}", dead[0].reason);
    // Seen like any other: a re-poll does not dead-letter it twice.
    assert_eq!(s.enqueue_page("acme", &[bad], None).unwrap().duplicates, 1);
    assert_eq!(s.dead_letters().unwrap().len(), 1);
}

/// Rows physically in the outbox, hidden or not.
fn stored(s: &Spool) -> i64 {
    s.conn()
        .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
        .unwrap()
}

fn upto(s: &Spool) -> i64 {
    delivered_upto(&s.conn(), Destination::Hec).unwrap()
}

#[test]
fn a_settle_moves_the_marker_and_settled_rows_vanish_for_readers_before_they_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path()).unwrap();
    let recs: Vec<_> = (0..10).map(|i| rec(&format!("r{i}"))).collect();
    s.enqueue_page("acme", &recs, None).unwrap();
    let batch = s.read_batch(Destination::Hec, 4, 1 << 20).unwrap();
    s.settle(Destination::Hec, Some((batch[0].seq, batch[3].seq)), &[])
        .unwrap();
    assert_eq!(upto(&s), batch[3].seq, "one marker update");
    assert_eq!(stored(&s), 10, "the settle itself deletes nothing");
    assert_eq!(ids(&s), ["r4", "r5", "r6", "r7", "r8", "r9"]);
    assert!(
        s.read_range(Destination::Hec, batch[0].seq, batch[3].seq)
            .unwrap()
            .is_empty()
    );
    let st = s.status().unwrap();
    assert_eq!(st.depth, 6);
    assert_eq!(st.depth_by_account, vec![("acme".to_string(), 6)]);
    // Settling the same range again (a late ack for a resent copy) changes nothing.
    s.settle(Destination::Hec, Some((batch[0].seq, batch[3].seq)), &[])
        .unwrap();
    assert_eq!(s.depth().unwrap(), 6);
    // The purge deletes the hidden rows in chunks, and only those.
    assert_eq!(s.purge_delivered(3).unwrap(), 3);
    assert_eq!(s.purge_delivered(3).unwrap(), 1);
    assert_eq!(s.purge_delivered(3).unwrap(), 0);
    assert_eq!(stored(&s), 6);
    assert_eq!(ids(&s), ["r4", "r5", "r6", "r7", "r8", "r9"]);
    assert_eq!(s.depth().unwrap(), 6);
}

#[test]
fn a_batch_settled_before_an_older_one_is_deleted_and_the_marker_hides_nothing_waiting() {
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path()).unwrap();
    let recs: Vec<_> = (0..10).map(|i| rec(&format!("r{i}"))).collect();
    s.enqueue_page("acme", &recs, None).unwrap();
    let all = s.read_batch(Destination::Hec, 10, 1 << 20).unwrap();
    // With acks, the second batch can be confirmed first.
    s.settle(Destination::Hec, Some((all[5].seq, all[9].seq)), &[])
        .unwrap();
    assert_eq!(
        upto(&s),
        0,
        "r0..r4 still wait: the marker must not pass them"
    );
    assert_eq!(ids(&s), ["r0", "r1", "r2", "r3", "r4"]);
    assert_eq!(s.depth().unwrap(), 5);
    s.settle(Destination::Hec, Some((all[0].seq, all[4].seq)), &[])
        .unwrap();
    assert_eq!(upto(&s), all[4].seq);
    assert!(ids(&s).is_empty());
    assert_eq!(s.depth().unwrap(), 0);
    // New records come after the marker (AUTOINCREMENT never reuses a seq).
    s.enqueue_page("acme", &[rec("new")], None).unwrap();
    assert_eq!(ids(&s), ["new"]);
}

#[test]
fn a_400_settles_the_head_dead_letters_one_event_and_keeps_the_rest_visible() {
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path()).unwrap();
    let recs: Vec<_> = (0..6).map(|i| rec(&format!("r{i}"))).collect();
    s.enqueue_page("acme", &recs, None).unwrap();
    let all = s.read_batch(Destination::Hec, 6, 1 << 20).unwrap();
    let dead = DeadLetter {
        seq: all[2].seq,
        reason: "bad".into(),
        hec_code: Some(6),
    };
    s.settle(Destination::Hec, Some((all[0].seq, all[1].seq)), &[dead])
        .unwrap();
    assert_eq!(ids(&s), ["r3", "r4", "r5"]);
    assert_eq!(s.dead_letters().unwrap()[0].record_id, "r2");
    let st = s.status().unwrap();
    assert_eq!((st.depth, st.dead_letters), (3, 1));
    // The rest settles by the marker across the dead letter's gap.
    s.settle(Destination::Hec, Some((all[3].seq, all[5].seq)), &[])
        .unwrap();
    assert_eq!(upto(&s), all[5].seq);
    assert_eq!(s.depth().unwrap(), 0);
    assert_eq!(s.dead_letters().unwrap().len(), 1, "the dead letter stays");
}

#[test]
fn a_crash_between_the_marker_and_the_purge_resends_nothing_and_loses_nothing() {
    let live = tempfile::tempdir().unwrap();
    let s = Spool::open(live.path()).unwrap();
    let recs: Vec<_> = (0..10).map(|i| rec(&format!("r{i}"))).collect();
    s.enqueue_page("acme", &recs, Some(7)).unwrap();
    let batch = s.read_batch(Destination::Hec, 6, 1 << 20).unwrap();
    s.settle(Destination::Hec, Some((batch[0].seq, batch[5].seq)), &[])
        .unwrap();
    assert_eq!(stored(&s), 10, "the purge has not run");
    // The files as a SIGKILL right after the marker's commit leaves them.
    let crashed = tempfile::tempdir().unwrap();
    for f in ["spool.db", "spool.db-wal"] {
        std::fs::copy(live.path().join(f), crashed.path().join(f)).unwrap();
    }
    let s2 = Spool::open(crashed.path()).unwrap();
    assert_eq!(
        ids(&s2),
        ["r6", "r7", "r8", "r9"],
        "nothing resent, nothing lost"
    );
    assert_eq!(s2.depth().unwrap(), 4);
    assert_eq!(s2.cursor("acme").unwrap(), Some(7));
    // The next start's purge finishes the deletes.
    while s2.purge_delivered(4).unwrap() > 0 {}
    assert_eq!(stored(&s2), 4);
    assert_eq!(ids(&s2), ["r6", "r7", "r8", "r9"]);
    assert_eq!(s2.depth().unwrap(), 4);
}

#[test]
fn recovery_does_not_bring_back_delivered_rows_the_marker_hides() {
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path()).unwrap();
    let recs: Vec<_> = (0..8).map(|i| rec(&format!("r{i}"))).collect();
    s.enqueue_page("acme", &recs, None).unwrap();
    let batch = s.read_batch(Destination::Hec, 5, 1 << 20).unwrap();
    s.settle(Destination::Hec, Some((batch[0].seq, batch[4].seq)), &[])
        .unwrap();
    s.recover_in_place("test".into()).unwrap();
    assert_eq!(ids(&s), ["r5", "r6", "r7"]);
    assert_eq!(s.depth().unwrap(), 3);
    assert_eq!(stored(&s), 3);
}

#[test]
fn a_version_3_spool_is_migrated_to_the_marker_and_keeps_its_outbox() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = Connection::open(dir.path().join("spool.db")).unwrap();
        for (_, sql) in &MIGRATIONS[..3] {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute_batch(
            "INSERT INTO outbox(account, record_id, event, spooled_at_ms) VALUES
                 ('acme', 'a', x'7b7d', 1), ('acme', 'b', x'7b7d', 2), ('beta', 'c', x'7b7d', 3);
             DELETE FROM outbox WHERE record_id = 'a';",
        )
        .unwrap();
        conn.execute_batch(RECOUNT_TALLIES).unwrap();
        conn.execute_batch("PRAGMA user_version = 3").unwrap();
    }
    let s = Spool::open(dir.path()).unwrap();
    let v: i64 = s
        .conn()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    assert_eq!(upto(&s), 0);
    assert_eq!(ids(&s), ["b", "c"]);
    assert_eq!(s.depth().unwrap(), 2);
    let batch = s.read_batch(Destination::Hec, 1, 1 << 20).unwrap();
    s.settle(Destination::Hec, Some((batch[0].seq, batch[0].seq)), &[])
        .unwrap();
    assert_eq!(ids(&s), ["c"]);
    assert_eq!(
        s.status().unwrap().depth_by_account,
        vec![("beta".to_string(), 1)]
    );
}

/// Threads of this process named `name` (other tests run threads in the same process).
fn threads(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .filter(|comm| comm.trim_end() == name)
        .count()
}

#[test]
fn five_hundred_concurrent_runs_use_a_handful_of_threads() {
    // Every thread of this runtime, workers and blocking pool, carries this name.
    const NAME: &str = "spool-500";
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(NAME)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path()).unwrap();
    let before = threads(NAME);
    let most = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    rt.block_on(async {
        let mut tasks = Vec::new();
        for i in 0..500 {
            let (s, most) = (s.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                s.run(move |s| {
                    // Slow enough that the calls pile up.
                    std::thread::sleep(Duration::from_micros(200));
                    most.fetch_max(threads(NAME), std::sync::atomic::Ordering::Relaxed);
                    s.enqueue_page("acme", &[rec(&format!("r{i}"))], None)
                })
                .await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap().inserted, 1);
        }
    });
    let most = most.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        most <= before + 4,
        "{most} threads during 500 concurrent calls, {before} before"
    );
    assert_eq!(s.depth().unwrap(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_keeps_order_survives_a_panic_and_a_nested_run_does_not_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path()).unwrap();
    let order = Arc::new(Mutex::new(Vec::new()));
    let calls: Vec<_> = (0..50)
        .map(|i| {
            let order = order.clone();
            s.run(move |_| order.lock().unwrap().push(i))
        })
        .collect();
    for c in calls {
        c.await;
    }
    assert_eq!(*order.lock().unwrap(), (0..50).collect::<Vec<_>>());
    let panicked = tokio::spawn({
        let s = s.clone();
        async move { s.run(|_| -> () { panic!("boom in a spool job") }).await }
    })
    .await
    .expect_err("the panic reaches the caller");
    assert!(panicked.is_panic());
    // The writer survives it, and a closure that runs `run` again (blocking on it) is served
    // inline instead of waiting for itself.
    let handle = tokio::runtime::Handle::current();
    let nested = s
        .run(move |s| {
            let s = s.clone();
            handle.block_on(async move { s.run(|s| s.depth()).await })
        })
        .await
        .unwrap();
    assert_eq!(nested, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_purge_settled_rows_between_jobs_and_the_directory_is_free_once_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path()).unwrap();
    let recs: Vec<_> = (0..2500).map(|i| rec(&format!("r{i}"))).collect();
    s.enqueue_page("acme", &recs, None).unwrap();
    let batch = s
        .run(|s| s.read_batch(Destination::Hec, 2500, usize::MAX))
        .await
        .unwrap();
    let (first, last) = (batch[0].seq, batch[2499].seq);
    s.run(move |s| s.settle(Destination::Hec, Some((first, last)), &[]))
        .await
        .unwrap();
    // The purge runs between jobs, a chunk at a time.
    for _ in 0..10_000 {
        if stored(&s) == 0 {
            break;
        }
        s.run(|_| ()).await;
    }
    assert_eq!(stored(&s), 0);
    drop(s);
    Spool::open(dir.path()).expect("the writer thread holds no lock");
}

#[test]
fn the_background_check_waits_until_the_backlog_is_drained() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = Spool::open(dir.path()).unwrap();
        let recs: Vec<_> = (0..3).map(|i| rec(&format!("r{i}"))).collect();
        s.enqueue_page("acme", &recs, None).unwrap();
    }
    // A clean start: the check runs in the background, once nothing waits.
    let s = Spool::open(dir.path()).unwrap();
    let gate = s.inner.check_gate.clone();
    let wait_for = |done: &dyn Fn(CheckState) -> bool| {
        let mut state = gate.lock();
        while !done(*state) {
            let (next, timeout) = gate
                .wake
                .wait_timeout(state, Duration::from_secs(30))
                .unwrap();
            assert!(!timeout.timed_out(), "stuck at {:?}", *next);
            state = next;
        }
        *state
    };
    // It looked, found events waiting, and went back to sleep without checking.
    let state = wait_for(&|s| !matches!(s, CheckState::Waiting { seen_backlog: 0 }));
    assert!(
        matches!(state, CheckState::Waiting { .. }),
        "checked with a backlog: {state:?}"
    );
    let batch = s.read_batch(Destination::Hec, 3, 1 << 20).unwrap();
    s.settle(Destination::Hec, Some((batch[0].seq, batch[1].seq)), &[])
        .unwrap();
    let state = wait_for(&|s| matches!(s, CheckState::Waiting { seen_backlog: n } if n >= 2));
    assert!(matches!(state, CheckState::Waiting { .. }), "{state:?}");
    // The last settle drains it: the check runs and finds nothing wrong.
    s.settle(Destination::Hec, Some((batch[2].seq, batch[2].seq)), &[])
        .unwrap();
    assert_eq!(wait_for(&|s| s == CheckState::Done), CheckState::Done);
    assert!(s.integrity_problem().is_none());
}

#[test]
fn a_damaged_version_4_spool_is_salvaged_with_its_accounts_covered_from_their_oldest_record() {
    let dir = tempfile::tempdir().unwrap();
    let index_page = {
        let conn = Connection::open(dir.path().join("spool.db")).unwrap();
        for (_, sql) in &MIGRATIONS[..4] {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute_batch(
            "INSERT INTO seen VALUES ('acme', 5000, 'a', 1), ('acme', 9000, 'b', 1);
             INSERT INTO cursors VALUES ('acme', 20000, 1);
             PRAGMA user_version = 4;",
        )
        .unwrap();
        conn.query_row(
            "SELECT rootpage FROM sqlite_master WHERE name = 'tallies'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap() as usize
    };
    // Damage the running counts (salvage recomputes them, so every row comes over). No
    // clean-stop marker: the start checks first and salvages the v4 file into a new spool.
    scribble_over_page(&dir.path().join("spool.db"), index_page);
    let s = Spool::open(dir.path()).unwrap();
    assert!(s.recovery().is_some(), "the damage was found and salvaged");
    assert_eq!(s.cursor("acme").unwrap(), Some(20000));
    let state = s.reconcile_state("acme", 0, i64::MAX).unwrap();
    assert_eq!(state.since_ms, Some(5000), "covered from its oldest record");
}

#[test]
fn the_ledger_and_results_are_kept_as_long_as_record_ids_and_no_longer() {
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path()).unwrap();
    let now = crate::time::now_ms();
    let keep = SEEN_RETENTION.as_millis() as i64;
    // Written just past and just within the 181 days, beside a record id seen as long ago.
    for (id, at) in [
        ("old", now - keep - 60_000),
        ("recent", now - keep + 3_600_000),
    ] {
        s.conn()
            .execute_batch(&format!(
                "INSERT INTO ledger VALUES ('acme', {at}, 'live', {at}, {at}, 1, 1, 1, 1, 0, 1);
                 INSERT INTO reconciliations VALUES ('acme', {at}, {at} + 1, 1, 1, 'complete', NULL, NULL, {at});
                 INSERT INTO seen VALUES ('acme', {at}, '{id}', {at});"
            ))
            .unwrap();
    }
    // A live window's page prunes all three alike.
    s.enqueue_page("acme", &[rec("new")], Some(now)).unwrap();
    let count = |table: &str| -> i64 {
        s.conn()
            .query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(count("reconciliations"), 1);
    assert_eq!(count("ledger"), 1);
    let kept: Vec<String> = s
        .conn()
        .prepare("SELECT record_id FROM seen ORDER BY record_id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(kept, ["new", "recent"]);
}

#[test]
fn a_version_4_spool_gains_the_ledger_and_its_accounts_are_covered_from_their_oldest_record() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = Connection::open(dir.path().join("spool.db")).unwrap();
        for (_, sql) in &MIGRATIONS[..4] {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute_batch(
            "INSERT INTO seen VALUES ('acme', 0, 'no-time', 1), ('acme', 5000, 'a', 1),
                 ('acme', 9000, 'b', 1), ('beta', 7000, 'c', 1);
             INSERT INTO cursors VALUES ('acme', 20000, 1), ('beta', 30000, 1), ('gamma', 40000, 1);
             PRAGMA user_version = 4;",
        )
        .unwrap();
    }
    let s = Spool::open(dir.path()).unwrap();
    let v: i64 = s
        .conn()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    let since = |a: &str| s.reconcile_state(a, 0, i64::MAX).unwrap().since_ms;
    assert_eq!(since("acme"), Some(5000), "its oldest record with a time");
    assert_eq!(since("beta"), Some(7000));
    assert_eq!(since("gamma"), Some(40000), "no record: its cursor");
    assert_eq!(since("new"), None, "unknown until its first live window");
    assert_eq!(s.forwarded_count("acme", 5000, 9000).unwrap(), 2);
    assert_eq!(s.forwarded_count("acme", 5001, 9000).unwrap(), 1);
    // The ledger fills from the next window on, and a live window starts coverage only once.
    let w = crate::spool::LedgerEntry {
        kind: crate::spool::WindowKind::Live,
        from_ms: 100,
        to_ms: 200,
        total_found: Some(1),
        pages: 1,
        records: 1,
        inserted: 0,
        duplicates: 0,
    };
    s.enqueue_window_page("new", &[rec("n1")], Some(200), Some(&w))
        .unwrap();
    s.enqueue_window_page(
        "new",
        &[rec("n1")],
        Some(300),
        Some(&LedgerEntry {
            from_ms: 150,
            to_ms: 300,
            ..w
        }),
    )
    .unwrap();
    assert_eq!(since("new"), Some(100));
    // Live windows that bring nothing new continue one row; a backfill gets its own.
    std::thread::sleep(Duration::from_millis(2));
    let quiet = LedgerEntry {
        from_ms: 250,
        to_ms: 400,
        total_found: Some(3),
        pages: 2,
        records: 3,
        ..w
    };
    s.enqueue_window_page("new", &[], Some(400), Some(&quiet))
        .unwrap();
    std::thread::sleep(Duration::from_millis(2));
    let backfill = LedgerEntry {
        kind: crate::spool::WindowKind::Backfill,
        from_ms: 0,
        to_ms: 50,
        ..quiet
    };
    s.enqueue_window_page("new", &[], None, Some(&backfill))
        .unwrap();
    drop(s);
    let r = crate::spool::reader::Reader::open(dir.path()).unwrap();
    let rows = r.ledger(Some("new"), 0).unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert_eq!((rows[0].kind.as_str(), rows[0].from_ms), ("backfill", 0));
    assert_eq!(
        (rows[1].inserted, rows[1].duplicates, rows[1].windows),
        (1, 0, 1)
    );
    let stretch = &rows[2];
    assert_eq!(
        (stretch.inserted, stretch.duplicates),
        (0, 1),
        "the page's own counts are added"
    );
    assert_eq!(
        (stretch.from_ms, stretch.to_ms, stretch.windows),
        (150, 400, 2),
        "{stretch:?}"
    );
    assert_eq!(
        (stretch.pages, stretch.records, stretch.total_found),
        (3, 4, Some(3))
    );
    assert!(r.ledger(Some("acme"), 0).unwrap().is_empty());
}

/// An internal event (heartbeat, reconciliation) goes through the outbox like a record, but
/// touches neither `seen` nor the cursors, is delivered as stored (sourcetype kept) and keeps
/// its sourcetype when dead-lettered and requeued under the current settings.
#[test]
fn internal_events_are_spooled_without_dedup_or_cursor_and_keep_their_sourcetype() {
    use crate::config::{Config, LoadEnv};
    use crate::transform::{HEARTBEAT_SOURCETYPE, Transformer, internal_event};
    let c = Config::from_toml_str(
        r#"
        [[accounts]]
        name = "acme"
        client_id = "c"
        client_secret = "s"
        jwt = "j"
        [hec]
        url = "https://h:8088"
        token = "t"
        [[hec.routes]]
        action_id = "*"
        sourcetype = "rc:routed"
        "#,
        &LoadEnv::default(),
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path()).unwrap();
    let body = serde_json::json!({"id": "same", "kind": "heartbeat"});
    let hb = internal_event(
        &c.envelope_settings(),
        None,
        HEARTBEAT_SOURCETYPE,
        1_000,
        &body,
    );
    // Twice with one id: both go (no dedup), and no record id is remembered.
    s.enqueue_internal(INTERNAL_ACCOUNT, "heartbeat:1000", hb.clone())
        .unwrap();
    s.enqueue_internal(INTERNAL_ACCOUNT, "heartbeat:1000", hb.clone())
        .unwrap();
    let seen: i64 = s
        .conn()
        .query_row("SELECT count(*) FROM seen", [], |r| r.get(0))
        .unwrap();
    assert_eq!(seen, 0, "internal events are not records");
    assert_eq!(s.cursor(INTERNAL_ACCOUNT).unwrap(), None);
    let st = s.status().unwrap();
    assert_eq!(st.depth, 2);
    assert_eq!(st.depth_by_account, vec![(INTERNAL_ACCOUNT.to_string(), 2)]);
    assert!(st.cursors.is_empty());
    // A record with the same id is still new.
    assert_eq!(
        s.enqueue_page("acme", &[rec("same")], None)
            .unwrap()
            .inserted,
        1
    );

    let batch = s.read_batch(Destination::Hec, 10, 1 << 20).unwrap();
    assert_eq!(batch.len(), 3);
    assert_eq!(batch[0].event, hb, "delivered as stored");
    // The first is accepted, the second refused and requeued through the renderer.
    s.settle(
        Destination::Hec,
        Some((batch[0].seq, batch[0].seq)),
        &[DeadLetter {
            seq: batch[1].seq,
            reason: "incorrect index".into(),
            hec_code: Some(7),
        }],
    )
    .unwrap();
    let fallback = Transformer::for_account(&c.envelope_settings(), INTERNAL_ACCOUNT, None, None);
    let moved = s
        .requeue(None, None, &|_, stored| fallback.rerender(stored).unwrap())
        .unwrap();
    assert_eq!(moved.moved, 1);
    let again = s
        .read_batch_after(Destination::Hec, batch[2].seq, 10, 1 << 20)
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].account, INTERNAL_ACCOUNT);
    let doc: serde_json::Value = serde_json::from_slice(&again[0].event).unwrap();
    assert_eq!(doc["sourcetype"], HEARTBEAT_SOURCETYPE, "{doc}");
    assert_eq!(doc["event"], body);
}

// ---- One outbox per destination (schema v6) ----

const BOTH: [Destination; 2] = [Destination::Hec, Destination::DynamoDb];

/// Record ids waiting for `d`, in `seq` order.
fn ids_of(s: &Spool, d: Destination) -> Vec<String> {
    s.read_batch(d, 1000, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| r.record_id)
        .collect()
}

/// `(depth, dead letters)` of `d` from [`Spool::status`] (the running counts), checked
/// against a count of the rows themselves.
fn counts_of(s: &Spool, d: Destination) -> (u64, u64) {
    let st = s.status().unwrap();
    let mine = st
        .destinations
        .iter()
        .find(|x| x.destination == d)
        .expect("every destination has a status")
        .clone();
    let conn = s.conn();
    let n = |q: &str| {
        conn.query_row(&sql(d, q), [], |r| r.get::<_, i64>(0))
            .unwrap() as u64
    };
    let truth = (
        n("SELECT count(*) FROM {outbox} WHERE seq > (SELECT upto_seq FROM {delivered})"),
        n("SELECT count(*) FROM dead_letters WHERE destination = '{destination}'"),
    );
    assert_eq!(
        (mine.depth, mine.dead_letters),
        truth,
        "{d}: tallies drifted"
    );
    truth
}

/// A v5 spool (as the previous release wrote it: HEC's outbox with a moved marker, a dead
/// letter, tallies) migrates to v6 with every row HEC's and nothing copied.
#[test]
fn a_version_5_spool_keeps_its_rows_marker_and_dead_letters_as_hecs() {
    let dir = tempfile::tempdir().unwrap();
    {
        let conn = Connection::open(dir.path().join("spool.db")).unwrap();
        for (_, sql) in &MIGRATIONS[..5] {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute_batch(
            "INSERT INTO outbox(account, record_id, event, spooled_at_ms) VALUES
                 ('acme', 'a', x'7b7d', 1), ('acme', 'b', x'7b7d', 2),
                 ('acme', 'c', x'7b7d', 3), ('beta', 'd', x'7b7d', 4);
             UPDATE delivered SET upto_seq = 2 WHERE id = 1;
             INSERT INTO dead_letters(account, record_id, event, reason, hec_code, dead_at_ms)
                 VALUES ('acme', 'x', x'7b7d', 'Invalid data format', 6, 5);
             DELETE FROM tallies;
             INSERT INTO tallies VALUES ('outbox', 'acme', 1), ('outbox', 'beta', 1), ('dead', '', 1);
             PRAGMA user_version = 5;",
        )
        .unwrap();
    }
    let s = Spool::open(dir.path()).unwrap();
    let v: i64 = s
        .conn()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, SCHEMA_VERSION);
    assert_eq!(upto(&s), 2, "HEC's marker is kept");
    assert_eq!(ids_of(&s, Destination::Hec), ["c", "d"]);
    assert!(ids_of(&s, Destination::DynamoDb).is_empty());
    assert_eq!(counts_of(&s, Destination::Hec), (2, 1));
    assert_eq!(counts_of(&s, Destination::DynamoDb), (0, 0));
    let dead = s.dead_letters().unwrap();
    assert_eq!(
        (dead[0].record_id.as_str(), dead[0].destination),
        ("x", Destination::Hec)
    );
    let st = s.status().unwrap();
    assert_eq!((st.depth, st.dead_letters), (2, 1));
    // The migrated spool takes a second destination: new records go to both, the old rows
    // stay HEC's alone.
    s.set_destinations(&BOTH);
    s.enqueue_page("acme", &[rec("e")], None).unwrap();
    assert_eq!(ids_of(&s, Destination::Hec), ["c", "d", "e"]);
    assert_eq!(ids_of(&s, Destination::DynamoDb), ["e"]);
    assert_eq!(
        s.status().unwrap().depth,
        4,
        "the total counts both deliveries"
    );
}

/// One transaction per page: each new record gets a row in every configured destination's
/// outbox (the same event bytes), and a failure in either outbox rolls all of it back.
#[test]
fn a_record_is_enqueued_once_per_destination_in_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path()).unwrap();
    assert_eq!(s.destinations(), [Destination::Hec], "HEC until told");
    s.set_destinations(&[Destination::DynamoDb, Destination::Hec]);
    assert_eq!(s.destinations(), BOTH);
    let done = s
        .enqueue_page("acme", &[rec("a"), rec("b"), rec("a")], Some(1))
        .unwrap();
    assert_eq!(
        (done.inserted, done.duplicates),
        (2, 1),
        "counted per record"
    );
    let hec = s.read_batch(Destination::Hec, 10, usize::MAX).unwrap();
    let ddb = s.read_batch(Destination::DynamoDb, 10, usize::MAX).unwrap();
    assert_eq!(ids_of(&s, Destination::Hec), ["a", "b"]);
    assert_eq!(ids_of(&s, Destination::DynamoDb), ["a", "b"]);
    assert_eq!(hec[1].event, ddb[1].event, "the same envelope for both");
    assert_eq!(counts_of(&s, Destination::Hec), (2, 0));
    assert_eq!(counts_of(&s, Destination::DynamoDb), (2, 0));
    // DynamoDB's outbox fails after HEC's row and `seen` went in: nothing of the page stays.
    s.conn()
        .execute_batch(
            "CREATE TRIGGER boom BEFORE INSERT ON outbox_dynamodb WHEN NEW.record_id = 'bad'
             BEGIN SELECT RAISE(ABORT, 'disk full (simulated)'); END;",
        )
        .unwrap();
    assert!(
        s.enqueue_page("acme", &[rec("c"), rec("bad")], Some(2))
            .is_err()
    );
    assert_eq!(s.cursor("acme").unwrap(), Some(1), "cursor must not move");
    assert_eq!(
        ids_of(&s, Destination::Hec),
        ["a", "b"],
        "HEC's rows rolled back"
    );
    assert_eq!(ids_of(&s, Destination::DynamoDb), ["a", "b"]);
    assert_eq!(counts_of(&s, Destination::Hec), (2, 0));
    s.conn().execute_batch("DROP TRIGGER boom").unwrap();
    // The ids were not remembered: the retry enqueues them for both.
    let retry = s
        .enqueue_page("acme", &[rec("c"), rec("bad")], Some(2))
        .unwrap();
    assert_eq!(retry.inserted, 2);
    assert_eq!(ids_of(&s, Destination::DynamoDb), ["a", "b", "c", "bad"]);
    assert_eq!(ids_of(&s, Destination::Hec), ["a", "b", "c", "bad"]);
    // DynamoDB alone: HEC's outbox gets nothing new.
    s.set_destinations(&[Destination::DynamoDb]);
    s.enqueue_page("acme", &[rec("d")], None).unwrap();
    assert_eq!(counts_of(&s, Destination::Hec), (4, 0));
    assert_eq!(counts_of(&s, Destination::DynamoDb), (5, 0));
}

/// Settling one destination (marker, deletes, dead letters, purge) leaves the other's rows,
/// depth and marker as they were.
#[test]
fn settling_one_destination_leaves_the_others_rows_and_depth() {
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path()).unwrap();
    s.set_destinations(&BOTH);
    let recs: Vec<_> = (0..6).map(|i| rec(&format!("r{i}"))).collect();
    s.enqueue_page("acme", &recs, None).unwrap();
    let hec = s.read_batch(Destination::Hec, 4, usize::MAX).unwrap();
    s.settle(
        Destination::Hec,
        Some((hec[0].seq, hec[2].seq)),
        &[DeadLetter {
            seq: hec[3].seq,
            reason: "bad".into(),
            hec_code: Some(6),
        }],
    )
    .unwrap();
    assert_eq!(ids_of(&s, Destination::Hec), ["r4", "r5"]);
    assert_eq!(counts_of(&s, Destination::Hec), (2, 1));
    assert_eq!(ids_of(&s, Destination::DynamoDb), recs_ids(6));
    assert_eq!(counts_of(&s, Destination::DynamoDb), (6, 0));
    // The purge deletes HEC's settled rows only.
    while s.purge_delivered(2).unwrap() > 0 {}
    assert_eq!(stored(&s), 2);
    assert_eq!(ids_of(&s, Destination::DynamoDb), recs_ids(6));
    // DynamoDB settles its own head (its own seq numbers); HEC's rows and marker stay.
    let ddb = s.read_batch(Destination::DynamoDb, 2, usize::MAX).unwrap();
    let hec_upto = upto(&s);
    s.settle(Destination::DynamoDb, Some((ddb[0].seq, ddb[1].seq)), &[])
        .unwrap();
    assert_eq!(upto(&s), hec_upto);
    assert_eq!(
        delivered_upto(&s.conn(), Destination::DynamoDb).unwrap(),
        ddb[1].seq
    );
    assert_eq!(ids_of(&s, Destination::Hec), ["r4", "r5"]);
    assert_eq!(ids_of(&s, Destination::DynamoDb), ["r2", "r3", "r4", "r5"]);
    assert_eq!(
        s.read_range(Destination::DynamoDb, ddb[0].seq, ddb[1].seq + 1)
            .unwrap()
            .len(),
        1,
        "settled rows are gone from its ranges"
    );
    while s.purge_delivered(1000).unwrap() > 0 {}
    let physical: i64 = s
        .conn()
        .query_row("SELECT count(*) FROM outbox_dynamodb", [], |r| r.get(0))
        .unwrap();
    assert_eq!(physical, 4, "DynamoDB's settled rows purged too");
    assert_eq!(counts_of(&s, Destination::DynamoDb), (4, 0));
    assert_eq!(counts_of(&s, Destination::Hec), (2, 1));
    let st = s.status().unwrap();
    assert_eq!((st.depth, st.dead_letters), (6, 1));
    assert_eq!(st.depth_by_account, vec![("acme".to_string(), 6)]);
    drop(s);
    // Reopened, each keeps its own.
    let s = Spool::open(dir.path()).unwrap();
    assert_eq!(ids_of(&s, Destination::Hec), ["r4", "r5"]);
    assert_eq!(ids_of(&s, Destination::DynamoDb), ["r2", "r3", "r4", "r5"]);
}

fn recs_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("r{i}")).collect()
}

/// Dead letters carry their destination; a record HEC's local validation refused is
/// dead-lettered for HEC only; requeue takes one destination's (or all) back into each one's
/// own outbox; an id dead-lettered for any destination is left out of the forwarded count.
#[test]
fn dead_letters_and_requeue_are_per_destination() {
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path()).unwrap();
    s.set_destinations(&BOTH);
    let invalid = NewRecord {
        invalid: Some("empty event".into()),
        ..rec("inv")
    };
    let done = s
        .enqueue_page("acme", &[rec("a"), rec("b"), invalid], None)
        .unwrap();
    assert_eq!((done.inserted, done.dead_lettered), (2, 1));
    assert_eq!(ids_of(&s, Destination::Hec), ["a", "b"]);
    assert_eq!(ids_of(&s, Destination::DynamoDb), ["a", "b", "inv"]);
    assert_eq!(counts_of(&s, Destination::Hec), (2, 1));
    // DynamoDB refuses "b".
    let ddb = s.read_batch(Destination::DynamoDb, 3, usize::MAX).unwrap();
    s.settle(
        Destination::DynamoDb,
        Some((ddb[0].seq, ddb[0].seq)),
        &[DeadLetter {
            seq: ddb[1].seq,
            reason: "item too large".into(),
            hec_code: None,
        }],
    )
    .unwrap();
    assert_eq!(counts_of(&s, Destination::DynamoDb), (1, 1));
    let dead = s.dead_letters().unwrap();
    let by: Vec<(&str, Destination)> = dead
        .iter()
        .map(|d| (d.record_id.as_str(), d.destination))
        .collect();
    assert_eq!(
        by,
        [("inv", Destination::Hec), ("b", Destination::DynamoDb)]
    );
    let reader = reader::Reader::open(dir.path()).unwrap();
    let only = reader.dead_letters(Some(Destination::DynamoDb)).unwrap();
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].record_id, "b");
    assert_eq!(reader.dead_letters(None).unwrap().len(), 2);
    drop(reader);
    // Both ids are short of a destination: reconciliation counts neither as forwarded.
    assert_eq!(s.dead_lettered_count("acme", 0, 0).unwrap(), 2);
    // HEC's requeue by the id of DynamoDB's dead letter: not HEC's, nothing moves.
    let ddb_id = dead[1].id;
    let r = s
        .requeue(Some(Destination::Hec), Some(&[ddb_id]), &|_, e| e.to_vec())
        .unwrap();
    assert_eq!((r.moved, r.missing), (0, vec![ddb_id]));
    // DynamoDB's requeue moves its own back into its own outbox.
    let r = s
        .requeue(Some(Destination::DynamoDb), None, &|_, e| e.to_vec())
        .unwrap();
    assert_eq!(r.moved, 1);
    assert_eq!(ids_of(&s, Destination::DynamoDb), ["inv", "b"]);
    assert_eq!(ids_of(&s, Destination::Hec), ["a", "b"]);
    assert_eq!(counts_of(&s, Destination::DynamoDb), (2, 0));
    assert_eq!(counts_of(&s, Destination::Hec), (2, 1));
    // Without a destination: every dead letter, each to its own.
    assert_eq!(s.requeue(None, None, &|_, e| e.to_vec()).unwrap().moved, 1);
    assert_eq!(ids_of(&s, Destination::Hec), ["a", "b", "inv"]);
    assert_eq!(counts_of(&s, Destination::Hec), (3, 0));
    assert_eq!(counts_of(&s, Destination::DynamoDb), (2, 0));
    assert_eq!(s.dead_lettered_count("acme", 0, 0).unwrap(), 0);
}

/// The forwarder's own events are Splunk monitoring events: HEC's outbox only, and nothing
/// (the reconciliation result itself is still stored) when HEC is not configured.
#[test]
fn internal_events_go_to_hec_only_and_nowhere_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path()).unwrap();
    s.set_destinations(&BOTH);
    s.enqueue_internal(INTERNAL_ACCOUNT, "heartbeat:1", b"{}".to_vec())
        .unwrap();
    assert_eq!(counts_of(&s, Destination::Hec), (1, 0));
    assert_eq!(counts_of(&s, Destination::DynamoDb), (0, 0));
    s.set_destinations(&[Destination::DynamoDb]);
    s.enqueue_internal(INTERNAL_ACCOUNT, "heartbeat:2", b"{}".to_vec())
        .unwrap();
    let r = crate::reconcile::Reconciliation {
        account: "acme".into(),
        period: crate::reconcile::Period {
            start_ms: 0,
            end_ms: 1000,
        },
        ringcentral_count: 0,
        forwarded_count: 0,
        status: crate::reconcile::Status::Complete,
        recovered: None,
        reason: None,
        checked_at_ms: 5,
    };
    s.store_reconciliation(&r, Some(b"{}".to_vec())).unwrap();
    assert_eq!(
        counts_of(&s, Destination::Hec),
        (1, 0),
        "nothing more for HEC"
    );
    assert_eq!(counts_of(&s, Destination::DynamoDb), (0, 0));
    assert_eq!(s.reconciliations(Some("acme"), 0).unwrap().len(), 1);
}

/// Salvage of a damaged v6 spool keeps both outboxes (with their seq, without what their
/// markers hid), the dead letters' destinations and the running counts; `seq` numbering
/// continues after the old file's, per outbox.
#[test]
fn salvage_keeps_every_destinations_outbox_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool.db");
    let (hec_left, ddb_left) = {
        let s = Spool::open(dir.path()).unwrap();
        s.set_destinations(&BOTH);
        let recs: Vec<_> = (0..5).map(|i| rec(&format!("r{i}"))).collect();
        s.enqueue_page("acme", &recs, Some(9)).unwrap();
        let hec = s.read_batch(Destination::Hec, 5, usize::MAX).unwrap();
        // HEC's tail is delivered: its sequence must not restart below it.
        s.settle(Destination::Hec, Some((hec[0].seq, hec[4].seq)), &[])
            .unwrap();
        let ddb = s.read_batch(Destination::DynamoDb, 5, usize::MAX).unwrap();
        s.settle(
            Destination::DynamoDb,
            Some((ddb[0].seq, ddb[1].seq)),
            &[DeadLetter {
                seq: ddb[2].seq,
                reason: "too large".into(),
                hec_code: None,
            }],
        )
        .unwrap();
        (hec[4].seq, ddb[3].seq)
    };
    let r = recover(&path, "test".into()).unwrap();
    assert_eq!(r.salvaged[0], ("outbox", Some(0)), "{:?}", r.salvaged);
    assert!(
        r.salvaged.contains(&("outbox_dynamodb", Some(2))),
        "{:?}",
        r.salvaged
    );
    let s = Spool::open(dir.path()).unwrap();
    s.set_destinations(&BOTH);
    assert!(ids_of(&s, Destination::Hec).is_empty());
    let ddb = s.read_batch(Destination::DynamoDb, 10, usize::MAX).unwrap();
    assert_eq!(
        ddb.iter().map(|r| r.record_id.as_str()).collect::<Vec<_>>(),
        ["r3", "r4"]
    );
    assert_eq!(ddb[0].seq, ddb_left, "same seq");
    let dead = s.dead_letters().unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].destination, Destination::DynamoDb);
    assert_eq!(counts_of(&s, Destination::Hec), (0, 0));
    assert_eq!(counts_of(&s, Destination::DynamoDb), (2, 1));
    assert_eq!(s.cursor("acme").unwrap(), Some(9));
    s.enqueue_page("acme", &[rec("new")], None).unwrap();
    let hec = s.read_batch(Destination::Hec, 10, usize::MAX).unwrap();
    assert!(hec[0].seq > hec_left, "{} after {hec_left}", hec[0].seq);
    assert_eq!(ids_of(&s, Destination::DynamoDb), ["r3", "r4", "new"]);
}

/// A damaged v5 spool is salvaged into v6: its outbox becomes HEC's, its dead letters HEC's.
#[test]
fn a_damaged_version_5_spool_is_salvaged_into_hecs_outbox() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spool.db");
    {
        let conn = Connection::open(&path).unwrap();
        for (_, sql) in &MIGRATIONS[..5] {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute_batch(
            "INSERT INTO outbox(account, record_id, event, spooled_at_ms) VALUES
                 ('acme', 'a', x'7b7d', 1), ('acme', 'b', x'7b7d', 2);
             UPDATE delivered SET upto_seq = 1 WHERE id = 1;
             INSERT INTO dead_letters(account, record_id, event, reason, hec_code, dead_at_ms)
                 VALUES ('acme', 'x', x'7b7d', 'Invalid data format', 6, 5);
             PRAGMA user_version = 5;",
        )
        .unwrap();
    }
    let r = recover(&path, "test".into()).unwrap();
    assert_eq!(r.salvaged[0], ("outbox", Some(1)), "{:?}", r.salvaged);
    assert_eq!(r.salvaged[3], ("dead_letters", Some(1)), "{:?}", r.salvaged);
    let s = Spool::open(dir.path()).unwrap();
    assert_eq!(ids_of(&s, Destination::Hec), ["b"]);
    assert_eq!(counts_of(&s, Destination::Hec), (1, 1));
    assert_eq!(counts_of(&s, Destination::DynamoDb), (0, 0));
    assert_eq!(s.dead_letters().unwrap()[0].destination, Destination::Hec);
}

/// Two delivery loops wait at once: a record enqueued for both wakes both (one shared
/// `notify_one` woke only one of them, and the other slept until its next timer).
#[tokio::test(start_paused = true)]
async fn every_destinations_loop_is_woken_for_a_record_enqueued_for_all() {
    let dir = tempfile::tempdir().unwrap();
    let s = Spool::open(dir.path()).unwrap();
    s.set_destinations(&BOTH);
    let waiters: Vec<_> = BOTH
        .into_iter()
        .map(|d| {
            let s = s.clone();
            tokio::spawn(async move { s.wait_for_data(d).await })
        })
        .collect();
    // Both are waiting before anything arrives.
    tokio::task::yield_now().await;
    tokio::task::yield_now().await;
    s.run(|s| s.enqueue_page("acme", &[rec("a")], None))
        .await
        .unwrap();
    for (d, w) in BOTH.into_iter().zip(waiters) {
        tokio::time::timeout(Duration::from_secs(3600), w)
            .await
            .unwrap_or_else(|_| panic!("{d}'s loop was not woken"))
            .unwrap();
    }
    // A wake-up that comes while a loop is busy is kept for its next wait; an internal event
    // wakes HEC's loop only.
    s.run(|s| s.enqueue_internal(INTERNAL_ACCOUNT, "hb", b"{}".to_vec()))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(1), s.wait_for_data(Destination::Hec))
        .await
        .expect("HEC's wake-up kept");
    assert!(
        tokio::time::timeout(
            Duration::from_secs(1),
            s.wait_for_data(Destination::DynamoDb)
        )
        .await
        .is_err(),
        "nothing arrived for DynamoDB"
    );
}
