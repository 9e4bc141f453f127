//! `least-connections`: the server with the fewest in-flight requests
//! relative to its weight; ties go to the one picked least recently (so equal
//! servers rotate).
//!
//! A scan would cost O(n) per pick. Instead each built strategy keeps a
//! tournament tree over its up servers: leaf `i` holds the key
//! `((in_flight + 1) / effective weight, last pick)` and each inner node the
//! index of the smallest leaf below it. A pick reads the root (O(1)); every
//! in-flight change on a server walks its leaf's path to the root (O(log n)),
//! through the `LoadHook` the newest tree registers on each of its servers.
//! Updates are lock-free: two concurrent updates of one subtree can leave an
//! inner node one update behind until the next change below it, so under
//! heavy concurrency the choice is "least loaded or very nearly so".

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use super::{clock_ms, SlowStart};
use crate::backend::{LoadHook, LoadTree, ServerState};

const NONE: u32 = u32::MAX;
/// Bits of the key that hold the pick sequence (the tie-breaker).
const SEQ_BITS: u32 = 24;
const SCORE_MAX: u64 = (1 << (64 - SEQ_BITS)) - 1;

pub(crate) struct Tree {
    /// Leaf slots, a power of two ≥ the number of servers.
    size: usize,
    weights: Box<[u32]>,
    keys: Box<[AtomicU64]>,
    /// Pick sequence number of each leaf's last pick (wrapping).
    picked: Box<[AtomicU32]>,
    /// `nodes[1..size]`: index of the minimal leaf below; `nodes[0]` unused.
    nodes: Box<[AtomicU32]>,
    seq: AtomicU32,
    slow: SlowStart,
}

pub struct LeastConn {
    tree: Arc<Tree>,
}

impl LeastConn {
    pub fn new(up: &[Arc<ServerState>], weights: &[u32], slow: SlowStart) -> LeastConn {
        let n = up.len();
        let size = n.next_power_of_two().max(1);
        let tree = Arc::new(Tree {
            size,
            weights: weights.into(),
            keys: (0..size).map(|_| AtomicU64::new(u64::MAX)).collect(),
            picked: (0..n).map(|_| AtomicU32::new(0)).collect(),
            nodes: (0..size).map(|_| AtomicU32::new(NONE)).collect(),
            seq: AtomicU32::new(0),
            slow,
        });
        for (i, s) in up.iter().enumerate() {
            tree.picked[i].store(i as u32, Ordering::Relaxed);
            tree.keys[i].store(tree.key(i, s), Ordering::Relaxed);
        }
        tree.seq.store(n as u32, Ordering::Relaxed);
        for node in (1..size).rev() {
            tree.nodes[node].store(tree.min_of(node), Ordering::Relaxed);
        }
        for (i, s) in up.iter().enumerate() {
            s.load.hook.store(Some(Arc::new(LoadHook {
                tree: tree.clone() as Arc<dyn LoadTree>,
                leaf: i as u32,
            })));
        }
        LeastConn { tree }
    }

    #[inline]
    pub fn pick(&self) -> Option<usize> {
        let t = &*self.tree;
        let i = if t.size == 1 {
            0
        } else {
            t.nodes[1].load(Ordering::Relaxed) as usize
        };
        if i >= t.weights.len() {
            return None;
        }
        let seq = t.seq.fetch_add(1, Ordering::Relaxed);
        t.picked[i].store(seq, Ordering::Relaxed);
        // The in-flight guard taken next updates the key through the hook.
        Some(i)
    }
}

impl Tree {
    fn key(&self, i: usize, s: &ServerState) -> u64 {
        let mut w = f64::from(self.weights[i].max(1)) * 1000.0;
        if self.slow.enabled() {
            w *= self.slow.factor(s, clock_ms());
        }
        let score = ((((s.in_flight() as u64 + 1) << 30) as f64 / w) as u64).min(SCORE_MAX);
        let age = self.picked[i].load(Ordering::Relaxed) & ((1 << SEQ_BITS) - 1);
        (score << SEQ_BITS) | u64::from(age)
    }

    /// The minimal leaf among the two children of `node`.
    #[inline]
    fn min_of(&self, node: usize) -> u32 {
        let child = |c: usize| -> u32 {
            if c >= self.size {
                (c - self.size) as u32
            } else {
                self.nodes[c].load(Ordering::Relaxed)
            }
        };
        let (l, r) = (child(2 * node), child(2 * node + 1));
        let key = |i: u32| {
            self.keys
                .get(i as usize)
                .map_or(u64::MAX, |k| k.load(Ordering::Relaxed))
        };
        if key(r) < key(l) {
            r
        } else {
            l
        }
    }

    fn update_leaf(&self, leaf: usize, s: &ServerState) {
        if leaf >= self.weights.len() {
            return;
        }
        self.keys[leaf].store(self.key(leaf, s), Ordering::Relaxed);
        let mut node = (self.size + leaf) / 2;
        while node >= 1 {
            self.nodes[node].store(self.min_of(node), Ordering::Relaxed);
            node /= 2;
        }
    }
}

impl LoadTree for Tree {
    #[inline]
    fn update(&self, leaf: usize, server: &ServerState) {
        self.update_leaf(leaf, server);
    }
}
