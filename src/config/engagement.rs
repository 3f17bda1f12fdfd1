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

/// `[engagement]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngagementSettings {
    /// Apple's Private Relay egress list (the CSV Apple publishes; `pegabridge engagement
    /// fetch-ranges` downloads it): the bare `Mozilla/5.0` from these addresses is Apple Mail
    /// Privacy Protection. Relative to the configuration file.
    pub apple_relay_ranges: Option<PathBuf>,
    pub machine: MachinePolicy,
    /// The same tracked link or pixel fetched again by the same client within this many
    /// seconds records nothing new (the redirect and the pixel still answer).
    pub repeat_window_secs: u64,
}

impl Default for EngagementSettings {
    fn default() -> Self {
        Self {
            apple_relay_ranges: None,
            machine: MachinePolicy::Flag,
            repeat_window_secs: 60,
        }
    }
}

impl EngagementSettings {
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(file) = &self.apple_relay_ranges {
            if let Err(e) = crate::engagement::relay::Watched::open(file) {
                problems.push(e);
            }
        }
        problems
    }
}
