//! Reload cost at scale: parse + validate + build + swap of a config with
//! 100 upstreams × 100 servers (SPEC target: under 50 ms); and what one
//! server's health change costs with 1,000 consistent-hash upstreams (a
//! Maglev table each): a whole rebuild against rebuilding only its upstream.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, Criterion};
use fulcrum::backend::Registry;
use fulcrum::config::Config;
use fulcrum::metrics::Metrics;
use fulcrum::routing::RoutingTable;

fn big_config(upstreams: usize, servers: usize) -> String {
    let mut s = String::from(
        "[admin]\nlisten = \"127.0.0.1:9901\"\n\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n\n",
    );
    for u in 0..upstreams {
        s += &format!("[[route]]\nhost = \"u{u}.example.com\"\nupstream = \"u{u}\"\n\n");
    }
    for u in 0..upstreams {
        let strategy = if u % 2 == 0 {
            "round-robin"
        } else {
            "weighted"
        };
        s += &format!("[upstream.u{u}]\nstrategy = \"{strategy}\"\nservers = [\n");
        for i in 0..servers {
            let w = if u % 2 == 0 { 1 } else { 1 + i % 5 };
            s += &format!(
                "  {{ address = \"10.{}.{}.{}:8080\", weight = {w} }},\n",
                u,
                i / 250,
                i % 250 + 1
            );
        }
        s += "]\n\n";
    }
    s
}

fn reload(c: &mut Criterion) {
    let text = big_config(100, 100);
    let registry = Registry::new(Arc::new(Metrics::new()));
    let first = Config::from_toml(Path::new("big.toml"), &text).expect("valid");
    let swap = ArcSwap::from_pointee(RoutingTable::build(Arc::new(first), &registry, 1));
    let mut generation = 1;
    let mut g = c.benchmark_group("reload");
    g.sample_size(20);
    g.bench_function("100x100: parse+validate+build+swap", |b| {
        b.iter(|| {
            generation += 1;
            let config = Config::from_toml(Path::new("big.toml"), &text).expect("valid");
            let table = RoutingTable::build(Arc::new(config), &registry, generation);
            swap.store(Arc::new(table));
        })
    });
    g.bench_function("100x100: parse+validate only", |b| {
        b.iter(|| Config::from_toml(Path::new("big.toml"), &text).expect("valid"))
    });
    g.bench_function("100x100: TOML syntax only (toml::Table)", |b| {
        b.iter(|| text.parse::<toml::Table>().expect("valid"))
    });
    g.finish();
}

fn hashed_config(upstreams: usize, servers: usize) -> String {
    let mut s = String::from(
        "[admin]\nlisten = \"127.0.0.1:9901\"\n\n[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:8080\"\n\n",
    );
    for u in 0..upstreams {
        s += &format!("[[route]]\nhost = \"u{u}.example.com\"\nupstream = \"u{u}\"\n\n");
    }
    for u in 0..upstreams {
        s += &format!("[upstream.u{u}]\nstrategy = \"consistent-hash\"\nservers = [\n");
        for i in 0..servers {
            s += &format!(
                "  {{ address = \"10.{}.{}.{}:8080\" }},\n",
                u / 250,
                u % 250,
                i + 1
            );
        }
        s += "]\n\n";
    }
    s
}

fn health_change(c: &mut Criterion) {
    let text = hashed_config(1000, 4);
    let registry = Registry::new(Arc::new(Metrics::new()));
    let config = Arc::new(Config::from_toml(Path::new("hashed.toml"), &text).expect("valid"));
    let flapping =
        RoutingTable::build(config.clone(), &registry, 1).upstreams[500].servers[0].clone();
    let mut down = false;
    let mut g = c.benchmark_group("health change");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    // What the health follower did before: build the whole snapshot again.
    g.bench_function("1000 maglev upstreams: full rebuild", |b| {
        b.iter(|| {
            down = !down;
            flapping.set_checked_down(down);
            RoutingTable::build(config.clone(), &registry, 1)
        })
    });
    // Now: only the upstream whose up servers changed.
    g.bench_function("1000 maglev upstreams: changed upstream only", |b| {
        let mut table = RoutingTable::build(config.clone(), &registry, 1);
        b.iter(|| {
            down = !down;
            flapping.set_checked_down(down);
            table = table.after_health_change().expect("one upstream changed");
        })
    });
    g.finish();
}

criterion_group!(benches, reload, health_change);
criterion_main!(benches);
