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
#[derive(Clone)]
pub struct Intake {
    store: Storage,
    /// The metrics whose machines' activities are recorded `filtered`, not sent
    /// (`[engagement] machine = "drop"`, or CDH's format without an outcome for them).
    withhold_machines: Vec<crate::event::Metric>,
    /// Only a personal broadcast's first open by a person is sent (`[engagement] opens`).
    first_opens_only: bool,
    metrics: Option<std::sync::Arc<crate::delivery::metrics::Metrics>>,
}

impl std::fmt::Debug for Intake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Intake")
            .field("withhold_machines", &self.withhold_machines)
            .finish_non_exhaustive()
    }
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
    /// The store it records into.
    pub fn store(&self) -> &Storage {
        &self.store
    }

    pub fn new(store: Storage) -> Self {
        Self {
            store,
            withhold_machines: Vec::new(),
            first_opens_only: false,
            metrics: None,
        }
    }

    /// This intake, recording machines' activities of `metrics` without sending them.
    pub fn withholding_machines(self, metrics: Vec<crate::event::Metric>) -> Self {
        Self {
            withhold_machines: metrics,
            ..self
        }
    }

    /// This intake, sending only each personal broadcast's first open by a person.
    pub fn first_opens_only(self, first: bool) -> Self {
        Self {
            first_opens_only: first,
            ..self
        }
    }

    /// This intake, counting opens and clicks in `pegabridge_engagement_total`.
    pub fn counting(self, metrics: std::sync::Arc<crate::delivery::metrics::Metrics>) -> Self {
        Self {
            metrics: Some(metrics),
            ..self
        }
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
        mut activities: Vec<Activity>,
        unknown: Unknown,
    ) -> Result<Vec<ActivityOutcome>, StoreError> {
        if activities.is_empty() {
            return Ok(Vec::new());
        }
        for a in &mut activities {
            a.withheld = a.is_machine() && self.withhold_machines.contains(&a.metric);
            a.first_open_only = self.first_opens_only;
        }
        let judged: Vec<(crate::event::Metric, bool, &'static str)> = activities
            .iter()
            .filter(|a| {
                matches!(
                    a.detail,
                    crate::activity::Detail::Open { .. } | crate::activity::Detail::Click(_)
                )
            })
            .map(|a| {
                let reason = a
                    .machine_reason()
                    .map_or(if a.is_machine() { "flagged" } else { "person" }, |r| {
                        r.as_str()
                    });
                (a.metric, a.is_machine(), reason)
            })
            .collect();
        let agents: Vec<String> = activities
            .iter()
            .filter_map(|a| a.user_agent().map(str::to_owned))
            .collect();
        let outcomes = self.store.record_activities(activities, unknown).await?;
        if let Some(m) = &self.metrics {
            for (metric, machine, reason) in judged {
                m.engagement(metric.as_str(), machine, reason);
            }
        }
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
