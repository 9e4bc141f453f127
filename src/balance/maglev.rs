//! `consistent-hash` and `ip-hash`: a Maglev lookup table (Eisenbud et al.,
//! NSDI 2016) with weights, and optional bounded loads.
//!
//! The table is built when the snapshot is built, over **every configured
//! server** (not only the up ones), each filling slots in proportion to its
//! weight. A key's preference order is the sequence of table slots
//! `h1, h1+h2, h1+2·h2, ...` (mod the prime table size); a pick takes the
//! first server in that order that is up — and, with `hash_balance_factor`,
//! under its load cap; with `slow_start`, past its ramp. So when a server goes
//! down only its own keys move (spread over the others by weight), and no key
//! of a server that stayed up moves. A reload that removes a server from the
//! config rebuilds the table and moves about 1/N of the keys, as Maglev does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{clock_ms, PickContext, SlowStart};
use crate::backend::ServerState;

/// Smallest table (a prime); larger pools get a prime ≥ 20 slots per server.
pub const MIN_TABLE_SIZE: usize = 65_537;
/// Slots probed along a key's preference order before falling back to a scan.
const MAX_PROBES: usize = 128;
const NONE: u32 = u32::MAX;

pub struct Maglev {
    /// Slot → configured-server index.
    table: Box<[u32]>,
    /// Configured-server index → position in `up`, or `NONE`.
    to_up: Box<[u32]>,
    /// Weight of each up server (for load caps).
    up_weights: Box<[u32]>,
    up_weight_total: f64,
    factor: f64,
    /// In-flight over the whole upstream (for the mean load).
    total: Option<Arc<AtomicUsize>>,
    slow: SlowStart,
}

fn is_prime(n: usize) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

/// The table size for `n` servers: a prime ≥ max(65537, 20 n).
pub fn table_size(n: usize) -> usize {
    let mut m = MIN_TABLE_SIZE.max(n.saturating_mul(20));
    while !is_prime(m) {
        m += 1;
    }
    m
}

/// Stable 64-bit hash of a server's address (same on every instance).
fn server_hash(addr: SocketAddr, seed: u64) -> u64 {
    use std::hash::Hasher;
    let mut h = siphasher::sip::SipHasher13::new_with_keys(seed, 0x6d61_676c_6576);
    match addr.ip().to_canonical() {
        std::net::IpAddr::V4(ip) => h.write(&ip.octets()),
        std::net::IpAddr::V6(ip) => h.write(&ip.octets()),
    }
    h.write(&addr.port().to_be_bytes());
    h.finish()
}

/// Mixes a key into a second, independent hash (splitmix64 finaliser).
#[inline]
fn mix(mut x: u64) -> u64 {
    x ^= x >> 30;
    x = x.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Builds the weighted Maglev table for `servers` (address, weight).
pub fn build_table(servers: &[(SocketAddr, u32)], m: usize) -> Vec<u32> {
    let mut table = vec![NONE; m];
    if servers.is_empty() {
        return table;
    }
    let n = servers.len();
    let offset: Vec<u64> = servers
        .iter()
        .map(|(a, _)| server_hash(*a, 1) % m as u64)
        .collect();
    let skip: Vec<u64> = servers
        .iter()
        .map(|(a, _)| server_hash(*a, 2) % (m as u64 - 1) + 1)
        .collect();
    let weight: Vec<u64> = servers
        .iter()
        .map(|(_, w)| u64::from((*w).max(1)))
        .collect();
    let max_w = *weight.iter().max().unwrap_or(&1);
    let mut next = vec![0u64; n];
    let mut count = vec![0u64; n];
    let mut filled = 0;
    let mut iteration = 0u64;
    while filled < m {
        iteration += 1;
        for i in 0..n {
            // Server i may take its (count+1)-th slot once iteration × w/max ≥ count.
            if iteration * weight[i] < count[i] * max_w {
                continue;
            }
            loop {
                let c = ((offset[i] + next[i] * skip[i]) % m as u64) as usize;
                next[i] += 1;
                if table[c] == NONE {
                    table[c] = i as u32;
                    count[i] += 1;
                    filled += 1;
                    break;
                }
            }
            if filled == m {
                break;
            }
        }
    }
    table
}

impl Maglev {
    /// `servers`/`weights`: every configured server; `up`: indices of the up ones.
    pub fn new(
        servers: &[Arc<ServerState>],
        weights: &[u32],
        up: &[usize],
        factor: f64,
        slow: SlowStart,
    ) -> Maglev {
        // Built over the servers sorted by address, so the table depends on
        // the set of servers, not on the order a config or a DNS answer
        // lists them: every instance with the same servers agrees.
        let mut order: Vec<usize> = (0..servers.len()).collect();
        order.sort_by_key(|&i| servers[i].addr);
        let list: Vec<(SocketAddr, u32)> = order
            .iter()
            .map(|&i| (servers[i].addr, weights[i]))
            .collect();
        let table: Vec<u32> = build_table(&list, table_size(list.len()))
            .into_iter()
            .map(|slot| match order.get(slot as usize) {
                Some(&i) => i as u32,
                None => NONE,
            })
            .collect();
        let mut to_up = vec![NONE; servers.len()];
        for (pos, i) in up.iter().enumerate() {
            to_up[*i] = pos as u32;
        }
        let up_weights: Vec<u32> = up.iter().map(|i| weights[*i].max(1)).collect();
        Maglev {
            table: table.into_boxed_slice(),
            to_up: to_up.into_boxed_slice(),
            up_weight_total: up_weights.iter().map(|w| f64::from(*w)).sum(),
            up_weights: up_weights.into_boxed_slice(),
            factor,
            total: servers.first().map(|s| s.group_in_flight_handle()),
            slow,
        }
    }

    /// Table length (a prime).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    #[inline]
    pub fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        if self.up_weights.is_empty() || ctx.up.is_empty() {
            return None;
        }
        let m = self.table.len() as u64;
        let key = ctx.key;
        let k2 = mix(key);
        let h1 = key % m;
        let h2 = k2 % (m - 1) + 1;
        let bounded = self.factor > 0.0;
        let total = match (&self.total, bounded) {
            (Some(t), true) => t.load(Ordering::Relaxed) as f64 + 1.0,
            _ => 0.0,
        };
        let now = if self.slow.enabled() { clock_ms() } else { 0 };
        // Fixed per key, so a ramping server takes over a growing, stable
        // subset of its keys.
        let key_frac = (mix(k2) >> 11) as f64 / (1u64 << 53) as f64;
        let ok = |u: usize| -> bool {
            let s = &ctx.up[u];
            (!bounded || (s.in_flight() as f64) < self.cap(u, total))
                && (!self.slow.enabled() || key_frac < self.slow.factor(s, now))
        };
        let mut first_up = None;
        let mut slot = h1;
        for _ in 0..MAX_PROBES {
            let u = self.to_up[self.table[slot as usize] as usize];
            if u != NONE && (u as usize) < ctx.up.len() {
                let u = u as usize;
                if ok(u) {
                    return Some(u);
                }
                first_up.get_or_insert(u);
            }
            slot = (slot + h2) % m;
        }
        // Almost every server is down, or all probed ones are at their cap:
        // continue over the up servers in a key-determined order.
        let n = ctx.up.len();
        let start = (k2 % n as u64) as usize;
        (0..n)
            .map(|j| (start + j) % n)
            .find(|u| ok(*u))
            .or(first_up)
            .or(Some(start))
    }

    /// Most in-flight requests up server `u` may hold:
    /// ⌈factor × (total + 1) × weight / total weight⌉.
    #[inline]
    fn cap(&self, u: usize, total: f64) -> f64 {
        (self.factor * total * f64::from(self.up_weights[u]) / self.up_weight_total).ceil()
    }
}
