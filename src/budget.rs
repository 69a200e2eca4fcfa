//! Per-identity publish budgets (`limits.identity_publish_rate`, SPEC §9): one token
//! bucket per user (per IP when anonymous, per /64 for IPv6) shared by all of its
//! connections, so opening more connections does not multiply what `client_rate` allows.
//!
//! Owns: the table of identities (a governor keyed limiter). Invariant: the table never
//! holds more than `limits.identity_publish_table` identities. When it is full, identities
//! whose bucket has refilled (indistinguishable from a new one) are forgotten, at most once
//! per [`SWEEP_EVERY`]; if none has, a new identity is refused rather than added.

use std::collections::HashMap;
use std::hash::RandomState;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use governor::clock::DefaultClock;
use governor::nanos::Nanos;
use governor::state::StateStore;
use governor::state::keyed::{HashMapStateStore, ShrinkableKeyedStateStore};
use governor::{Quota, RateLimiter};

use crate::config::{LimitsConfig, Rate};

/// Least time between two sweeps of a full table: a sweep walks every entry, and a
/// stream of new identities at the cap must not make each of them pay for one.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Whose budget a publish spends.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    User(Arc<str>),
    /// Anonymous clients, by address; IPv6 by its /64 (one host usually holds a whole /64).
    Ip(IpAddr),
}

impl Key {
    pub fn of(user: Option<&str>, ip: IpAddr) -> Self {
        match (user, ip.to_canonical()) {
            (Some(user), _) => Self::User(user.into()),
            (None, IpAddr::V6(v6)) => Self::Ip(IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into())),
            (None, v4) => Self::Ip(v4),
        }
    }
}

/// Why a publish was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("this identity publishes too fast; slow down")]
    OverBudget,
    #[error("too many identities are publishing at once; retry later")]
    TableFull,
}

impl Refusal {
    /// The metric label.
    pub fn reason(self) -> &'static str {
        match self {
            Self::OverBudget => "over_budget",
            Self::TableFull => "table_full",
        }
    }
}

/// The budgets of every identity; rebuilt (all buckets full again) when a reload changes
/// the rate or the table size.
pub struct Budgets(ArcSwap<Table>);

impl Default for Budgets {
    fn default() -> Self {
        Self(ArcSwap::from_pointee(Table::new(Rate { per_second: 20, burst: 40 }, 100_000)))
    }
}

impl Budgets {
    /// Takes one publish from `key`'s budget under the current `limits`.
    pub fn spend(&self, key: &Key, limits: &LimitsConfig) -> Result<(), Refusal> {
        let (rate, cap) = (limits.identity_publish_rate, limits.identity_publish_table);
        let mut table = self.0.load_full();
        if table.rate != rate || table.cap != cap {
            table = Arc::new(Table::new(rate, cap));
            self.0.store(Arc::clone(&table));
        }
        table.spend(key)
    }

    /// Identities in the table now.
    pub fn len(&self) -> usize {
        self.0.load().limiter.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

struct Table {
    rate: Rate,
    cap: usize,
    limiter: RateLimiter<Key, Shared, DefaultClock>,
    /// The limiter's own map, for the "is this identity known" question governor has no
    /// call for.
    store: Arc<HashMapStateStore<Key>>,
    /// Serialises spends so the check against the cap and the insertion are one step;
    /// holds the time of the last sweep.
    gate: Mutex<Option<Instant>>,
}

impl Table {
    fn new(rate: Rate, cap: usize) -> Self {
        let per_second = NonZeroU32::new(rate.per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(rate.burst).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(per_second).allow_burst(burst);
        let store: Arc<HashMapStateStore<Key>> =
            Arc::new(HashMapStateStore::new(HashMap::with_hasher(RandomState::new())));
        let limiter = RateLimiter::new(quota, Shared(Arc::clone(&store)), DefaultClock::default());
        Self { rate, cap, limiter, store, gate: Mutex::new(None) }
    }

    fn spend(&self, key: &Key) -> Result<(), Refusal> {
        let mut last_sweep = self.gate.lock().unwrap_or_else(PoisonError::into_inner);
        if self.limiter.len() >= self.cap && !self.store.lock().contains_key(key) {
            let now = Instant::now();
            if last_sweep.is_none_or(|at| now.duration_since(at) >= SWEEP_EVERY) {
                *last_sweep = Some(now);
                self.limiter.retain_recent();
            }
            if self.limiter.len() >= self.cap {
                return Err(Refusal::TableFull);
            }
        }
        self.limiter.check_key(key).map_err(|_| Refusal::OverBudget)
    }
}

/// The limiter's store, shared with [`Table::store`].
struct Shared(Arc<HashMapStateStore<Key>>);

impl StateStore for Shared {
    type Key = Key;

    fn measure_and_replace<T, F, E>(&self, key: &Key, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        self.0.measure_and_replace(key, f)
    }
}

impl ShrinkableKeyedStateStore<Key> for Shared {
    fn retain_recent(&self, drop_below: Nanos) {
        self.0.retain_recent(drop_below);
    }

    fn len(&self) -> usize {
        self.0.len()
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(per_second: u32, burst: u32, table: usize) -> LimitsConfig {
        let mut l = crate::Config::from_yaml("", &|_| None).unwrap().limits;
        l.identity_publish_rate = Rate { per_second, burst };
        l.identity_publish_table = table;
        l
    }

    #[test]
    fn one_budget_per_identity() {
        let b = Budgets::default();
        let l = limits(1, 3, 10);
        let alice = Key::of(Some("alice"), "10.0.0.1".parse().unwrap());
        let alice_elsewhere = Key::of(Some("alice"), "10.0.0.2".parse().unwrap());
        assert_eq!(alice, alice_elsewhere);
        for _ in 0..3 {
            assert_eq!(b.spend(&alice, &l), Ok(()));
        }
        assert_eq!(b.spend(&alice_elsewhere, &l), Err(Refusal::OverBudget));
        let bob = Key::of(Some("bob"), "10.0.0.1".parse().unwrap());
        assert_eq!(b.spend(&bob, &l), Ok(()));
    }

    #[test]
    fn anonymous_by_address_and_ipv6_by_prefix() {
        let a = Key::of(None, "2001:db8::1".parse().unwrap());
        let b = Key::of(None, "2001:db8::ffff:2".parse().unwrap());
        let c = Key::of(None, "2001:db8:0:1::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(Key::of(None, "::ffff:10.0.0.1".parse().unwrap()), Key::of(None, "10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn a_full_table_refuses_new_identities_and_never_grows() {
        let b = Budgets::default();
        let l = limits(1, 5, 2);
        let key = |n: u8| Key::of(None, IpAddr::from([10, 0, 0, n]));
        assert_eq!(b.spend(&key(1), &l), Ok(()));
        assert_eq!(b.spend(&key(2), &l), Ok(()));
        // Both have spent: neither is forgettable, so a third is refused.
        assert_eq!(b.spend(&key(3), &l), Err(Refusal::TableFull));
        assert_eq!(b.len(), 2);
        // Known identities go on spending.
        assert_eq!(b.spend(&key(1), &l), Ok(()));
    }

    #[test]
    fn a_reload_with_another_rate_starts_over() {
        let b = Budgets::default();
        let alice = Key::User("alice".into());
        assert_eq!(b.spend(&alice, &limits(1, 1, 10)), Ok(()));
        assert_eq!(b.spend(&alice, &limits(1, 1, 10)), Err(Refusal::OverBudget));
        assert_eq!(b.spend(&alice, &limits(1, 2, 10)), Ok(()));
    }
}
