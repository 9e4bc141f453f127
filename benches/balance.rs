//! `pick()` cost of every strategy at 10, 1,000 and 10,000 up servers.
//!
//! Load-aware strategies run with some requests in flight (held by real
//! `InFlight` guards) so the trees and counters are not trivially idle.
//! Run: `cargo bench --bench balance`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};

use fulcrum::backend::{InFlight, Registry};
use fulcrum::balance::{key, Balancer, PickContext};
use fulcrum::config::{HashKey, ServerConfig, Strategy, UpstreamConfig};
use fulcrum::metrics::Metrics;

fn upstream(strategy: Strategy, n: usize) -> UpstreamConfig {
    UpstreamConfig {
        name: "bench".into(),
        strategy,
        servers: (0..n)
            .map(|i| {
                let address =
                    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 8080));
                ServerConfig {
                    address,
                    weight: 1 + (i % 5) as u32,
                    configured_as: address.to_string(),
                }
            })
            .collect(),
        hash_key: HashKey::ClientIp,
        hash_balance_factor: if strategy == Strategy::ConsistentHash {
            1.25
        } else {
            0.0
        },
        slow_start: Duration::ZERO,
        sticky: None,
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("pick");
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30);
    for strategy in Strategy::ALL {
        for n in [10usize, 1_000, 10_000] {
            let cfg = upstream(strategy, n);
            let reg = Registry::new(Arc::new(Metrics::new()));
            let servers: Vec<_> = cfg
                .servers
                .iter()
                .map(|s| reg.server(&cfg.name, s.address, true))
                .collect();
            let up_idx: Vec<usize> = (0..n).collect();
            let b = Balancer::build(&cfg, &servers, &up_idx);
            // a few requests in flight on every tenth server
            let _held: Vec<InFlight> = servers
                .iter()
                .step_by(10)
                .flat_map(|s| (0..3).map(|_| InFlight::new(s.clone())))
                .collect();
            let keys: Vec<u64> = (0..1024u64)
                .map(|k| key::hash_bytes(&k.to_le_bytes()))
                .collect();
            let mut k = 0usize;
            g.bench_with_input(BenchmarkId::new(strategy.as_str(), n), &n, |bch, _| {
                bch.iter(|| {
                    k = (k + 1) & 1023;
                    let ctx = PickContext {
                        up: &servers,
                        key: keys[k],
                    };
                    black_box(b.pick(black_box(&ctx)))
                })
            });
            // the whole per-request cost: pick, then take and release the
            // in-flight guard (least-connections updates its tree here)
            g.bench_with_input(
                BenchmarkId::new(format!("{}+inflight", strategy.as_str()), n),
                &n,
                |bch, _| {
                    bch.iter(|| {
                        k = (k + 1) & 1023;
                        let ctx = PickContext {
                            up: &servers,
                            key: keys[k],
                        };
                        let i = b.pick(black_box(&ctx)).unwrap();
                        drop(black_box(InFlight::new(servers[i].clone())));
                    })
                },
            );
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
