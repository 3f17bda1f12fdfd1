//! Tracked fetches held for `[engagement] hold_secs` before they are judged and recorded, so
//! a scanner's burst over every link of a message is judged as a whole: the first fetch of a
//! burst is known to be one only once the others have come. The redirect and the pixel
//! answer at once; each event keeps its fetch's time. A supervised task (`engagement`)
//! records what is due, in one intake batch; on shutdown everything held is recorded at once.

use crate::activity::Raw;
use crate::engagement::{Judge, Reason};
use crate::intake::{Intake, Unknown};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One tracked fetch waiting to be judged.
#[derive(Debug)]
pub struct Held {
    pub raw: Raw,
    /// When it arrived.
    pub at: Instant,
    pub client: IpAddr,
}

/// Where tracked fetches are held (cheap to clone).
#[derive(Debug, Clone)]
pub struct HeldQueue(mpsc::Sender<Held>);

/// Fetches held at most (beyond, they are judged and recorded at once).
const CAPACITY: usize = 10_000;

impl HeldQueue {
    /// Holds `held`; gives it back when the queue is full or stopped (record it now).
    pub fn hold(&self, held: Held) -> Result<(), Box<Held>> {
        self.0.try_send(held).map_err(|e| match e {
            mpsc::error::TrySendError::Full(h) | mpsc::error::TrySendError::Closed(h) => {
                Box::new(h)
            }
        })
    }
}

/// The task that judges and records held fetches.
pub struct HeldWorker {
    rx: tokio::sync::Mutex<mpsc::Receiver<Held>>,
    hold: Duration,
    intake: Intake,
    judge: Arc<Judge>,
}

/// A queue and its worker, holding for `hold`.
pub fn channel(hold: Duration, intake: Intake, judge: Arc<Judge>) -> (HeldQueue, HeldWorker) {
    let (tx, rx) = mpsc::channel(CAPACITY);
    let worker = HeldWorker {
        rx: tokio::sync::Mutex::new(rx),
        hold,
        intake,
        judge,
    };
    (HeldQueue(tx), worker)
}

/// The final verdict of a held fetch: a person's becomes a burst's when other links of its
/// message came from its client around it.
pub fn finish(judge: &Judge, mut held: Held) -> Raw {
    let pb = (held.raw.broadcast_id, held.raw.customer_id);
    if held.raw.machine_reason == Some(Reason::Person)
        && judge.recent.is_burst(held.at.into_std(), pb, held.client)
    {
        held.raw.machine_reason = Some(Reason::Burst);
    }
    held.raw
}

impl HeldWorker {
    /// Records fetches as their hold ends, until `stop`; then records all that are held.
    pub async fn run(&self, stop: CancellationToken) {
        let mut rx = self.rx.lock().await;
        let mut pending: VecDeque<Held> = VecDeque::new();
        loop {
            let due = pending.front().map(|h| h.at + self.hold);
            tokio::select! {
                () = stop.cancelled() => break,
                next = rx.recv() => match next {
                    Some(h) => pending.push_back(h),
                    None => break,
                },
                () = async { tokio::time::sleep_until(due.unwrap_or_else(Instant::now)).await }, if due.is_some() => {}
            }
            let now = Instant::now();
            let n = pending
                .iter()
                .take_while(|h| h.at + self.hold <= now)
                .count();
            if n > 0 {
                let ready: Vec<Held> = pending.drain(..n).collect();
                self.record(ready).await;
            }
        }
        while let Ok(h) = rx.try_recv() {
            pending.push_back(h);
        }
        self.record(pending.into_iter().collect()).await;
    }

    async fn record(&self, ready: Vec<Held>) {
        if ready.is_empty() {
            return;
        }
        let raws: Vec<Raw> = ready.into_iter().map(|h| finish(&self.judge, h)).collect();
        let n = raws.len();
        let activities = match Intake::check(raws) {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(errors = ?e, "held tracked fetches could not be checked");
                return;
            }
        };
        if let Err(e) = self.intake.record(activities, Unknown::Skip).await {
            tracing::warn!(error = %e, fetches = n, "held tracked fetches could not be recorded");
        }
    }
}
