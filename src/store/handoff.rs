//! Events handed to this process's delivery worker in memory.
//!
//! Without a hand-off every event costs the worker a claim: a write to find it and lease it
//! again, right after the request that made it was committed. With one, the request commits
//! its events already leased to this process and passes them to the worker after the commit,
//! so the worker posts them straight away. The store stays the truth: a hand-off lost with
//! the process is a leased row, claimed again by any worker once its lease runs out.
//!
//! A hand-off is bounded (`capacity` events not yet taken by the worker, whose own queue is
//! bounded too); beyond it, and while delivery is paused, events are committed due and
//! claimed as usual.

use crate::outbox::{Claimed, Status};
use std::sync::Arc;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};

/// Where a request's new events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queue {
    /// Due at once, for any worker to claim.
    Due,
    /// Leased to this process for `lease_secs` and handed over in memory (due instead while
    /// delivery is paused).
    Leased { lease_secs: u64 },
}

impl Queue {
    /// The status and lease (Unix ms; 0 for none) of a row queued here at `now_ms`.
    pub fn row(self, now_ms: i64) -> (Status, i64) {
        match self {
            Queue::Due => (Status::Pending, 0),
            Queue::Leased { lease_secs } => (Status::Inflight, now_ms + lease_secs as i64 * 1000),
        }
    }
}

/// Events leased to this process's worker, with their place in the hand-off (freed when the
/// worker takes the events into its queue).
#[derive(Debug)]
pub struct Leased {
    pub events: Vec<Claimed>,
    _place: OwnedSemaphorePermit,
}

/// The worker's end of a hand-off.
pub type Receiver = mpsc::UnboundedReceiver<Leased>;

/// The store's end of a hand-off.
#[derive(Debug, Clone)]
pub struct Handoff {
    places: Arc<Semaphore>,
    lease_secs: u64,
    events: mpsc::UnboundedSender<Leased>,
    /// Wakes the worker to claim events that could not be handed over.
    wake: Arc<Notify>,
}

/// A reservation for a request's events.
#[derive(Debug)]
pub(crate) struct Reservation {
    place: Option<OwnedSemaphorePermit>,
    queue: Queue,
}

impl Reservation {
    /// Where the request's events go.
    pub(crate) fn queue(&self) -> Queue {
        self.queue
    }
}

impl Handoff {
    /// A hand-off for up to `capacity` events, leased for `lease_secs`; `wake` is the worker's
    /// signal to claim from the store.
    pub fn new(capacity: usize, lease_secs: u64, wake: Arc<Notify>) -> (Self, Receiver) {
        let (events, receiver) = mpsc::unbounded_channel();
        let handoff = Self {
            places: Arc::new(Semaphore::new(capacity)),
            lease_secs,
            events,
            wake,
        };
        (handoff, receiver)
    }

    /// Reserves places for up to `n` events: leased when they fit, due when they do not.
    pub(crate) fn reserve(&self, n: usize) -> Reservation {
        let place = u32::try_from(n)
            .ok()
            .and_then(|n| self.places.clone().try_acquire_many_owned(n.max(1)).ok());
        let queue = match place {
            Some(_) => Queue::Leased {
                lease_secs: self.lease_secs,
            },
            None => Queue::Due,
        };
        Reservation { place, queue }
    }

    /// After the commit: passes the leased events to the worker, or wakes it to claim the
    /// due ones.
    pub(crate) fn hand_over(&self, reservation: Reservation, leased: Vec<Claimed>) {
        match reservation.place {
            Some(place) if !leased.is_empty() => {
                // Fails only when the worker has stopped: the rows stay leased and are
                // claimed again when the lease runs out.
                let _ = self.events.send(Leased {
                    events: leased,
                    _place: place,
                });
            }
            _ => self.wake.notify_one(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claimed(id: i64) -> Claimed {
        Claimed {
            id,
            uuid: format!("u{id}"),
            metric: crate::event::Metric::Opens,
            payload: "{}".into(),
            attempts: 0,
            created_ms: 0,
            lease_until_ms: 0,
        }
    }

    #[tokio::test]
    async fn events_beyond_the_capacity_are_committed_due_and_the_worker_woken() {
        let wake = Arc::new(Notify::new());
        let (handoff, mut receiver) = Handoff::new(3, 60, wake.clone());
        let first = handoff.reserve(2);
        assert_eq!(first.queue(), Queue::Leased { lease_secs: 60 });
        let second = handoff.reserve(2);
        assert_eq!(second.queue(), Queue::Due, "only one place is left");
        handoff.hand_over(second, Vec::new());
        // The wake-up was stored for the worker.
        tokio::time::timeout(std::time::Duration::from_secs(1), wake.notified())
            .await
            .expect("the worker is woken to claim due events");

        handoff.hand_over(first, vec![claimed(1), claimed(2)]);
        let got = receiver.recv().await.unwrap();
        assert_eq!(got.events.len(), 2);
        assert_eq!(
            handoff.reserve(2).queue(),
            Queue::Due,
            "places held until dropped"
        );
        drop(got);
        assert_eq!(handoff.reserve(3).queue(), Queue::Leased { lease_secs: 60 });
    }

    #[tokio::test]
    async fn a_request_that_leased_nothing_frees_its_places_and_wakes_the_worker() {
        let wake = Arc::new(Notify::new());
        let (handoff, mut receiver) = Handoff::new(2, 60, wake.clone());
        let r = handoff.reserve(2);
        handoff.hand_over(r, Vec::new()); // e.g. paused: committed due
        tokio::time::timeout(std::time::Duration::from_secs(1), wake.notified())
            .await
            .expect("woken");
        assert!(receiver.try_recv().is_err());
        assert_eq!(handoff.reserve(2).queue(), Queue::Leased { lease_secs: 60 });
    }
}
