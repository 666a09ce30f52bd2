//! Model check of the spool: random sequences of enqueue, read, accept, dead-letter, failed
//! (disk-full) enqueues and crash-reopen, compared after every step with a simple in-memory model.
//!
//! What it pins: events come out in the order they went in; nothing is lost (every id ever
//! enqueued is waiting, delivered or dead-lettered, exactly one of them); an id is enqueued once;
//! a cursor moves only with the page that carries it, and a failed page moves nothing.

use std::collections::{BTreeMap, HashSet, VecDeque};

use proptest::prelude::*;
use rc_audit_hec::config::Destination;
use rc_audit_hec::spool::{DeadLetter, NewRecord, Spool};

#[derive(Debug, Clone)]
enum Op {
    /// A page for an account: record ids (small numbers, so repeats happen), maybe with a cursor.
    Enqueue {
        account: u8,
        ids: Vec<u8>,
        cursor: Option<i64>,
    },
    /// The same, but the disk is full: all or nothing.
    EnqueueOnFullDisk {
        account: u8,
        ids: Vec<u8>,
        cursor: i64,
    },
    /// The sink reads up to n events and HEC accepts them.
    Accept(usize),
    /// The sink reads up to n events; HEC refuses the k-th (0-based, clamped), indexing those before.
    RefuseOne(usize, usize),
    /// The process dies and starts again.
    CrashReopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..2, prop::collection::vec(0u8..40, 0..12), prop::option::of(0i64..1000))
            .prop_map(|(account, ids, cursor)| Op::Enqueue { account, ids, cursor }),
        1 => (0u8..2, prop::collection::vec(0u8..40, 1..6), 0i64..1000)
            .prop_map(|(account, ids, cursor)| Op::EnqueueOnFullDisk { account, ids, cursor }),
        3 => (1usize..10).prop_map(Op::Accept),
        1 => (1usize..6, 0usize..6).prop_map(|(n, k)| Op::RefuseOne(n, k)),
        1 => Just(Op::CrashReopen),
    ]
}

#[derive(Default)]
struct Model {
    outbox: VecDeque<(String, String)>,
    seen: HashSet<(String, String)>,
    cursors: BTreeMap<String, i64>,
    delivered: Vec<(String, String)>,
    dead: Vec<(String, String)>,
}

fn account(a: u8) -> String {
    format!("acct{a}")
}

fn records(ids: &[u8], size: usize) -> Vec<NewRecord> {
    ids.iter()
        .map(|id| NewRecord {
            invalid: None,
            event_time_ms: 0,
            record_id: format!("r{id}"),
            event: vec![b'x'; size],
        })
        .collect()
}

fn check(spool: &Spool, m: &Model) {
    let waiting: Vec<(String, String)> = spool
        .read_batch(Destination::Hec, 100_000, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| (r.account, r.record_id))
        .collect();
    assert_eq!(
        waiting,
        m.outbox.iter().cloned().collect::<Vec<_>>(),
        "outbox order/content"
    );
    for (a, c) in &m.cursors {
        assert_eq!(spool.cursor(a).unwrap(), Some(*c), "cursor of {a}");
    }
    for a in 0..2 {
        if !m.cursors.contains_key(&account(a)) {
            assert_eq!(spool.cursor(&account(a)).unwrap(), None);
        }
    }
    let dead: Vec<(String, String)> = spool
        .dead_letters()
        .unwrap()
        .into_iter()
        .map(|d| (d.account, d.record_id))
        .collect();
    assert_eq!(dead, m.dead);
    // No loss, no double: every seen id is in exactly one place.
    let mut everywhere: Vec<&(String, String)> =
        m.outbox.iter().chain(&m.delivered).chain(&m.dead).collect();
    everywhere.sort();
    let before = everywhere.len();
    everywhere.dedup();
    assert_eq!(before, everywhere.len(), "an id in two places");
    assert_eq!(everywhere.len(), m.seen.len(), "an id enqueued but nowhere");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn spool_matches_its_model(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = Spool::open(dir.path()).unwrap();
        let mut m = Model::default();
        for op in ops {
            match op {
                Op::Enqueue { account: a, ids, cursor } => {
                    let a = account(a);
                    spool.enqueue_page(&a, &records(&ids, 16), cursor).unwrap();
                    for id in ids {
                        let key = (a.clone(), format!("r{id}"));
                        if m.seen.insert(key.clone()) {
                            m.outbox.push_back(key);
                        }
                    }
                    if let Some(c) = cursor {
                        m.cursors.insert(a, c);
                    }
                }
                Op::EnqueueOnFullDisk { account: a, ids, cursor } => {
                    let pages = spool.used_bytes().unwrap() / spool.page_size().unwrap() + 2;
                    spool.set_max_page_count(pages).unwrap();
                    // Events far larger than the pages left: the page goes in whole or not at all.
                    let a = account(a);
                    let result = spool.enqueue_page(&a, &records(&ids, 300_000), Some(cursor));
                    spool.set_max_page_count(1 << 30).unwrap();
                    let new = ids.iter().any(|id| !m.seen.contains(&(a.clone(), format!("r{id}"))));
                    prop_assert!(result.is_err() || !new, "300 KB records cannot fit in two spare pages");
                    if result.is_ok() {
                        m.cursors.insert(a, cursor);
                    }
                }
                Op::Accept(n) => {
                    let batch = spool.read_batch(Destination::Hec, n, usize::MAX).unwrap();
                    if let (Some(first), Some(last)) = (batch.first(), batch.last()) {
                        spool.settle(Destination::Hec, Some((first.seq, last.seq)), &[]).unwrap();
                        for _ in 0..batch.len() {
                            m.delivered.push(m.outbox.pop_front().unwrap());
                        }
                    }
                }
                Op::RefuseOne(n, k) => {
                    let batch = spool.read_batch(Destination::Hec, n, usize::MAX).unwrap();
                    if !batch.is_empty() {
                        let k = k.min(batch.len() - 1);
                        let accepted = (k > 0).then(|| (batch[0].seq, batch[k - 1].seq));
                        let dead = DeadLetter { seq: batch[k].seq, reason: "code 6".into(), hec_code: Some(6) };
                        spool.settle(Destination::Hec, accepted, &[dead]).unwrap();
                        for _ in 0..k {
                            m.delivered.push(m.outbox.pop_front().unwrap());
                        }
                        m.dead.push(m.outbox.pop_front().unwrap());
                    }
                }
                Op::CrashReopen => {
                    drop(spool);
                    spool = Spool::open(dir.path()).unwrap();
                    prop_assert!(spool.recovery().is_none());
                }
            }
            check(&spool, &m);
        }
    }
}
