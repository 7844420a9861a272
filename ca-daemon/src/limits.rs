//! Abuse limits from policy: per-caller request rate (RESOURCE_EXHAUSTED at the gRPC edge) and
//! per-ticket redemption rate (so a single ticket cannot be hammered even below the lockout).
//!
//! `governor` implements GCRA (a token bucket without a background task); keyed limiters
//! keep one small state per key. Keys are retained for a while after last use; `retain_recent`
//! is called from the maintenance tick so idle keys do not accumulate.

use std::net::IpAddr;
use std::num::NonZeroU32;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Fresh OCSP signatures (nonce requests, several certificates, serials not cached yet) one
/// source address may cost per second; beyond it (and the burst) it gets `tryLater`. A cached
/// answer never counts. A TLS gateway that sends a nonce with every check of a device
/// stays far below this at the care network's scale (a few thousand devices).
pub const OCSP_FRESH_PER_SOURCE_PER_SECOND: u32 = 50;
/// Burst of fresh OCSP signatures one source may spend at once.
pub const OCSP_FRESH_PER_SOURCE_BURST: u32 = 100;

/// The daemon's rate limiters.
pub struct RateLimits {
    per_caller: DefaultKeyedRateLimiter<String>,
    per_ticket: DefaultKeyedRateLimiter<String>,
    ocsp_fresh: DefaultKeyedRateLimiter<IpAddr>,
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
        let fresh = Quota::per_second(nz(OCSP_FRESH_PER_SOURCE_PER_SECOND))
            .allow_burst(nz(OCSP_FRESH_PER_SOURCE_BURST));
        Self {
            per_caller: RateLimiter::keyed(caller),
            per_ticket: RateLimiter::keyed(ticket),
            ocsp_fresh: RateLimiter::keyed(fresh),
        }
    }

    /// Whether a source address may have one more OCSP response signed fresh now.
    pub fn allow_fresh_ocsp(&self, source: IpAddr) -> bool {
        self.ocsp_fresh.check_key(&source).is_ok()
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
        self.ocsp_fresh.retain_recent();
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

    #[test]
    fn fresh_ocsp_budget_is_per_source() {
        let r = RateLimits::new(&pki_policy::Policy::default_policy());
        let a: IpAddr = [192, 0, 2, 1].into();
        let b: IpAddr = [192, 0, 2, 2].into();
        let allowed = (0..OCSP_FRESH_PER_SOURCE_BURST * 2)
            .filter(|_| r.allow_fresh_ocsp(a))
            .count();
        // The burst, plus what refilled while the loop ran (well under one more second).
        let max = (OCSP_FRESH_PER_SOURCE_BURST + OCSP_FRESH_PER_SOURCE_PER_SECOND) as usize;
        assert!(
            allowed >= OCSP_FRESH_PER_SOURCE_BURST as usize && allowed < max,
            "{allowed}"
        );
        assert!(r.allow_fresh_ocsp(b), "another source has its own budget");
    }
}
