//! The in-memory cache behind grant resolution and tool catalogues: entries live for a TTL,
//! are refreshed ahead of expiry, and never come back from a load that an invalidation
//! overtook.
//!
//! An entry younger than the TTL is served as is. Past the TTL (up to twice it), it is still
//! served while exactly one caller reloads it in the background, so a busy gateway never
//! stalls every in-flight request on the same Postgres query when an entry ages out. Past
//! twice the TTL (the reload failed or nothing asked for it), it is a miss, unless the cache
//! has a grace and the entry's last load failed: then it is served as stale (and reloaded)
//! until twice the TTL plus the grace, so a gateway rides out a Postgres outage shorter than
//! that. An invalidation still drops an entry at once, outage or not.
//!
//! Entries are filed by group (a tenant): an invalidation looks at its tenant's entries only,
//! so its cost (and how long it holds the lock lookups wait on) does not grow with the other
//! tenants'. A load that started before an invalidation of its group does not cache what it
//! read (it may be what the invalidation announced as changed); loads of other groups do. Every
//! invalidation takes a number from one sequence and marks its group with it; a load notes the
//! sequence when it starts and keeps its result only if its group's mark is not newer.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockWriteGuard};
use std::time::{Duration, Instant};

struct Slot<V, G> {
    value: Arc<V>,
    loaded: Instant,
    refreshing: AtomicBool,
    /// Its last reload failed (the source could not be reached): the grace applies.
    failed: AtomicBool,
    group: G,
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

/// A TTL cache of shared values, each filed under a group (a tenant), so an invalidation that
/// concerns one group looks at that group's entries only, however many the others hold.
pub struct Cache<K, V, G = ()> {
    ttl: Duration,
    /// How long past twice the TTL an entry whose reload failed is still served.
    grace: Duration,
    max_entries: usize,
    entries: RwLock<Entries<K, V, G>>,
    /// The last number an invalidation took.
    generation: AtomicU64,
}

struct Entries<K, V, G> {
    slots: HashMap<K, Slot<V, G>>,
    /// The keys of each group's slots.
    groups: HashMap<G, HashSet<K>>,
    /// The generation of each group's last invalidation (since `barrier`).
    marks: HashMap<G, u64>,
    /// No load that started before this generation is kept, whatever its group: set by
    /// [`Cache::clear`], and when `marks` would pass its bound.
    barrier: u64,
}

impl<K: Eq + Hash, V, G: Eq + Hash> Entries<K, V, G> {
    fn remove(&mut self, key: &K) {
        if let Some(slot) = self.slots.remove(key) {
            self.unfile(key, &slot.group);
        }
    }

    fn unfile(&mut self, key: &K, group: &G) {
        if let Some(keys) = self.groups.get_mut(group) {
            keys.remove(key);
            if keys.is_empty() {
                self.groups.remove(group);
            }
        }
    }

    fn clear(&mut self) {
        self.slots.clear();
        self.groups.clear();
    }

    /// Records an invalidation of `group` at `generation`; past `bound` groups, every group
    /// counts as invalidated then (the marks are forgotten for one barrier).
    fn mark(&mut self, group: &G, generation: u64, bound: usize)
    where
        G: Clone,
    {
        if self.marks.len() >= bound && !self.marks.contains_key(group) {
            self.marks.clear();
            self.barrier = generation;
        } else {
            self.marks.insert(group.clone(), generation);
        }
    }

    /// Whether a load of `group` that started at `generation` was overtaken by an invalidation.
    fn overtaken(&self, group: &G, generation: u64) -> bool {
        generation < self.barrier || self.marks.get(group).is_some_and(|&m| m > generation)
    }
}

impl<K: Eq + Hash + Clone, V> Cache<K, V, ()> {
    /// [`Cache::insert_in`] for a cache without groups.
    pub fn insert(&self, key: K, value: Arc<V>, generation: u64) {
        self.insert_in((), key, value, generation);
    }
}

impl<K: Eq + Hash + Clone, V, G: Eq + Hash + Clone> Cache<K, V, G> {
    /// An empty cache; past `max_entries` it is cleared rather than grown (a crude bound that
    /// only a flood of distinct keys reaches).
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self::with_grace(ttl, Duration::ZERO, max_entries)
    }

    /// An empty cache whose entries are served up to `grace` past twice the TTL while their
    /// reloads fail ([`Cache::refresh_failed`], [`Cache::fallback`]).
    pub fn with_grace(ttl: Duration, grace: Duration, max_entries: usize) -> Self {
        Self {
            ttl,
            grace,
            max_entries,
            entries: RwLock::new(Entries {
                slots: HashMap::new(),
                groups: HashMap::new(),
                marks: HashMap::new(),
                barrier: 0,
            }),
            generation: AtomicU64::new(0),
        }
    }

    /// The entry of `key`.
    pub fn get(&self, key: &K) -> Lookup<V> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let Some(slot) = entries.slots.get(key) else {
            return Lookup::Miss;
        };
        let age = slot.loaded.elapsed();
        if age < self.ttl {
            Lookup::Fresh(slot.value.clone())
        } else if age < self.ttl * 2
            || age < self.ttl * 2 + self.grace && slot.failed.load(Ordering::Acquire)
        {
            let refresh = !slot.refreshing.swap(true, Ordering::AcqRel);
            Lookup::Stale {
                value: slot.value.clone(),
                refresh,
            }
        } else {
            Lookup::Miss
        }
    }

    /// Take this before loading, and give it to [`Cache::insert_in`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Caches, in `group`, what a load that started at `generation` read, unless an
    /// invalidation of that group came since (then the value is served once, but not kept).
    pub fn insert_in(&self, group: G, key: K, value: Arc<V>, generation: u64) {
        let mut entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        if entries.overtaken(&group, generation) {
            entries.remove(&key);
            return;
        }
        if entries.slots.len() >= self.max_entries && !entries.slots.contains_key(&key) {
            entries.clear();
        }
        // A key filed under another group before leaves it.
        entries.remove(&key);
        entries
            .groups
            .entry(group.clone())
            .or_default()
            .insert(key.clone());
        let slot = Slot {
            value,
            loaded: Instant::now(),
            refreshing: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            group,
        };
        entries.slots.insert(key, slot);
    }

    /// A background reload failed: a later caller may try again, and the grace applies.
    pub fn refresh_failed(&self, key: &K) {
        if let Some(slot) = self
            .entries
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .slots
            .get(key)
        {
            slot.failed.store(true, Ordering::Release);
            slot.refreshing.store(false, Ordering::Release);
        }
    }

    /// After a load of `key` failed: the entry still held, if it is within the grace (twice
    /// the TTL plus the grace), marked so that later lookups serve it as stale at once.
    pub fn fallback(&self, key: &K) -> Option<Arc<V>> {
        let entries = self.entries.read().unwrap_or_else(|e| e.into_inner());
        let slot = entries.slots.get(key)?;
        if slot.loaded.elapsed() >= self.ttl * 2 + self.grace {
            return None;
        }
        slot.failed.store(true, Ordering::Release);
        Some(slot.value.clone())
    }

    /// A new generation for an invalidation, and the write lock it is recorded under.
    fn next_generation(&self) -> (u64, RwLockWriteGuard<'_, Entries<K, V, G>>) {
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let entries = self.entries.write().unwrap_or_else(|e| e.into_inner());
        (generation, entries)
    }

    /// The write lock, with `group` marked invalidated now.
    fn invalidate(&self, group: &G) -> RwLockWriteGuard<'_, Entries<K, V, G>> {
        let (generation, mut entries) = self.next_generation();
        entries.mark(group, generation, self.max_entries);
        entries
    }

    /// Drops the entry of `key` in `group`.
    pub fn remove_in(&self, group: &G, key: &K) {
        self.invalidate(group).remove(key);
    }

    /// Keeps only the entries of `group` that `keep` accepts; other groups' entries are not
    /// looked at.
    pub fn retain_in(&self, group: &G, mut keep: impl FnMut(&V) -> bool) {
        let mut entries = self.invalidate(group);
        let Some(mut keys) = entries.groups.remove(group) else {
            return;
        };
        keys.retain(|key| match entries.slots.get(key) {
            Some(slot) if keep(&slot.value) => true,
            Some(_) => {
                entries.slots.remove(key);
                false
            }
            None => false,
        });
        if !keys.is_empty() {
            entries.groups.insert(group.clone(), keys);
        }
    }

    /// Drops everything; no load that started before is kept.
    pub fn clear(&self) {
        let (generation, mut entries) = self.next_generation();
        entries.clear();
        entries.marks.clear();
        entries.barrier = generation;
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
    fn an_entry_whose_reloads_fail_is_served_through_the_grace_only() {
        let ttl = Duration::from_millis(100);
        let cache: Cache<u8, &str> = Cache::with_grace(ttl, ttl * 3, 10);
        for k in [1, 2, 3] {
            cache.insert(k, Arc::new("a"), cache.generation());
        }
        std::thread::sleep(ttl * 2 + Duration::from_millis(5));
        // Past twice the TTL: a miss, unless a reload failed.
        assert!(matches!(cache.get(&1), Lookup::Miss));
        cache.refresh_failed(&1);
        assert!(matches!(cache.get(&1), Lookup::Stale { refresh: true, .. }));
        // A load after a miss that failed falls back on the entry, and marks it.
        assert!(cache.fallback(&2).is_some_and(|v| *v == "a"));
        assert!(matches!(cache.get(&2), Lookup::Stale { .. }));
        assert!(matches!(cache.get(&3), Lookup::Miss));
        // Never past the grace, nor once an invalidation dropped the entry.
        cache.remove_in(&(), &2);
        assert!(cache.fallback(&2).is_none());
        std::thread::sleep(ttl * 3 + Duration::from_millis(10));
        assert!(matches!(cache.get(&1), Lookup::Miss));
        assert!(cache.fallback(&3).is_none());
        // Without a grace, a failed load falls back on nothing past twice the TTL.
        let strict: Cache<u8, &str> = Cache::new(ttl, 10);
        strict.insert(1, Arc::new("a"), strict.generation());
        std::thread::sleep(ttl * 2 + Duration::from_millis(5));
        assert!(strict.fallback(&1).is_none());
    }

    #[test]
    fn a_load_overtaken_by_an_invalidation_of_its_group_is_not_kept() {
        let cache: Cache<u8, &str, char> = Cache::new(Duration::from_secs(60), 3);
        let kept = |key| matches!(cache.get(&key), Lookup::Fresh(_));
        // Loads that started before an invalidation of 'a': only the other group's are kept.
        let before = cache.generation();
        cache.retain_in(&'a', |_| true);
        cache.insert_in('a', 1, Arc::new("stale"), before);
        cache.insert_in('b', 2, Arc::new("b"), before);
        assert!(!kept(1) && kept(2));
        // One that started after it is kept; removing a key marks its group as well.
        cache.insert_in('a', 1, Arc::new("a"), cache.generation());
        assert!(kept(1));
        let before = cache.generation();
        cache.remove_in(&'c', &9);
        cache.insert_in('c', 9, Arc::new("stale"), before);
        cache.insert_in('a', 3, Arc::new("a"), before);
        assert!(!kept(9) && kept(3));
        // A clear overtakes every load in flight, whatever its group.
        let before = cache.generation();
        cache.clear();
        cache.insert_in('d', 4, Arc::new("stale"), before);
        assert!(!kept(4));
        // Past the bound on marks (3 groups here), every group counts as invalidated.
        let before = cache.generation();
        for group in ['a', 'b', 'c', 'e'] {
            cache.retain_in(&group, |_| true);
        }
        cache.insert_in('f', 5, Arc::new("stale"), before);
        assert!(!kept(5));
        assert!(cache.entries.read().unwrap().marks.len() <= 3);
        cache.insert_in('f', 5, Arc::new("f"), cache.generation());
        assert!(kept(5));
    }

    #[test]
    fn an_invalidation_looks_at_its_group_only() {
        let cache: Cache<u8, u8, char> = Cache::new(Duration::from_secs(60), 10);
        for (group, key) in [('a', 1), ('a', 2), ('b', 3)] {
            cache.insert_in(group, key, Arc::new(key), cache.generation());
        }
        let mut seen = Vec::new();
        cache.retain_in(&'a', |v| {
            seen.push(*v);
            *v != 1
        });
        seen.sort_unstable();
        assert_eq!(seen, [1, 2]);
        assert!(matches!(cache.get(&1), Lookup::Miss));
        assert!(matches!(cache.get(&2), Lookup::Fresh(_)));
        assert!(matches!(cache.get(&3), Lookup::Fresh(_)));
        // A key refiled under another group leaves the first; removed keys leave theirs.
        cache.insert_in('b', 2, Arc::new(2), cache.generation());
        cache.retain_in(&'a', |_| false);
        assert!(matches!(cache.get(&2), Lookup::Fresh(_)));
        cache.remove_in(&'b', &3);
        let entries = cache.entries.read().unwrap();
        assert_eq!(entries.groups.len(), 1);
        assert_eq!(entries.groups[&'b'], HashSet::from([2]));
    }

    #[test]
    fn it_is_cleared_rather_than_grown_past_its_bound() {
        let cache: Cache<u8, u8> = Cache::new(Duration::from_secs(60), 2);
        for k in 0..3 {
            cache.insert(k, Arc::new(k), cache.generation());
        }
        assert!(matches!(cache.get(&0), Lookup::Miss));
        assert!(matches!(cache.get(&2), Lookup::Fresh(_)));
        assert_eq!(cache.entries.read().unwrap().groups[&()].len(), 1);
    }
}
