//! Abuse limits from policy: per-caller request rate (RESOURCE_EXHAUSTED at the gRPC edge) and
//! per-ticket redemption rate (so a single ticket cannot be hammered even below the lockout).
//!
//! `governor` implements GCRA (a token bucket without a background task); keyed limiters
//! keep one small state per key. Keys are retained for a while after last use; `retain_recent`
//! is called from the maintenance tick so idle keys do not accumulate.

use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// The daemon's rate limiters.
pub struct RateLimits {
    per_caller: DefaultKeyedRateLimiter<String>,
    per_ticket: DefaultKeyedRateLimiter<String>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits").finish_non_exhaustive()
    }
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN)
}

impl RateLimits {
    /// Limiters for the policy's numbers.
    pub fn new(policy: &pki_policy::Policy) -> Self {
        let l = &policy.limits;
        let caller =
            Quota::per_second(nz(l.rate_per_caller_per_second)).allow_burst(nz(l.rate_burst));
        let per_min = policy.tickets.rate_per_ticket_per_minute;
        let ticket = Quota::per_minute(nz(per_min)).allow_burst(nz(per_min));
        Self {
            per_caller: RateLimiter::keyed(caller),
            per_ticket: RateLimiter::keyed(ticket),
        }
    }

    /// Whether a caller (role:name) may make one more request now.
    pub fn allow_caller(&self, caller: &str) -> bool {
        self.per_caller.check_key(&caller.to_string()).is_ok()
    }

    /// Whether a ticket may be tried once more now.
    pub fn allow_ticket(&self, number: &str) -> bool {
        self.per_ticket.check_key(&number.to_string()).is_ok()
    }

    /// Drops state of keys that are back to a full bucket.
    pub fn retain_recent(&self) {
        self.per_caller.retain_recent();
        self.per_ticket.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_ticket_limit_bites_and_is_per_key() {
        let mut text = String::from("[tickets]\nrate_per_ticket_per_minute = 3\n");
        text.push_str("[limits]\nrate_per_caller_per_second = 1\nrate_burst = 2\n");
        let p = pki_policy::Policy::from_toml_str(&text).expect("policy");
        let r = RateLimits::new(&p);
        assert!((0..3).all(|_| r.allow_ticket("11111111")));
        assert!(!r.allow_ticket("11111111"));
        assert!(r.allow_ticket("22222222"));
        assert!(r.allow_caller("portal:a") && r.allow_caller("portal:a"));
        assert!(!r.allow_caller("portal:a"));
        assert!(r.allow_caller("portal:b"));
    }
}
