//! Recent request rate per client, for fair admission: when a pool is saturated, the clients
//! with the lowest recent rate go first and the heaviest are shed first.
//!
//! A fixed-size, lock-free count-min sketch of exponentially decaying counters (half-life
//! 1 second): memory stays bounded whatever the number of clients, recording is two
//! compare-and-swap loops, and a collision can only make a client look heavier, never lighter.

use crate::clock::now_ms;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

const ROW: usize = 1 << 14;
const HALF_LIFE_MS: f32 = 1000.0;
/// The score a client with no recent history starts from: that of ~3.5 requests/s.
const NEW_CLIENT_PRIOR: f32 = 5.0;

/// The per-client rate sketch.
pub struct ClientRates {
    rows: [Box<[AtomicU64]>; 2],
    /// One keyed hash per client; the rows take different bits of it.
    hasher: std::hash::RandomState,
}

impl std::fmt::Debug for ClientRates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientRates")
    }
}

impl Default for ClientRates {
    fn default() -> Self {
        let row = || {
            (0..ROW)
                .map(|_| AtomicU64::new(0))
                .collect::<Vec<_>>()
                .into_boxed_slice()
        };
        ClientRates {
            rows: [row(), row()],
            hasher: std::hash::RandomState::new(),
        }
    }
}

fn pack(t: u32, score: f32) -> u64 {
    (u64::from(t) << 32) | u64::from(score.to_bits())
}

fn unpack(v: u64) -> (u32, f32) {
    ((v >> 32) as u32, f32::from_bits(v as u32))
}

fn decayed(score: f32, then: u32, now: u32) -> f32 {
    let dt = now.wrapping_sub(then) as f32;
    if dt <= 0.0 {
        score
    } else {
        score * (-dt / HALF_LIFE_MS * std::f32::consts::LN_2).exp()
    }
}

impl ClientRates {
    fn slots(&self, client: &IpAddr) -> [&AtomicU64; 2] {
        let mut h = self.hasher.build_hasher();
        client.hash(&mut h);
        let h = std::hash::Hasher::finish(&h);
        // Low and high halves of one 64-bit keyed hash: independent indexes for the two rows.
        let (i0, i1) = (h as usize & (ROW - 1), (h >> 32) as usize & (ROW - 1));
        [&self.rows[0][i0], &self.rows[1][i1]]
    }

    /// Records one request and returns the client's recent rate score (≈ requests in the
    /// last ~1.4 s), the minimum over the sketch rows.
    pub fn record(&self, client: &IpAddr) -> f32 {
        let now = now_ms() as u32;
        let mut best = f32::MAX;
        for slot in self.slots(client) {
            let mut cur = slot.load(Ordering::Relaxed);
            loop {
                let (t, s) = unpack(cur);
                let d = decayed(s, t, now);
                // A client not seen recently starts as moderately heavy (NEW_CLIENT_PRIOR):
                // during a flood from many fresh addresses, users with a light history go
                // first; a new client's score falls to its real rate within a few seconds.
                let next = if d < 0.05 { NEW_CLIENT_PRIOR } else { d } + 1.0;
                match slot.compare_exchange_weak(
                    cur,
                    pack(now, next),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        best = best.min(next);
                        break;
                    }
                    Err(v) => cur = v,
                }
            }
        }
        best
    }

    /// The client's current score without recording a request.
    pub fn score(&self, client: &IpAddr) -> f32 {
        let now = now_ms() as u32;
        self.slots(client)
            .iter()
            .map(|s| {
                let (t, v) = unpack(s.load(Ordering::Relaxed));
                decayed(v, t, now)
            })
            .fold(f32::MAX, f32::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heavy_clients_score_higher_than_light_ones() {
        let r = ClientRates::default();
        let heavy: IpAddr = "127.0.1.1".parse().unwrap();
        let light: IpAddr = "127.0.2.1".parse().unwrap();
        for _ in 0..500 {
            r.record(&heavy);
        }
        let l = r.record(&light);
        assert!(
            l <= 1.0 + NEW_CLIENT_PRIOR,
            "a new client starts at the prior: {l}"
        );
        assert!(r.score(&heavy) > 100.0);
        // A light client's score falls to its real rate.
        let then = r.score(&light);
        assert!(then > 1.0);
        assert!(r.score(&heavy) > 100.0);
    }
}
