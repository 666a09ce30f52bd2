//! Model check of the spool: random sequences of enqueue, read, accept, dead-letter, requeue,
//! failed (disk-full) enqueues and crash-reopen, with two destinations (HEC and DynamoDB, each
//! with its own outbox), compared after every step with a simple in-memory model.
//!
//! What it pins: events come out in the order they went in; nothing is lost (for each
//! destination, every id ever enqueued is waiting, delivered or dead-lettered, exactly one of
//! them); one destination's progress never changes another's; an id is enqueued once; a cursor
//! moves only with the page that carries it, and a failed page moves nothing.

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
    /// A destination's sink reads up to n events and they are accepted.
    Accept(usize, usize),
    /// A destination's sink reads up to n events; the k-th (0-based, clamped) is refused, those
    /// before it accepted.
    RefuseOne(usize, usize, usize),
    /// A destination's dead letters go back into its outbox.
    Requeue(usize),
    /// The process dies and starts again.
    CrashReopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..2, prop::collection::vec(0u8..40, 0..12), prop::option::of(0i64..1000))
            .prop_map(|(account, ids, cursor)| Op::Enqueue { account, ids, cursor }),
        1 => (0u8..2, prop::collection::vec(0u8..40, 1..6), 0i64..1000)
            .prop_map(|(account, ids, cursor)| Op::EnqueueOnFullDisk { account, ids, cursor }),
        3 => (0usize..2, 1usize..10).prop_map(|(d, n)| Op::Accept(d, n)),
        1 => (0usize..2, 1usize..6, 0usize..6).prop_map(|(d, n, k)| Op::RefuseOne(d, n, k)),
        1 => (0usize..2).prop_map(Op::Requeue),
        1 => Just(Op::CrashReopen),
    ]
}

/// One destination's side of the model.
#[derive(Default)]
struct Outbox {
    outbox: VecDeque<(String, String)>,
    delivered: Vec<(String, String)>,
    dead: Vec<(String, String)>,
}

#[derive(Default)]
struct Model {
    seen: HashSet<(String, String)>,
    cursors: BTreeMap<String, i64>,
    /// In [`Destination::ALL`] order.
    dest: [Outbox; 2],
}

fn open(dir: &std::path::Path) -> Spool {
    let spool = Spool::open(dir).unwrap();
    spool.set_destinations(&Destination::ALL);
    spool
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
    for (d, o) in Destination::ALL.into_iter().zip(&m.dest) {
        check_destination(spool, d, o, m);
    }
    for (a, c) in &m.cursors {
        assert_eq!(spool.cursor(a).unwrap(), Some(*c), "cursor of {a}");
    }
    for a in 0..2 {
        if !m.cursors.contains_key(&account(a)) {
            assert_eq!(spool.cursor(&account(a)).unwrap(), None);
        }
    }
}

fn check_destination(spool: &Spool, d: Destination, o: &Outbox, m: &Model) {
    let waiting: Vec<(String, String)> = spool
        .read_batch(d, 100_000, usize::MAX)
        .unwrap()
        .into_iter()
        .map(|r| (r.account, r.record_id))
        .collect();
    assert_eq!(
        waiting,
        o.outbox.iter().cloned().collect::<Vec<_>>(),
        "{d}: outbox order/content"
    );
    let dead: Vec<(String, String)> = spool
        .dead_letters()
        .unwrap()
        .into_iter()
        .filter(|x| x.destination == d)
        .map(|x| (x.account, x.record_id))
        .collect();
    // Listed by id, which follows the order they died in.
    assert_eq!(dead, o.dead, "{d}: dead letters");
    let st = spool.status().unwrap();
    let mine = st.destinations.iter().find(|x| x.destination == d).unwrap();
    assert_eq!(
        (mine.depth, mine.dead_letters),
        (o.outbox.len() as u64, o.dead.len() as u64),
        "{d}: running counts"
    );
    // No loss, no double: every seen id is in exactly one place.
    let mut everywhere: Vec<&(String, String)> =
        o.outbox.iter().chain(&o.delivered).chain(&o.dead).collect();
    everywhere.sort();
    let before = everywhere.len();
    everywhere.dedup();
    assert_eq!(before, everywhere.len(), "{d}: an id in two places");
    assert_eq!(
        everywhere.len(),
        m.seen.len(),
        "{d}: an id enqueued but nowhere"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn spool_matches_its_model(ops in prop::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut spool = open(dir.path());
        let mut m = Model::default();
        for op in ops {
            match op {
                Op::Enqueue { account: a, ids, cursor } => {
                    let a = account(a);
                    spool.enqueue_page(&a, &records(&ids, 16), cursor).unwrap();
                    for id in ids {
                        let key = (a.clone(), format!("r{id}"));
                        if m.seen.insert(key.clone()) {
                            for o in &mut m.dest {
                                o.outbox.push_back(key.clone());
                            }
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
                Op::Accept(d, n) => {
                    let (dest, o) = (Destination::ALL[d], &mut m.dest[d]);
                    let batch = spool.read_batch(dest, n, usize::MAX).unwrap();
                    if let (Some(first), Some(last)) = (batch.first(), batch.last()) {
                        spool.settle(dest, Some((first.seq, last.seq)), &[]).unwrap();
                        for _ in 0..batch.len() {
                            o.delivered.push(o.outbox.pop_front().unwrap());
                        }
                    }
                }
                Op::RefuseOne(d, n, k) => {
                    let (dest, o) = (Destination::ALL[d], &mut m.dest[d]);
                    let batch = spool.read_batch(dest, n, usize::MAX).unwrap();
                    if !batch.is_empty() {
                        let k = k.min(batch.len() - 1);
                        let accepted = (k > 0).then(|| (batch[0].seq, batch[k - 1].seq));
                        let dead = DeadLetter { seq: batch[k].seq, reason: "code 6".into(), hec_code: Some(6) };
                        spool.settle(dest, accepted, &[dead]).unwrap();
                        for _ in 0..k {
                            o.delivered.push(o.outbox.pop_front().unwrap());
                        }
                        o.dead.push(o.outbox.pop_front().unwrap());
                    }
                }
                Op::Requeue(d) => {
                    let (dest, o) = (Destination::ALL[d], &mut m.dest[d]);
                    let moved = spool.requeue(Some(dest), None, &|_, e| e.to_vec()).unwrap().moved;
                    prop_assert_eq!(moved, o.dead.len());
                    o.outbox.extend(o.dead.drain(..));
                }
                Op::CrashReopen => {
                    drop(spool);
                    spool = open(dir.path());
                    prop_assert!(spool.recovery().is_none());
                }
            }
            check(&spool, &m);
        }
    }
}
