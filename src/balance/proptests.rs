//! Property tests for every strategy, over real `ServerState`s and real
//! `InFlight` guards (so the least-connections hooks and the upstream-wide
//! in-flight counter are the production ones).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::strategy::Strategy as _;

use super::maglev::{build_table, table_size};
use super::{Balancer, PickContext};
use crate::backend::{InFlight, Registry, ServerState};
use crate::config::{HashKey, ServerConfig, Strategy, UpstreamConfig};
use crate::metrics::Metrics;

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080))
}

fn upstream(strategy: Strategy, weights: &[u32]) -> UpstreamConfig {
    UpstreamConfig {
        name: "u".into(),
        strategy,
        servers: weights
            .iter()
            .enumerate()
            .map(|(i, w)| ServerConfig {
                address: addr(i),
                weight: *w,
                configured_as: addr(i).to_string(),
            })
            .collect(),
        hash_key: HashKey::ClientIp,
        hash_balance_factor: 0.0,
        slow_start: Duration::ZERO,
        sticky: None,
        ..Default::default()
    }
}

/// Real server states for `cfg`, with `down` marked not up.
struct Pool {
    _reg: Arc<Registry>,
    servers: Vec<Arc<ServerState>>,
    up_idx: Vec<usize>,
    up: Vec<Arc<ServerState>>,
}

fn pool(cfg: &UpstreamConfig, down: &HashSet<usize>) -> Pool {
    let reg = Registry::new(Arc::new(Metrics::new()));
    let servers: Vec<_> = cfg
        .servers
        .iter()
        .map(|s| reg.server(&cfg.name, s.address, true))
        .collect();
    // Every peak-EWMA estimate starts from the same seed at the same instant:
    // seeds stamped a millisecond apart (creation order, a loaded machine)
    // would otherwise break peak-ewma's ties towards the older server.
    let now = super::clock_ms() as u32;
    for (i, s) in servers.iter().enumerate() {
        s.set_checked_down(down.contains(&i));
        s.load.ewma.observe_at(super::ewma::SEED, now);
    }
    let up_idx: Vec<usize> = (0..servers.len()).filter(|i| servers[*i].is_up()).collect();
    let up = up_idx.iter().map(|i| servers[*i].clone()).collect();
    Pool {
        _reg: reg,
        servers,
        up_idx,
        up,
    }
}

const ALL: [Strategy; 7] = Strategy::ALL;

fn weights_and_down() -> impl proptest::strategy::Strategy<Value = (Vec<u32>, HashSet<usize>)> {
    prop::collection::vec(1u32..20, 1..12).prop_flat_map(|w| {
        let n = w.len();
        (Just(w), prop::collection::hash_set(0..n, 0..n))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// No strategy ever returns a server that is not up; with none up, None.
    #[test]
    fn never_picks_a_server_that_is_not_up((weights, down) in weights_and_down(), seed in any::<u64>()) {
        for strategy in ALL {
            let mut cfg = upstream(strategy, &weights);
            cfg.hash_balance_factor = if seed % 2 == 0 { 1.25 } else { 0.0 };
            let p = pool(&cfg, &down);
            let b = Balancer::build(&cfg, &p.servers, &p.up_idx);
            let mut held = Vec::new();
            for k in 0..200u64 {
                let ctx = PickContext { up: &p.up, key: seed.wrapping_add(k.wrapping_mul(0x9e37_79b9_7f4a_7c15)) };
                match b.pick(&ctx) {
                    None => prop_assert!(p.up.is_empty(), "{strategy:?} found nothing with servers up"),
                    Some(i) => {
                        prop_assert!(i < p.up.len());
                        prop_assert!(p.up[i].is_up() && !down.contains(&p.up_idx[i]), "{strategy:?}");
                        if k % 3 == 0 { held.push(InFlight::new(p.up[i].clone())); }
                    }
                }
            }
        }
    }

    /// Over many picks, shares match weights: within ±1 pick per server for
    /// weighted and least-connections (holding every pick), within 15% of
    /// the expected count for the random ones and Maglev over random keys.
    #[test]
    fn shares_match_weights(weights in prop::collection::vec(1u32..10, 2..6), seed in any::<u64>()) {
        let total: u32 = weights.iter().sum();
        for strategy in [Strategy::Weighted, Strategy::LeastConnections, Strategy::PowerOfTwo,
                         Strategy::PeakEwma, Strategy::ConsistentHash] {
            let cfg = upstream(strategy, &weights);
            let p = pool(&cfg, &HashSet::new());
            // equal latency everywhere, so only weights and load differ
            for s in &p.up {
                s.load.ewma.observe_at(Duration::from_secs(5), 0);
            }
            let b = Balancer::build(&cfg, &p.servers, &p.up_idx);
            let picks = match strategy { Strategy::Weighted | Strategy::LeastConnections => total as usize * 20, _ => 20_000 };
            let mut count = vec![0usize; weights.len()];
            let mut held = Vec::new();
            for k in 0..picks as u64 {
                let key = super::key::hash_bytes(&(seed ^ k).to_le_bytes());
                let i = b.pick(&PickContext { up: &p.up, key }).unwrap();
                count[i] += 1;
                if strategy == Strategy::LeastConnections {
                    held.push(InFlight::new(p.up[i].clone()));
                }
            }
            for (i, w) in weights.iter().enumerate() {
                let want = picks as f64 * f64::from(*w) / f64::from(total);
                let tol = match strategy {
                    Strategy::Weighted | Strategy::LeastConnections => 1.0,
                    _ => want * 0.15 + 30.0,
                };
                prop_assert!((count[i] as f64 - want).abs() <= tol,
                    "{strategy:?} weights {weights:?} counts {count:?}");
            }
        }
    }

    /// Smooth weighted round-robin never bursts: over any window of one
    /// period, a server gets its weight's share ± 1 (no runs of picks).
    #[test]
    fn weighted_never_bursts(weights in prop::collection::vec(1u32..8, 2..6)) {
        let cfg = upstream(Strategy::Weighted, &weights);
        let p = pool(&cfg, &HashSet::new());
        let b = Balancer::build(&cfg, &p.servers, &p.up_idx);
        let total: u32 = weights.iter().sum();
        let seq: Vec<usize> = (0..total * 3).map(|_| b.pick(&PickContext { up: &p.up, key: 0 }).unwrap()).collect();
        for win in seq.windows(total as usize) {
            for (i, w) in weights.iter().enumerate() {
                let n = win.iter().filter(|x| **x == i).count() as i64;
                prop_assert!((n - i64::from(*w)).abs() <= 1, "{weights:?} {seq:?}");
            }
        }
    }

    /// Maglev: taking 1 of N servers down moves only that server's keys
    /// (exactly 0 keys of servers that stayed up), which is ≤ 1/N + 2%.
    #[test]
    fn maglev_down_moves_only_its_keys(n in 3usize..30, gone in any::<prop::sample::Index>(), seed in any::<u64>()) {
        let gone = gone.index(n);
        let cfg = upstream(Strategy::ConsistentHash, &vec![1; n]);
        let before = pool(&cfg, &HashSet::new());
        let after = pool(&cfg, &HashSet::from([gone]));
        let b1 = Balancer::build(&cfg, &before.servers, &before.up_idx);
        let b2 = Balancer::build(&cfg, &after.servers, &after.up_idx);
        let keys = 5_000u64;
        let mut moved = 0;
        for k in 0..keys {
            let key = super::key::hash_bytes(&(seed ^ k).to_le_bytes());
            let s1 = before.up[b1.pick(&PickContext { up: &before.up, key }).unwrap()].addr;
            let s2 = after.up[b2.pick(&PickContext { up: &after.up, key }).unwrap()].addr;
            if s1 != s2 {
                moved += 1;
                prop_assert_eq!(s1, addr(gone), "a key of a server that stayed moved");
            }
        }
        prop_assert!(moved as f64 / keys as f64 <= 1.0 / n as f64 + 0.02, "moved {moved} of {keys}");
    }

    /// Maglev table: removing 1 of N servers from the config (a reload)
    /// moves at most 1/N + 2% of the table's slots.
    #[test]
    fn maglev_removal_from_config_moves_about_1_over_n(n in 3usize..40, gone in any::<prop::sample::Index>()) {
        let gone = gone.index(n);
        let all: Vec<(SocketAddr, u32)> = (0..n).map(|i| (addr(i), 1)).collect();
        let rest: Vec<(SocketAddr, u32)> = all.iter().copied().filter(|(a, _)| *a != addr(gone)).collect();
        let m = table_size(n);
        let t1 = build_table(&all, m);
        let t2 = build_table(&rest, m);
        let moved = t1.iter().zip(&t2).filter(|(a, b)| all[**a as usize].0 != rest[**b as usize].0).count();
        prop_assert!(moved as f64 / m as f64 <= 1.0 / n as f64 + 0.02, "moved {moved} of {m}");
    }

    /// Bounded loads: a server never holds more than
    /// ceil(factor × total in-flight × weight / total weight).
    #[test]
    fn bounded_load_never_exceeds_cap(weights in prop::collection::vec(1u32..5, 2..10),
                                      factor in 1.0f64..2.0, hot in 1u64..4, ops in 200usize..600) {
        let mut cfg = upstream(Strategy::ConsistentHash, &weights);
        cfg.hash_balance_factor = factor;
        let p = pool(&cfg, &HashSet::new());
        let b = Balancer::build(&cfg, &p.servers, &p.up_idx);
        let wsum: f64 = weights.iter().map(|w| f64::from(*w)).sum();
        let mut held: Vec<InFlight> = Vec::new();
        for k in 0..ops as u64 {
            // a few hot keys: without the bound they'd pile onto one server
            let key = super::key::hash_bytes(&(k % hot).to_le_bytes());
            let i = b.pick(&PickContext { up: &p.up, key }).unwrap();
            held.push(InFlight::new(p.up[i].clone()));
            let total = p.up[0].group_in_flight() as f64;
            let cap = (factor * total * f64::from(weights[i]) / wsum).ceil();
            prop_assert!(p.up[i].in_flight() as f64 <= cap,
                "server {i} holds {} > cap {cap} (total {total})", p.up[i].in_flight());
            if k % 4 == 3 { let j = (k as usize * 7) % held.len(); held.swap_remove(j); }
        }
    }

    /// Least-connections always returns a server with the fewest in-flight
    /// relative to weight (single-threaded, so the tree is exact).
    #[test]
    fn least_connections_is_exact(weights in prop::collection::vec(1u32..6, 1..40), ops in prop::collection::vec(any::<bool>(), 1..300)) {
        let cfg = upstream(Strategy::LeastConnections, &weights);
        let p = pool(&cfg, &HashSet::new());
        let b = Balancer::build(&cfg, &p.servers, &p.up_idx);
        let mut held: Vec<InFlight> = Vec::new();
        for (k, pick) in ops.iter().enumerate() {
            if *pick || held.is_empty() {
                let i = b.pick(&PickContext { up: &p.up, key: 0 }).unwrap();
                let load = |j: usize| (p.up[j].in_flight() as f64 + 1.0) / f64::from(weights[j]);
                let best = (0..weights.len()).map(load).fold(f64::INFINITY, f64::min);
                prop_assert!(load(i) <= best * 1.001, "picked {i} load {} best {best}", load(i));
                held.push(InFlight::new(p.up[i].clone()));
            } else {
                held.swap_remove(k % held.len());
            }
        }
    }
}

/// Slow start: a server that just came up gets about 10% of its share,
/// growing to 100% over the window.
#[test]
fn slow_start_ramps_from_ten_percent() {
    for strategy in [
        Strategy::RoundRobin,
        Strategy::Weighted,
        Strategy::PowerOfTwo,
        Strategy::PeakEwma,
        Strategy::ConsistentHash,
        Strategy::LeastConnections,
    ] {
        let mut cfg = upstream(strategy, &[1, 1]);
        cfg.slow_start = Duration::from_secs(100);
        let p = pool(&cfg, &HashSet::new());
        let share = |since: Option<Instant>| {
            p.up[1].set_up_since(since);
            let b = Balancer::build(&cfg, &p.servers, &p.up_idx);
            let mut n = 0usize;
            let mut held = Vec::new();
            for k in 0..4000u64 {
                let key = super::key::hash_bytes(&k.to_le_bytes());
                let i = b.pick(&PickContext { up: &p.up, key }).unwrap();
                n += i;
                if strategy == Strategy::LeastConnections {
                    held.push(InFlight::new(p.up[i].clone()));
                }
            }
            n as f64 / 4000.0
        };
        let fresh = share(Some(Instant::now()));
        let half = share(Some(Instant::now() - Duration::from_secs(50)));
        let done = share(None);
        // weight factor 0.1 against 1.0 gives a share of 0.1/1.1 ≈ 9%
        assert!(fresh < 0.16, "{strategy:?} fresh {fresh}");
        assert!(
            half > fresh + 0.1 && half < 0.45,
            "{strategy:?} half {half}"
        );
        assert!(done > 0.42, "{strategy:?} done {done}");
    }
}

/// In-flight changes reach the newest least-connections tree even when the
/// request was picked from an older snapshot.
#[test]
fn least_connections_sees_releases_from_old_snapshots() {
    let cfg = upstream(Strategy::LeastConnections, &[1, 1]);
    let p = pool(&cfg, &HashSet::new());
    let old = Balancer::build(&cfg, &p.servers, &p.up_idx);
    let ctx = PickContext { up: &p.up, key: 0 };
    let held: Vec<_> = (0..10)
        .map(|_| InFlight::new(p.up[old.pick(&ctx).unwrap()].clone()))
        .filter(|g| g.server().addr == addr(0))
        .collect();
    let new = Balancer::build(&cfg, &p.servers, &p.up_idx);
    drop(held);
    // server 0's requests ended after the rebuild: the new tree must know
    let picks: Vec<_> = (0..4)
        .map(|_| {
            let i = new.pick(&ctx).unwrap();
            InFlight::new(p.up[i].clone())
        })
        .collect();
    let on0 = picks.iter().filter(|g| g.server().addr == addr(0)).count();
    assert_eq!(on0, 2, "both servers idle again: picks alternate");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// consistent-hash picks depend on the set of servers, not on the order
    /// the config (or a DNS answer) lists them: instances agree.
    #[test]
    fn maglev_picks_ignore_server_order(n in 2usize..12, rot in 1usize..11, keys in prop::collection::vec(any::<u64>(), 50)) {
        let weights: Vec<u32> = (0..n).map(|i| 1 + (i as u32 % 3)).collect();
        let cfg = upstream(Strategy::ConsistentHash, &weights);
        let mut shuffled = cfg.clone();
        shuffled.servers.rotate_left(rot % n);
        shuffled.servers.swap(0, n - 1);
        let (p1, p2) = (pool(&cfg, &HashSet::new()), pool(&shuffled, &HashSet::new()));
        let b1 = Balancer::build(&cfg, &p1.servers, &p1.up_idx);
        let b2 = Balancer::build(&shuffled, &p2.servers, &p2.up_idx);
        for key in keys {
            let s1 = p1.up[b1.pick(&PickContext { up: &p1.up, key }).unwrap()].addr;
            let s2 = p2.up[b2.pick(&PickContext { up: &p2.up, key }).unwrap()].addr;
            prop_assert_eq!(s1, s2);
        }
    }
}

/// A runtime weight (admin API) is the weight every strategy uses: the
/// deterministic strategies pick exactly as if it were configured.
#[test]
fn runtime_weight_overrides_replace_configured_weights() {
    let weights = [5u32, 1, 3, 2];
    for strategy in [Strategy::Weighted, Strategy::ConsistentHash] {
        let configured = upstream(strategy, &weights);
        let a = pool(&configured, &HashSet::new());
        let plain = upstream(strategy, &[1, 1, 1, 1]);
        let b = pool(&plain, &HashSet::new());
        for (s, w) in b.servers.iter().zip(weights) {
            s.set_weight_override(Some(w));
        }
        let ba = Balancer::build(&configured, &a.servers, &a.up_idx);
        let bb = Balancer::build(&plain, &b.servers, &b.up_idx);
        for k in 0..2000u64 {
            let key = k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let pa = ba.pick(&PickContext { up: &a.up, key });
            let pb = bb.pick(&PickContext { up: &b.up, key });
            assert_eq!(pa, pb, "{strategy:?} pick {k}");
        }
        // Reset: back to the configured (equal) weights.
        for s in &b.servers {
            s.set_weight_override(None);
        }
        let reset = Balancer::build(&plain, &b.servers, &b.up_idx);
        let mut counts = [0usize; 4];
        for k in 0..400u64 {
            let key = k.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            counts[reset.pick(&PickContext { up: &b.up, key }).unwrap()] += 1;
        }
        assert!(
            counts.iter().all(|c| (60..=140).contains(c)),
            "{strategy:?} {counts:?}"
        );
    }
}
