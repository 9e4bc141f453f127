//! Per-status-code counters that resolve their label handles once and are
//! lock-free after that.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use prometheus::{IntCounter, IntCounterVec};

use super::remove_matching;

/// Status codes common enough to keep a resolved counter each.
pub(super) const COMMON_CODES: [u16; 20] = [
    200, 201, 202, 204, 206, 301, 302, 304, 307, 308, 400, 401, 403, 404, 408, 429, 500, 502, 503,
    504,
];

/// Slots for other codes, claimed on first sight (lock-free after that).
const RARE_SLOTS: usize = 8;

/// Counters for one label prefix (e.g. listener + upstream), one per status
/// code, resolved on first use and lock-free after that.
///
/// The 20 common codes and the first 8 other codes seen get a resolved
/// handle each (one atomic load to find it). Codes beyond those take the
/// labelled lookup (hash + format) every time; they are counted in
/// `overflow*` too so `totals()` stays exact.
pub struct CodeCounters {
    vec: IntCounterVec,
    prefix: Box<[(String, String)]>,
    slots: [OnceLock<IntCounter>; COMMON_CODES.len()],
    rare: [OnceLock<(u16, IntCounter)>; RARE_SLOTS],
    overflow: AtomicU64,
    overflow_5xx: AtomicU64,
}

/// Request totals read back from a `CodeCounters` (for the status page).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CodeTotals {
    pub all: u64,
    /// Responses with a 5xx status.
    pub server_errors: u64,
}

impl CodeCounters {
    /// `prefix` is the label names and values before `code`, in order.
    pub fn new(vec: &IntCounterVec, prefix: &[(&str, &str)]) -> CodeCounters {
        CodeCounters {
            vec: vec.clone(),
            prefix: prefix
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            slots: Default::default(),
            rare: Default::default(),
            overflow: AtomicU64::new(0),
            overflow_5xx: AtomicU64::new(0),
        }
    }

    #[inline]
    pub fn inc(&self, code: u16) {
        if let Some(i) = COMMON_CODES.iter().position(|c| *c == code) {
            self.slots[i].get_or_init(|| self.resolve(code)).inc();
            return;
        }
        // Every thread scans the slots in the same order and a slot never
        // changes once set, so a code lands in exactly one slot.
        for slot in &self.rare {
            let (c, counter) = slot.get_or_init(|| (code, self.resolve(code)));
            if *c == code {
                counter.inc();
                return;
            }
        }
        self.overflow.fetch_add(1, Ordering::Relaxed);
        if code >= 500 {
            self.overflow_5xx.fetch_add(1, Ordering::Relaxed);
        }
        self.resolve(code).inc()
    }

    fn resolve(&self, code: u16) -> IntCounter {
        let code = code.to_string();
        let mut labels: Vec<&str> = self.prefix.iter().map(|(_, v)| v.as_str()).collect();
        labels.push(&code);
        self.vec.with_label_values(&labels)
    }

    /// Sums of every code counted so far (no label lookups).
    pub fn totals(&self) -> CodeTotals {
        let mut t = CodeTotals {
            all: self.overflow.load(Ordering::Relaxed),
            server_errors: self.overflow_5xx.load(Ordering::Relaxed),
        };
        let common = COMMON_CODES
            .iter()
            .zip(&self.slots)
            .filter_map(|(c, s)| Some((*c, s.get()?)));
        let rare = self
            .rare
            .iter()
            .filter_map(|s| s.get().map(|(c, h)| (*c, h)));
        for (code, h) in common.chain(rare) {
            let n = h.get();
            t.all += n;
            if code >= 500 {
                t.server_errors += n;
            }
        }
        t
    }

    /// Removes every series with this prefix from the family: the codes in
    /// the slots directly; only if codes overflowed the slots, by scanning
    /// the family (rare, and slower with many series).
    pub fn remove(&self) {
        let common = COMMON_CODES
            .iter()
            .zip(&self.slots)
            .filter(|(_, s)| s.get().is_some())
            .map(|(c, _)| *c);
        let rare = self.rare.iter().filter_map(|s| s.get().map(|(c, _)| *c));
        for code in common.chain(rare) {
            let code = code.to_string();
            let mut labels: Vec<&str> = self.prefix.iter().map(|(_, v)| v.as_str()).collect();
            labels.push(&code);
            let _ = self.vec.remove_label_values(&labels);
        }
        if self.overflow.load(Ordering::Relaxed) > 0 {
            let prefix: Vec<(&str, &str)> = self
                .prefix
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            remove_matching(&self.vec, &prefix);
        }
    }
}
