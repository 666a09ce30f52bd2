//! Indexer acknowledgement bookkeeping (`hec.use_ack`).
//!
//! With acknowledgement on, a 200 from HEC only means "received": the batch stays in the spool,
//! recorded here under its `ackId`, until an ack query reads `true` for it. Splunk answers `true`
//! once and then forgets the id, so a confirmed batch is settled (deleted from the spool) at once.
//! `false` means "pending" or "lost", which look the same: a batch not confirmed within
//! `hec.ack_timeout` is sent again under a new id. That resend is the one way ack mode can
//! duplicate (the first copy may have been indexed after all).
//!
//! Only `seq` ranges are kept here, never event bytes: a resend reads the range from the spool
//! again, so memory stays flat however many batches are in flight.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

/// How often pending acks are queried.
pub const ACK_POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Batches awaiting their ack at most; enough to keep HEC busy between ack polls.
pub const MAX_IN_FLIGHT: usize = 16;

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
}

/// The batches awaiting acknowledgement.
#[derive(Debug)]
pub struct AckTracker {
    pending: Vec<Pending>,
    /// Batches to resend at the next round whatever their age (their ack id was reused).
    resend_now: Vec<Pending>,
    deadline: Duration,
}

impl AckTracker {
    /// Tracks batches, resending those unconfirmed after `deadline`.
    pub fn new(deadline: Duration) -> Self {
        AckTracker {
            pending: Vec::new(),
            resend_now: Vec::new(),
            deadline,
        }
    }

    /// Records a received batch. If the endpoint handed out an id that an older pending batch
    /// already holds (its ack counter restarted, e.g. the indexer restarted or a load balancer
    /// switched indexers), a `true` for that id could not say which batch it means: the older
    /// batch is sent again rather than ever being settled by the newer one's ack.
    pub fn push(&mut self, p: Pending) {
        let (clash, rest): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|q| q.endpoint == p.endpoint && q.ack_id == p.ack_id);
        self.pending = rest;
        self.resend_now.extend(clash);
        self.pending.push(p);
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
        self.pending.is_empty() && self.resend_now.is_empty()
    }

    /// The highest `seq` in flight: the sink reads new batches after it.
    pub fn last_seq(&self) -> Option<i64> {
        self.pending
            .iter()
            .chain(&self.resend_now)
            .map(|p| p.last)
            .max()
    }

    /// Pending ack ids grouped by endpoint, for the ack queries.
    pub fn ids_by_endpoint(&self) -> BTreeMap<usize, Vec<u64>> {
        let mut m: BTreeMap<usize, Vec<u64>> = BTreeMap::new();
        for p in &self.pending {
            m.entry(p.endpoint).or_default().push(p.ack_id);
        }
        m
    }

    /// Removes and returns the batches `endpoint` confirmed (`true` in `answer`).
    pub fn confirm(&mut self, endpoint: usize, answer: &HashMap<u64, bool>) -> Vec<Pending> {
        let (done, rest) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.endpoint == endpoint && answer.get(&p.ack_id) == Some(&true));
        self.pending = rest;
        done
    }

    /// Removes and returns the batches to send again: past the deadline, or with a reused id.
    pub fn take_expired(&mut self, now: Instant) -> Vec<Pending> {
        let deadline = self.deadline;
        let (mut expired, rest): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| now.duration_since(p.sent_at) >= deadline);
        self.pending = rest;
        expired.append(&mut self.resend_now);
        expired
    }

    /// Removes and returns what HEC received (falling back to plain mode). Batches whose ack id
    /// was reused are not among them: they must be sent again.
    pub fn take_all(&mut self) -> (Vec<Pending>, Vec<Pending>) {
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
            ack_id,
            endpoint,
            first,
            last: first + 9,
            events: 10,
            sent_at,
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
        assert_eq!(done.iter().map(|d| d.first).collect::<Vec<_>>(), vec![1]);
        assert_eq!(t.len(), 2);
        assert!(t.take_expired(t0 + Duration::from_secs(299)).is_empty());
        let expired = t.take_expired(t0 + Duration::from_secs(300));
        assert_eq!(expired.len(), 2);
        assert!(t.is_empty());
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
}
