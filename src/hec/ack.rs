//! Indexer acknowledgement bookkeeping (`hec.use_ack`).
//!
//! With acknowledgement on, a 200 from HEC only means "received": the batch stays in the spool,
//! recorded here under its `ackId`, until an ack query reads `true` for it. Splunk answers `true`
//! once and then forgets the id, so a confirmed batch is settled (deleted from the spool) at once.
//! `false` means "pending" or "lost", which look the same: a batch not confirmed within its
//! deadline is sent again under a new id. That resend is the one way ack mode can duplicate
//! (the first copy may have been indexed after all).
//!
//! A resend does not give up on the older copy: every ack id a batch was sent under stays
//! queried until one reads `true` (a *stale* id). A late `true` for the first copy settles the
//! batch, and the resend's own ack is then ignored. Each resend of the same rows doubles their
//! deadline (`hec.ack_timeout`, then 2x, 4x... up to [`MAX_DEADLINE_FACTOR`]x), so a Splunk whose
//! acknowledgement is slower than `ack_timeout` costs a few resends, not one every deadline.
//!
//! Acks are polled soon after a send ([`ACK_POLL_FIRST`]) and then less and less often while
//! none reads true, up to [`ACK_POLL_INTERVAL`]: a fixed 1 s poll would cap ack mode at
//! [`MAX_IN_FLIGHT`] batches a second against a Splunk that acknowledges in milliseconds.
//!
//! Only `seq` ranges are kept here, never event bytes: a resend reads the range from the spool
//! again, so memory stays flat however many batches are in flight.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

/// The longest wait between ack polls (while acks stay false).
pub const ACK_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The first ack poll after a send; the interval doubles from there while nothing reads true.
pub const ACK_POLL_FIRST: Duration = Duration::from_millis(25);
/// Batches awaiting their ack at most; enough to keep HEC busy between ack polls.
pub const MAX_IN_FLIGHT: usize = 16;
/// A batch resent again and again waits at most this many times `hec.ack_timeout` for its ack.
pub const MAX_DEADLINE_FACTOR: u32 = 8;

/// A batch HEC received and has not yet confirmed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    /// HEC's `ackId` for the request.
    pub ack_id: u64,
    /// The endpoint that took it: ack ids are per endpoint and channel.
    pub endpoint: usize,
    /// First `seq` of the batch.
    pub first: i64,
    /// Last `seq` of the batch.
    pub last: i64,
    /// Events in the batch.
    pub events: usize,
    /// When it was sent.
    pub sent_at: Instant,
    /// How many times these rows were resent for want of an ack before this copy (set by
    /// [`AckTracker::push`]).
    pub attempt: u32,
    /// How long this copy waits for its ack (set by [`AckTracker::push`]).
    pub deadline: Duration,
}

impl Pending {
    /// A batch sent just now under `ack_id`.
    pub fn new(ack_id: u64, endpoint: usize, first: i64, last: i64, events: usize) -> Self {
        Pending {
            ack_id,
            endpoint,
            first,
            last,
            events,
            sent_at: Instant::now(),
            attempt: 0,
            deadline: Duration::ZERO,
        }
    }

    fn overlaps(&self, first: i64, last: i64) -> bool {
        self.first <= last && first <= self.last
    }

    fn within(&self, first: i64, last: i64) -> bool {
        first <= self.first && self.last <= last
    }
}

/// An older copy's ack id, still valid after its batch was resent.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stale {
    ack_id: u64,
    endpoint: usize,
    first: i64,
    last: i64,
    attempt: u32,
}

/// Rows confirmed indexed: delete `first..=last` from the spool, count `events` delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confirmed {
    /// First `seq`.
    pub first: i64,
    /// Last `seq`.
    pub last: i64,
    /// Events still awaiting confirmation in the range (the ones this settles).
    pub events: usize,
    /// Confirmed through an older copy's ack id after a resend.
    pub late: bool,
}

/// The batches awaiting acknowledgement.
#[derive(Debug)]
pub struct AckTracker {
    pending: Vec<Pending>,
    /// Batches to resend at the next round whatever their age (their ack id was reused).
    resend_now: Vec<Pending>,
    /// Ack ids of copies that were resent, queried until one reads true.
    stale: Vec<Stale>,
    deadline: Duration,
    /// The current wait between ack polls.
    poll_every: Duration,
}

impl AckTracker {
    /// Tracks batches, resending those unconfirmed after `deadline` (doubling per resend).
    pub fn new(deadline: Duration) -> Self {
        AckTracker {
            pending: Vec::new(),
            resend_now: Vec::new(),
            stale: Vec::new(),
            deadline,
            poll_every: ACK_POLL_FIRST,
        }
    }

    /// Records a received batch; returns when its ack should first be asked for. If the
    /// endpoint handed out an id that an older pending batch already holds (its ack counter
    /// restarted, e.g. the indexer restarted or a load balancer switched indexers), a `true` for
    /// that id could not say which batch it means: the older batch is sent again rather than
    /// ever being settled by the newer one's ack, and an older copy's stale id is forgotten.
    pub fn push(&mut self, mut p: Pending) -> Duration {
        let (clash, rest): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|q| q.endpoint == p.endpoint && q.ack_id == p.ack_id);
        self.pending = rest;
        self.resend_now.extend(clash);
        self.stale
            .retain(|s| !(s.endpoint == p.endpoint && s.ack_id == p.ack_id));
        let mut attempt = 0;
        for s in &self.stale {
            if p.overlaps(s.first, s.last) {
                attempt = attempt.max(s.attempt.saturating_add(1));
            }
        }
        p.attempt = attempt;
        p.deadline = self.deadline_for(attempt);
        self.pending.push(p);
        self.poll_every = ACK_POLL_FIRST;
        ACK_POLL_FIRST
    }

    /// `hec.ack_timeout` doubled per resend, capped at [`MAX_DEADLINE_FACTOR`] times.
    pub fn deadline_for(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt)
            .unwrap_or(u32::MAX)
            .min(MAX_DEADLINE_FACTOR);
        self.deadline.saturating_mul(factor)
    }

    /// True when `seq` belongs to a batch in flight (or queued for resend).
    pub fn covers(&self, seq: i64) -> bool {
        self.pending
            .iter()
            .chain(&self.resend_now)
            .any(|p| p.first <= seq && seq <= p.last)
    }

    /// Batches in flight.
    pub fn len(&self) -> usize {
        self.pending.len() + self.resend_now.len()
    }

    /// True when nothing awaits confirmation.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty() && self.resend_now.is_empty() && self.stale.is_empty()
    }

    /// The highest `seq` in flight: the sink reads new batches after it.
    pub fn last_seq(&self) -> Option<i64> {
        self.pending
            .iter()
            .chain(&self.resend_now)
            .map(|p| p.last)
            .chain(self.stale.iter().map(|s| s.last))
            .max()
    }

    /// Ack ids to query (pending and stale) grouped by endpoint.
    pub fn ids_by_endpoint(&self) -> BTreeMap<usize, Vec<u64>> {
        let mut m: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        let ids = self.pending.iter().map(|p| (p.endpoint, p.ack_id));
        for (endpoint, id) in ids.chain(self.stale.iter().map(|s| (s.endpoint, s.ack_id))) {
            let v = m.entry(endpoint).or_default();
            if !v.contains(&id) {
                v.push(id);
            }
        }
        m
    }

    /// Removes and returns what `endpoint` confirmed (`true` in `answer`): pending batches, and
    /// the ranges of stale ids, which take the newer copies in them along (their own acks are
    /// then ignored).
    pub fn confirm(&mut self, endpoint: usize, answer: &HashMap<u64, bool>) -> Vec<Confirmed> {
        let yes = |e: usize, id: u64| e == endpoint && answer.get(&id) == Some(&true);
        let (done, rest): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| yes(p.endpoint, p.ack_id));
        self.pending = rest;
        let mut out: Vec<Confirmed> = done
            .into_iter()
            .map(|p| Confirmed {
                first: p.first,
                last: p.last,
                events: p.events,
                late: false,
            })
            .collect();
        let (late, stale): (Vec<Stale>, Vec<Stale>) = std::mem::take(&mut self.stale)
            .into_iter()
            .partition(|s| yes(s.endpoint, s.ack_id));
        self.stale = stale;
        for s in late {
            let inside = |p: &Pending| p.within(s.first, s.last);
            let events = self
                .pending
                .iter()
                .chain(&self.resend_now)
                .filter(|p| inside(p))
                .map(|p| p.events)
                .sum();
            self.pending.retain(|p| !inside(p));
            self.resend_now.retain(|p| !inside(p));
            self.stale
                .retain(|t| !(s.first <= t.first && t.last <= s.last));
            out.push(Confirmed {
                first: s.first,
                last: s.last,
                events,
                late: true,
            });
        }
        // A stale id none of whose rows is in flight any more has nothing left to confirm: its
        // resend was settled (or dead-lettered). The sink resends expired batches before the
        // next round's queries, so a stale id is never dropped before its resend.
        let in_flight: Vec<(i64, i64)> = self
            .pending
            .iter()
            .chain(&self.resend_now)
            .map(|p| (p.first, p.last))
            .collect();
        self.stale
            .retain(|s| in_flight.iter().any(|&(f, l)| f <= s.last && s.first <= l));
        out
    }

    /// After a round of ack queries: when to ask again. Soon while acks come in; less and less
    /// often (up to [`ACK_POLL_INTERVAL`]) while none does.
    pub fn next_poll(&mut self, confirmed_any: bool) -> Duration {
        self.poll_every = if confirmed_any {
            ACK_POLL_FIRST
        } else {
            (self.poll_every * 2).min(ACK_POLL_INTERVAL)
        };
        self.poll_every
    }

    /// Removes and returns the batches to send again: past their deadline (their ack id stays
    /// queried as a stale id), or with a reused id.
    pub fn take_expired(&mut self, now: Instant) -> Vec<Pending> {
        let (mut expired, rest): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| now.duration_since(p.sent_at) >= p.deadline);
        self.pending = rest;
        self.stale.extend(expired.iter().map(|p| Stale {
            ack_id: p.ack_id,
            endpoint: p.endpoint,
            first: p.first,
            last: p.last,
            attempt: p.attempt,
        }));
        expired.append(&mut self.resend_now);
        expired
    }

    /// Removes and returns what HEC received (falling back to plain mode). Batches whose ack id
    /// was reused are not among them: they must be sent again. Stale ids are forgotten (their
    /// rows' newer copies are among the received).
    pub fn take_all(&mut self) -> (Vec<Pending>, Vec<Pending>) {
        self.stale.clear();
        (
            std::mem::take(&mut self.pending),
            std::mem::take(&mut self.resend_now),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(ack_id: u64, endpoint: usize, first: i64, sent_at: Instant) -> Pending {
        Pending {
            sent_at,
            ..Pending::new(ack_id, endpoint, first, first + 9, 10)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn confirmations_are_per_endpoint_and_deadlines_expire_batches() {
        let t0 = Instant::now();
        let mut t = AckTracker::new(Duration::from_secs(300));
        t.push(p(0, 0, 1, t0));
        t.push(p(1, 0, 11, t0));
        t.push(p(0, 1, 21, t0));
        assert_eq!(t.last_seq(), Some(30));
        assert_eq!(t.ids_by_endpoint()[&0], vec![0, 1]);
        // Endpoint 1's id 0 is a different batch from endpoint 0's id 0.
        let done = t.confirm(0, &HashMap::from([(0, true), (1, false)]));
        assert!(done.iter().all(|d| !d.late));
        assert_eq!(done.iter().map(|d| d.first).collect::<Vec<_>>(), vec![1]);
        assert_eq!(t.len(), 2);
        assert!(t.take_expired(t0 + Duration::from_secs(299)).is_empty());
        let expired = t.take_expired(t0 + Duration::from_secs(300));
        assert_eq!(expired.len(), 2);
        assert_eq!(t.len(), 0, "nothing in flight until resent");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reused_ack_id_never_settles_the_older_batch() {
        let t0 = Instant::now();
        let mut t = AckTracker::new(Duration::from_secs(300));
        t.push(p(5, 0, 1, t0));
        // The indexer restarted: its counter handed out 5 again for a newer batch.
        t.push(p(5, 0, 11, t0));
        let done = t.confirm(0, &HashMap::from([(5, true)]));
        assert_eq!(
            done.iter().map(|d| d.first).collect::<Vec<_>>(),
            vec![11],
            "only the newest holder"
        );
        let resend = t.take_expired(t0);
        assert_eq!(
            resend.iter().map(|d| d.first).collect::<Vec<_>>(),
            vec![1],
            "the older one goes again at once"
        );
        assert!(t.covers(5) || t.is_empty());
    }

    /// Issue 9, also found (a): each resend of the same rows doubles their deadline (capped), and
    /// every earlier copy's ack id stays queried until one reads true.
    #[tokio::test(start_paused = true)]
    async fn each_resend_doubles_the_deadline_and_every_old_id_stays_valid() {
        let base = Duration::from_secs(300);
        let mut t = AckTracker::new(base);
        let mut now = Instant::now();
        t.push(p(0, 0, 1, now));
        let mut waited = Vec::new();
        for id in 1..=5 {
            let deadline = t.pending[0].deadline;
            waited.push(deadline.as_secs());
            assert!(
                t.take_expired(now + deadline - Duration::from_secs(1))
                    .is_empty()
            );
            now += deadline;
            let expired = t.take_expired(now);
            assert_eq!(expired.len(), 1);
            t.push(p(id, 0, 1, now));
        }
        assert_eq!(
            waited,
            vec![300, 600, 1200, 2400, 2400],
            "doubled, capped at 8x"
        );
        let ids = &t.ids_by_endpoint()[&0];
        assert_eq!(ids.len(), 6, "the five older ids and the newest: {ids:?}");
        // The very first copy's ack comes in late: the batch is settled, and the newest copy's
        // ack no longer counts.
        let done = t.confirm(0, &HashMap::from([(0, true)]));
        assert_eq!(
            done,
            vec![Confirmed {
                first: 1,
                last: 10,
                events: 10,
                late: true
            }]
        );
        assert!(t.is_empty(), "{t:?}");
        assert!(t.confirm(0, &HashMap::from([(5, true)])).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_newest_copy_confirming_drops_the_older_ids() {
        let t0 = Instant::now();
        let mut t = AckTracker::new(Duration::from_secs(1));
        t.push(p(0, 0, 1, t0));
        assert_eq!(t.take_expired(t0 + Duration::from_secs(1)).len(), 1);
        // Resent in two halves (a split): both carry the doubled deadline.
        t.push(Pending {
            sent_at: t0,
            ..Pending::new(1, 0, 1, 5, 5)
        });
        t.push(Pending {
            sent_at: t0,
            ..Pending::new(2, 0, 6, 10, 5)
        });
        assert!(
            t.pending
                .iter()
                .all(|q| q.deadline == Duration::from_secs(2))
        );
        let done = t.confirm(0, &HashMap::from([(1, true)]));
        assert_eq!(done.len(), 1);
        assert_eq!(
            t.ids_by_endpoint()[&0],
            vec![2, 0],
            "half is still in flight"
        );
        let done = t.confirm(0, &HashMap::from([(2, true)]));
        assert_eq!(done.len(), 1);
        assert!(
            t.is_empty(),
            "the old id has nothing left to confirm: {t:?}"
        );
    }

    #[test]
    fn polls_come_soon_after_a_send_and_back_off_while_nothing_confirms() {
        let mut t = AckTracker::new(Duration::from_secs(300));
        assert_eq!(t.next_poll(false), ACK_POLL_FIRST * 2);
        let waits: Vec<_> = (0..10).map(|_| t.next_poll(false)).collect();
        assert_eq!(waits.last(), Some(&ACK_POLL_INTERVAL));
        assert_eq!(t.next_poll(true), ACK_POLL_FIRST);
    }
}
