//! The in-memory cache behind grant resolution and tool catalogues: entries live for a TTL,
//! are refreshed ahead of expiry, and never come back from a load that an invalidation
//! overtook.
//!
//! An entry younger than the TTL is served as is. Past the TTL (up to twice it), it is still
//! served while exactly one caller reloads it in the background, so a busy gateway never
//! stalls every in-flight request on the same Postgres query when an entry ages out. Past
//! twice the TTL (the reload failed or nothing asked for it), it is a miss. A generation
//! counter, bumped by every invalidation, stops a load that started before an invalidation
//! from caching what it read.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

struct Slot<V> {
    value: Arc<V>,
    loaded: Instant,
    refreshing: AtomicBool,
}

/// What the cache holds for a key.
pub enum Lookup<V> {
    /// Younger than the TTL.
    Fresh(Arc<V>),
    /// Past the TTL but usable. `refresh` is true for exactly one caller, which must reload the
    /// entry and then [`Cache::insert`] it (or [`Cache::remove`] it, or report
    /// [`Cache::refresh_failed`]).
    Stale {
        /// The entry.
        value: Arc<V>,
        /// This caller reloads it.
        refresh: bool,
    },
    /// Absent or too old: load it.
    Miss,
}

/// A TTL cache of shared values.
pub struct Cache<K, V> {
    ttl: Duration,
    max_entries: usize,
    entries: RwLock<HashMap<K, Slot<V>>>,
    generation: AtomicU64,
}

impl<K: Eq + Hash, V> Cache<K, V> {
    /// An empty cache; past `max_entries` it is cleared rather than grown (a crude bound that
    /// only a flood of distinct keys reaches).
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            ttl,
            max_entries,
            entries: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    /// The entry of `key`.
    pub fn get(&self, key: &K) -> Lookup<V> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let Some(slot) = entries.get(key) else {
            return Lookup::Miss;
        };
        let age = slot.loaded.elapsed();
        if age < self.ttl {
            Lookup::Fresh(slot.value.clone())
        } else if age < self.ttl * 2 {
            let refresh = !slot.refreshing.swap(true, Ordering::AcqRel);
            Lookup::Stale {
                value: slot.value.clone(),
                refresh,
            }
        } else {
            Lookup::Miss
        }
    }

    /// Take this before loading, and give it to [`Cache::insert`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Caches what a load that started at `generation` read, unless an invalidation came
    /// since (then the value is served once, but not kept).
    pub fn insert(&self, key: K, value: Arc<V>, generation: u64) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(Ordering::Acquire) != generation {
            entries.remove(&key);
            return;
        }
        if entries.len() >= self.max_entries && !entries.contains_key(&key) {
            entries.clear();
        }
        entries.insert(
            key,
            Slot {
                value,
                loaded: Instant::now(),
                refreshing: AtomicBool::new(false),
            },
        );
    }

    /// A background reload failed: a later caller may try again.
    pub fn refresh_failed(&self, key: &K) {
        if let Some(slot) = self
            .entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
        {
            slot.refreshing.store(false, Ordering::Release);
        }
    }

    /// Drops one entry.
    pub fn remove(&self, key: &K) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// Keeps only the entries `keep` accepts.
    pub fn retain(&self, mut keep: impl FnMut(&K, &V) -> bool) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, slot| keep(k, &slot.value));
    }

    /// Drops everything.
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.entries
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_go_fresh_then_stale_with_one_refresher_then_missing() {
        let cache: Cache<u8, &str> = Cache::new(Duration::from_millis(40), 10);
        assert!(matches!(cache.get(&1), Lookup::Miss));
        cache.insert(1, Arc::new("a"), cache.generation());
        assert!(matches!(cache.get(&1), Lookup::Fresh(v) if *v == "a"));
        std::thread::sleep(Duration::from_millis(45));
        assert!(matches!(cache.get(&1), Lookup::Stale { refresh: true, .. }));
        assert!(matches!(
            cache.get(&1),
            Lookup::Stale { refresh: false, .. }
        ));
        cache.refresh_failed(&1);
        assert!(matches!(cache.get(&1), Lookup::Stale { refresh: true, .. }));
        std::thread::sleep(Duration::from_millis(40));
        assert!(matches!(cache.get(&1), Lookup::Miss));
    }

    #[test]
    fn a_load_overtaken_by_an_invalidation_is_not_kept() {
        let cache: Cache<u8, &str> = Cache::new(Duration::from_secs(60), 10);
        let generation = cache.generation();
        cache.retain(|_, _| true);
        cache.insert(1, Arc::new("stale"), generation);
        assert!(matches!(cache.get(&1), Lookup::Miss));
    }

    #[test]
    fn it_is_cleared_rather_than_grown_past_its_bound() {
        let cache: Cache<u8, u8> = Cache::new(Duration::from_secs(60), 2);
        for k in 0..3 {
            cache.insert(k, Arc::new(k), cache.generation());
        }
        assert!(matches!(cache.get(&0), Lookup::Miss));
        assert!(matches!(cache.get(&2), Lookup::Fresh(_)));
    }
}
