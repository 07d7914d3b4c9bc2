//! Attack detection (the IDS part): the request rate against its own moving baseline, and
//! who is behind a spike, from bounded heavy-hitter sketches (Space-Saving) of clients, /24
//! subnets and paths, plus an approximate count of distinct sources.

use super::identity::ClientKey;
use serde::Serialize;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::SystemTime;

/// Space-Saving: the top-k items of a stream in O(k) memory; counts are upper bounds with a
/// known error.
#[derive(Debug)]
pub struct SpaceSaving<K: Hash + Eq + Clone> {
    k: usize,
    idx: HashMap<K, usize>,
    items: Vec<(K, u64)>,
}

impl<K: Hash + Eq + Clone> SpaceSaving<K> {
    pub fn new(k: usize) -> Self {
        SpaceSaving {
            k: k.max(1),
            idx: HashMap::with_capacity(k),
            items: Vec::with_capacity(k),
        }
    }

    pub fn add(&mut self, key: &K, n: u64) {
        if let Some(&i) = self.idx.get(key) {
            self.items[i].1 += n;
            return;
        }
        if self.items.len() < self.k {
            self.idx.insert(key.clone(), self.items.len());
            self.items.push((key.clone(), n));
            return;
        }
        // Replace the smallest; the newcomer inherits its count (Space-Saving's bound).
        let (mi, _) = self
            .items
            .iter()
            .enumerate()
            .min_by_key(|(_, (_, c))| *c)
            .unwrap_or((0, &self.items[0]));
        let old = self.items[mi].0.clone();
        self.idx.remove(&old);
        self.items[mi].0 = key.clone();
        self.items[mi].1 += n;
        self.idx.insert(key.clone(), mi);
    }

    pub fn top(&self, n: usize) -> Vec<(K, u64)> {
        let mut v = self.items.clone();
        v.sort_by_key(|a| std::cmp::Reverse(a.1));
        v.truncate(n);
        v
    }

    pub fn clear(&mut self) {
        self.idx.clear();
        self.items.clear();
    }
}

/// Approximate distinct count (linear counting over 65,536 bits, lock-free).
#[derive(Debug)]
pub struct Distinct {
    bits: Box<[AtomicU64]>,
}

impl Default for Distinct {
    fn default() -> Self {
        Distinct {
            bits: (0..1024).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl Distinct {
    pub fn add(&self, h: u64) {
        let bit = (h & 0xffff) as usize;
        self.bits[bit / 64].fetch_or(1 << (bit % 64), Ordering::Relaxed);
    }
    pub fn estimate(&self) -> u64 {
        let m = 65536.0f64;
        let zeros: u32 = self
            .bits
            .iter()
            .map(|w| w.load(Ordering::Relaxed).count_zeros())
            .sum();
        if zeros == 0 {
            return 65536 * 8;
        }
        (-m * (f64::from(zeros) / m).ln()).round() as u64
    }
    pub fn clear(&self) {
        for w in self.bits.iter() {
            w.store(0, Ordering::Relaxed);
        }
    }
}

const SHARDS: usize = 8;
const PATH_SAMPLE: u64 = 8;

/// A source and its request count.
#[derive(Debug, Clone, Serialize)]
pub struct Top {
    pub client: String,
    pub count: u64,
}

/// What the detector reports on an attack.
#[derive(Debug, Clone)]
pub struct AttackReport {
    pub start: SystemTime,
    pub peak_rps: f64,
    pub baseline_rps: f64,
    pub sources: u64,
    pub top_sources: Vec<(String, u64)>,
    pub top_subnets: Vec<(String, u64)>,
    pub top_paths: Vec<(String, u64)>,
}

/// A state change the detector's tick reports.
#[derive(Debug, Clone)]
pub enum Transition {
    Started(AttackReport),
    Ended(AttackReport, std::time::Duration),
}

/// Settings for one tick (from the config of the moment).
#[derive(Debug, Clone, Copy)]
pub struct DetectSettings {
    pub factor: f64,
    pub floor_rps: f64,
    pub for_secs: u64,
    pub cooldown_secs: u64,
    pub baseline_secs: u64,
}

#[derive(Debug, Default)]
struct State {
    baseline: f64,
    warmed: bool,
    /// Seconds of normal traffic seen (the baseline is a plain mean until there are enough).
    samples: u64,
    above_secs: u64,
    below_secs: u64,
    last_total: u64,
    attack: Option<(SystemTime, f64, f64)>,
    window_secs: u64,
}

/// The detector.
pub struct Detector {
    total: AtomicU64,
    clients: Vec<Mutex<SpaceSaving<ClientKey>>>,
    subnets: Mutex<SpaceSaving<u128>>,
    paths: Mutex<SpaceSaving<Box<str>>>,
    distinct: Distinct,
    hasher: std::hash::RandomState,
    state: Mutex<State>,
    active: AtomicBool,
    last_rps: AtomicU64,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector")
            .field("active", &self.active())
            .finish()
    }
}

impl Default for Detector {
    fn default() -> Self {
        Detector {
            total: AtomicU64::new(0),
            clients: (0..SHARDS)
                .map(|_| Mutex::new(SpaceSaving::new(64)))
                .collect(),
            subnets: Mutex::new(SpaceSaving::new(64)),
            paths: Mutex::new(SpaceSaving::new(32)),
            distinct: Distinct::default(),
            hasher: std::hash::RandomState::new(),
            state: Mutex::new(State::default()),
            active: AtomicBool::new(false),
            last_rps: AtomicU64::new(0),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Detector {
    /// Is an attack on?
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// Requests in the last full second.
    pub fn last_rps(&self) -> u64 {
        self.last_rps.load(Ordering::Relaxed)
    }

    /// Records one request.
    pub fn record(&self, key: ClientKey, path: &str) {
        let n = self.total.fetch_add(1, Ordering::Relaxed);
        let h = self.hasher.hash_one(key);
        self.distinct.add(h);
        lock(&self.clients[(h as usize) % SHARDS]).add(&key, 1);
        let subnet = key.subnet();
        lock(&self.subnets).add(&super::cidr::ip_bits(subnet.network()), 1);
        if n.is_multiple_of(PATH_SAMPLE) && !path.is_empty() {
            let p: &str = if path.len() > 96 {
                path.get(..96).unwrap_or("/")
            } else {
                path
            };
            let mut paths = lock(&self.paths);
            // Allocation only when a new path enters the sketch.
            if let Some(&i) = paths.idx.get(p) {
                paths.items[i].1 += PATH_SAMPLE;
            } else {
                paths.add(&Box::from(p), PATH_SAMPLE);
            }
        }
    }

    fn report(&self, start: SystemTime, peak: f64, baseline: f64) -> AttackReport {
        let mut all: Vec<(ClientKey, u64)> =
            self.clients.iter().flat_map(|c| lock(c).top(10)).collect();
        all.sort_by_key(|a| std::cmp::Reverse(a.1));
        all.truncate(10);
        let subnets = lock(&self.subnets).top(10);
        let to_net = |bits: u128| {
            let k = ClientKey(bits);
            k.subnet().to_string()
        };
        AttackReport {
            start,
            peak_rps: peak,
            baseline_rps: baseline,
            sources: self.distinct.estimate(),
            top_sources: all.into_iter().map(|(k, c)| (k.to_string(), c)).collect(),
            top_subnets: subnets.into_iter().map(|(b, c)| (to_net(b), c)).collect(),
            top_paths: lock(&self.paths)
                .top(10)
                .into_iter()
                .map(|(p, c)| (p.to_string(), c))
                .collect(),
        }
    }

    fn clear_sketches(&self) {
        for c in &self.clients {
            lock(c).clear();
        }
        lock(&self.subnets).clear();
        lock(&self.paths).clear();
        self.distinct.clear();
    }

    /// Called once a second: updates the baseline and reports an attack's start or end.
    pub fn tick(&self, s: DetectSettings) -> Option<Transition> {
        let total = self.total.load(Ordering::Relaxed);
        let mut st = lock(&self.state);
        let rps = total.saturating_sub(st.last_total) as f64;
        st.last_total = total;
        self.last_rps.store(rps as u64, Ordering::Relaxed);
        let threshold = (st.baseline * s.factor).max(s.floor_rps);
        let above = st.warmed && rps > threshold;
        match st.attack {
            None => {
                if above {
                    st.above_secs += 1;
                } else {
                    st.above_secs = 0;
                    // Learn the baseline only from normal traffic.
                    // A plain running mean until a full window has been seen, then an EWMA.
                    st.samples += 1;
                    let alpha = (1.0 / st.samples as f64).max(1.0 / s.baseline_secs.max(1) as f64);
                    st.baseline = if st.warmed {
                        st.baseline + alpha * (rps - st.baseline)
                    } else {
                        rps
                    };
                    st.warmed = true;
                    st.window_secs += 1;
                    if st.window_secs >= 10 && st.above_secs == 0 {
                        st.window_secs = 0;
                        drop(st);
                        self.clear_sketches();
                        return None;
                    }
                }
                if st.above_secs >= s.for_secs.max(1) {
                    let start = SystemTime::now() - std::time::Duration::from_secs(st.above_secs);
                    st.attack = Some((start, rps, st.baseline));
                    st.above_secs = 0;
                    st.below_secs = 0;
                    self.active.store(true, Ordering::Relaxed);
                    let (b, start) = (st.baseline, start);
                    drop(st);
                    return Some(Transition::Started(self.report(start, rps, b)));
                }
                None
            }
            Some((start, peak, baseline)) => {
                let peak = peak.max(rps);
                st.attack = Some((start, peak, baseline));
                let still = rps > (baseline * s.factor).max(s.floor_rps);
                if still {
                    st.below_secs = 0;
                    return None;
                }
                st.below_secs += 1;
                if st.below_secs < s.cooldown_secs.max(1) {
                    return None;
                }
                st.attack = None;
                st.below_secs = 0;
                st.window_secs = 0;
                self.active.store(false, Ordering::Relaxed);
                drop(st);
                let report = self.report(start, peak, baseline);
                let lasted = SystemTime::now().duration_since(start).unwrap_or_default();
                self.clear_sketches();
                Some(Transition::Ended(report, lasted))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn space_saving_finds_the_heavy_hitters() {
        let mut s = SpaceSaving::new(8);
        for i in 0..10_000u32 {
            s.add(&(i % 1000), 1);
            if i % 2 == 0 {
                s.add(&7777, 1);
            }
            if i % 5 == 0 {
                s.add(&8888, 1);
            }
        }
        let top = s.top(2);
        assert_eq!(top[0].0, 7777);
        assert_eq!(top[1].0, 8888);
        assert!(top[0].1 >= 5000);
    }

    #[test]
    fn distinct_counts_are_close() {
        let d = Distinct::default();
        let h = std::hash::RandomState::new();
        for i in 0..5000u32 {
            d.add(h.hash_one(i));
            d.add(h.hash_one(i));
        }
        let e = d.estimate();
        assert!((4700..5300).contains(&e), "{e}");
    }

    #[test]
    fn a_spike_over_the_baseline_starts_and_ends_an_attack() {
        let d = Detector::default();
        let s = DetectSettings {
            factor: 3.0,
            floor_rps: 50.0,
            for_secs: 2,
            cooldown_secs: 2,
            baseline_secs: 10,
        };
        let feed = |n: u32, src: u128| {
            for i in 0..n {
                d.record(ClientKey(src + u128::from(i % 4)), "/x");
            }
        };
        for _ in 0..5 {
            feed(40, 0xffff_0a00_0001);
            assert!(d.tick(s).is_none());
        }
        feed(400, 0xffff_cb00_7107);
        assert!(d.tick(s).is_none(), "one second is not enough");
        feed(400, 0xffff_cb00_7107);
        match d.tick(s) {
            Some(Transition::Started(r)) => {
                assert!(r.peak_rps >= 400.0);
                assert!((30.0..50.0).contains(&r.baseline_rps), "{}", r.baseline_rps);
                assert_eq!(r.top_sources[0].0.split('.').next(), Some("203"));
            }
            other => panic!("{other:?}"),
        }
        assert!(d.active());
        d.tick(s);
        match d.tick(s) {
            Some(Transition::Ended(..)) => {}
            other => panic!("{other:?}"),
        }
        assert!(!d.active());
    }
}
