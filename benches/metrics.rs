//! What metrics cost a request: the handles the proxy resolves when a
//! snapshot is built, against labelled lookups done per request (what the
//! design avoids), and against no metrics at all. Also the access log
//! record's capture cost when `access_log = true`.
//!
//! `cargo bench --bench metrics`

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use fulcrum::access_log::AccessRecord;
use fulcrum::metrics::{Metrics, RouteMetrics, ServerMetrics};

fn per_request(c: &mut Criterion) {
    let m = Metrics::new();
    let route = RouteMetrics::new(&m, "web", "api");
    let server = ServerMetrics::new(&m, "api", "10.0.0.11:8080");
    let mut g = c.benchmark_group("request accounting");

    g.bench_function("none", |b| b.iter(|| black_box(200u16)));

    // Exactly what proxy::handle records for one proxied request.
    g.bench_function("resolved handles (fulcrum)", |b| {
        b.iter(|| {
            let code = black_box(200u16);
            server.response_seconds.observe(black_box(0.0012));
            server.responses.inc(code);
            route.requests.inc(code);
            route.duration.observe(black_box(0.0013));
        })
    });

    // The same four updates through labelled lookups each time.
    let server_label = "10.0.0.11:8080".to_string();
    g.bench_function("labelled lookups per request", |b| {
        b.iter(|| {
            let code = black_box(200u16).to_string();
            m.upstream_response_seconds
                .with_label_values(&["api", &server_label])
                .observe(black_box(0.0012));
            m.upstream_requests_total
                .with_label_values(&["api", &server_label, &code])
                .inc();
            m.requests_total
                .with_label_values(&["web", "api", &code])
                .inc();
            m.request_duration
                .with_label_values(&["web", "api"])
                .observe(black_box(0.0013));
        })
    });
    g.finish();
}

fn access_record(c: &mut Criterion) {
    // No subscriber is installed here, so this is the capture cost on the
    // request path (box, clones, the event's enabled check), not formatting.
    let listener: Arc<str> = Arc::from("web");
    let req = http::Request::get("/api/v1/users?id=7")
        .header("host", "api.example.com")
        .body(())
        .unwrap();
    let id = http::HeaderValue::from_static("0123456789abcdef");
    let upstream: Arc<str> = Arc::from("api");
    c.bench_function("access log record (capture)", |b| {
        b.iter(|| {
            let mut r = AccessRecord::begin(
                Instant::now(),
                &listener,
                "127.0.0.1".parse().unwrap(),
                black_box(&req),
            );
            r.respond(200, Some(upstream.clone()), None, &id);
            r.add_bytes(512);
            r.complete();
            drop(r);
        })
    });
}

criterion_group!(benches, per_request, access_record);
criterion_main!(benches);
