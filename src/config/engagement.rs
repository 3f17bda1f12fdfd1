//! `[engagement]`: how opens and clicks of tracked mail are judged and what is sent of the
//! machines' (see [`crate::engagement`]).

use serde::Deserialize;
use std::path::PathBuf;

/// What happens to an open or a click judged a machine's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachinePolicy {
    /// Sent to Pega with `machine_generated: true` (and its `machine_reason`).
    #[default]
    Flag,
    /// Recorded and counted, not sent to Pega.
    Drop,
}

/// Which of a personal broadcast's opens are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OpensPolicy {
    /// Every open (each is an Impression in CDH's format).
    #[default]
    All,
    /// Only a personal broadcast's first open by a person; later ones are recorded, not sent.
    First,
}

/// `[engagement]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngagementSettings {
    /// Apple's Private Relay egress list (the CSV Apple publishes; `pegabridge engagement
    /// fetch-ranges` downloads it): the bare `Mozilla/5.0` from these addresses is Apple Mail
    /// Privacy Protection. Relative to the configuration file.
    pub apple_relay_ranges: Option<PathBuf>,
    pub machine: MachinePolicy,
    pub opens: OpensPolicy,
    /// The same tracked link or pixel fetched again by the same client within this many
    /// seconds records nothing new (the redirect and the pixel still answer).
    pub repeat_window_secs: u64,
    /// A fetch of a tracked link or pixel sooner than this after the message was sent is a
    /// machine's (gateways scan mail on delivery); 0 turns it off.
    pub too_soon_secs: u64,
    /// Tracked fetches are judged this long after they arrive, so a scanner's burst over every
    /// link is judged as a whole (the redirect and the pixel answer at once; the event keeps
    /// the fetch's time). At most 10; 0 judges at once.
    pub hold_secs: u64,
}

impl Default for EngagementSettings {
    fn default() -> Self {
        Self {
            apple_relay_ranges: None,
            machine: MachinePolicy::Flag,
            opens: OpensPolicy::All,
            repeat_window_secs: 60,
            too_soon_secs: 10,
            hold_secs: 2,
        }
    }
}

impl EngagementSettings {
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.hold_secs > 10 {
            problems.push(format!(
                "engagement.hold_secs: {} is more than 10 (events would wait long, and be lost with the process)",
                self.hold_secs
            ));
        }
        if let Some(file) = &self.apple_relay_ranges {
            if let Err(e) = crate::engagement::relay::Watched::open(file) {
                problems.push(e);
            }
        }
        problems
    }
}
