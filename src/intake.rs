//! The intake: where every source of activities hands them in. `POST /activities`, the
//! tracked links, mail platforms' events (and the sources to come) build typed activities
//! ([`Raw`], checked into [`Activity`]) and call [`Intake::record`]: one store transaction per
//! batch, one outcome per activity (recorded, duplicate, or unknown personal broadcast), in
//! the batch's order. What a source does with an unknown personal broadcast is its
//! [`Unknown`] policy. SMTP outcomes go through [`Intake::send_outcomes`], which records a
//! refused recipient's bounce through the same rules, in the transaction that settles the send.

use crate::activity::{Activity, Raw};
use crate::mapping::apply::FieldError;
use crate::outbox::{ClaimedSend, SendOutcome, StoreError};
use crate::store::Storage;

pub use crate::recording::{ActivityAnswer, ActivityOutcome, ActivityStatus, Unknown};

/// The one door for activities (cheap to clone).
#[derive(Debug, Clone)]
pub struct Intake {
    store: Storage,
}

/// What a batch came to, counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub recorded: usize,
    pub duplicates: usize,
    pub unknown: usize,
}

impl Tally {
    /// The counts of `outcomes`.
    pub fn of(outcomes: &[ActivityOutcome]) -> Self {
        let mut t = Self::default();
        for o in outcomes {
            match o {
                ActivityOutcome::Answered(a) if a.status == ActivityStatus::Duplicate => {
                    t.duplicates += 1
                }
                ActivityOutcome::Answered(_) => t.recorded += 1,
                ActivityOutcome::UnknownBroadcast => t.unknown += 1,
            }
        }
        t
    }
}

impl Intake {
    pub fn new(store: Storage) -> Self {
        Self { store }
    }

    /// Checks raw activities: all of them, or every problem with its index.
    pub fn check(raws: Vec<Raw>) -> Result<Vec<Activity>, Vec<FieldError>> {
        let mut activities = Vec::with_capacity(raws.len());
        let mut errors = Vec::new();
        for (i, raw) in raws.into_iter().enumerate() {
            match raw.check() {
                Ok(a) => activities.push(a),
                Err((field, message)) => errors.push(crate::activity::error(i, field, message)),
            }
        }
        if errors.is_empty() {
            Ok(activities)
        } else {
            Err(errors)
        }
    }

    /// Records a batch in one transaction; one outcome per activity, in order. The user
    /// agents of recorded activities are remembered for the next parses once committed.
    #[tracing::instrument(level = "debug", skip_all, fields(activities = activities.len()))]
    pub async fn record(
        &self,
        activities: Vec<Activity>,
        unknown: Unknown,
    ) -> Result<Vec<ActivityOutcome>, StoreError> {
        if activities.is_empty() {
            return Ok(Vec::new());
        }
        let agents: Vec<String> = activities
            .iter()
            .filter_map(|a| a.user_agent().map(str::to_owned))
            .collect();
        let outcomes = self.store.record_activities(activities, unknown).await?;
        for ua in &agents {
            crate::activity::enrich::remember(ua);
        }
        Ok(outcomes)
    }

    /// Records what became of sends (the mail worker's outcomes).
    pub async fn send_outcomes(
        &self,
        outcomes: Vec<(ClaimedSend, SendOutcome)>,
    ) -> Result<(), StoreError> {
        self.store.complete_sends(outcomes).await
    }
}
