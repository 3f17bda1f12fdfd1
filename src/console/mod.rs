//! The web console's parts that know nothing of HTTP: its sign-in sessions and its pages
//! (server-rendered HTML from maud, every value escaped; no script but the few lines the
//! pages embed, no request to any other host). The routes are `http::console`'s.

pub mod journey;
pub mod pages;
pub mod samples;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The console's sessions: a random id in an `HttpOnly`, `SameSite=Strict` cookie, each with
/// its own token for state-changing forms (a cross-site request carries neither). Held in
/// memory (a restart signs everyone out) and bounded.
pub struct Sessions {
    by_id: Mutex<HashMap<String, Session>>,
    ttl: Duration,
}

#[derive(Clone)]
struct Session {
    csrf: String,
    expires: Instant,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

impl Sessions {
    /// Most sessions at once: beyond it, the one closest to expiring goes.
    pub const MAX: usize = 256;
    /// How long a session lasts.
    pub const TTL: Duration = Duration::from_secs(8 * 3600);

    pub fn new() -> Self {
        Self {
            by_id: Mutex::new(HashMap::new()),
            ttl: Self::TTL,
        }
    }

    /// A new session: its id (the cookie's value) and its form token.
    pub fn create(&self) -> (String, String) {
        let id = random_token();
        let csrf = random_token();
        let mut all = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        all.retain(|_, s| s.expires > now);
        if all.len() >= Self::MAX {
            if let Some(oldest) = (all.iter())
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone())
            {
                all.remove(&oldest);
            }
        }
        all.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                expires: now + self.ttl,
            },
        );
        (id, csrf)
    }

    /// The form token of a live session.
    pub fn check(&self, id: &str) -> Option<String> {
        let all = self.by_id.lock().unwrap_or_else(|e| e.into_inner());
        let s = all.get(id)?;
        (s.expires > Instant::now()).then(|| s.csrf.clone())
    }

    pub fn remove(&self, id: &str) {
        self.by_id
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id);
    }
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new()
    }
}

/// 244 bits from the operating system's generator (two version 4 uuids), as hex.
fn random_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_bounded_and_their_tokens_differ() {
        let s = Sessions::new();
        let (id, csrf) = s.create();
        assert_ne!(id, csrf);
        assert_eq!(s.check(&id).as_deref(), Some(csrf.as_str()));
        assert!(s.check("nope").is_none());
        for _ in 0..Sessions::MAX + 10 {
            s.create();
        }
        assert!(s.by_id.lock().unwrap().len() <= Sessions::MAX);
        s.remove(&id);
        assert!(s.check(&id).is_none());
    }
}
