//! The /status HTML page: one self-contained document (inline CSS and a few
//! lines of inline script, no external assets), rendered on the server from
//! the same `Status` that /status.json serves. It refreshes itself every two
//! seconds by fetching /status again and swapping the page body; without
//! script it falls back to a meta refresh.

use std::fmt::Write;

use super::status::{ServerStatus, Status, UpstreamStatus};

const STYLE: &str = r#"
:root{--bg:#f6f7f9;--card:#fff;--ink:#1d2433;--mute:#667085;--line:#e4e7ec;
--up:#12805c;--upbg:#e3f6ee;--down:#c0262d;--downbg:#fde8e8;--ej:#b54708;--ejbg:#fef0c7;
--dr:#475467;--drbg:#eaecf0;--dis:#6941c6;--disbg:#f4ebff}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--ink);font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
header{background:#1d2433;color:#fff;padding:14px 28px;display:flex;gap:24px;align-items:center;flex-wrap:wrap}
header h1{font-size:20px;margin:0 12px 0 0;letter-spacing:.3px}
header .kv{color:#c8cdd8}header .kv b{color:#fff;font-weight:600}
main{padding:20px 28px;max-width:1400px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;margin:0 0 18px;padding:14px 18px}
h2{font-size:15px;margin:0 0 10px;display:flex;gap:12px;align-items:baseline;flex-wrap:wrap}
h2 .sub{font-weight:400;color:var(--mute);font-size:13px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid var(--line);white-space:nowrap}
th{font-size:12px;color:var(--mute);font-weight:600;text-transform:uppercase;letter-spacing:.4px}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
tr:last-child td{border-bottom:0}
.badge{display:inline-block;padding:1px 9px;border-radius:10px;font-size:12px;font-weight:600}
.up{color:var(--up);background:var(--upbg)}.down{color:var(--down);background:var(--downbg)}
.ejected{color:var(--ej);background:var(--ejbg)}.draining{color:var(--dr);background:var(--drbg)}
.disabled,.badge.admin-disable{color:var(--dis);background:var(--disbg)}.badge.admin-drain{color:var(--dr);background:var(--drbg)}
tr.admin-drain td,tr.admin-disable td{background:repeating-linear-gradient(135deg,#fff 0 8px,#f2f4f7 8px 16px)}
.over{color:var(--dis);font-weight:600}
.ok{color:var(--up)}.bad{color:var(--down)}.warn{color:var(--ej)}.mute{color:var(--mute)}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(420px,1fr));gap:18px}
.grid section{margin:0}
#routes{margin-top:18px;overflow-x:auto}
.policy{white-space:normal;max-width:28em}
.stats{display:flex;gap:22px;margin:2px 0 10px;flex-wrap:wrap}
.stat b{display:block;font-size:18px;font-variant-numeric:tabular-nums}.stat span{color:var(--mute);font-size:12px}
.banner{padding:10px 14px;border-radius:8px;margin:0 0 18px;font-weight:600}
.banner.bad{background:var(--downbg)}.banner.warn{background:var(--ejbg)}
footer{color:var(--mute);font-size:12px;padding:0 28px 24px}
"#;

const SCRIPT: &str = r#"
var refreshes=0;
setInterval(function(){
  fetch(location.pathname,{cache:"no-store"}).then(function(r){return r.text()}).then(function(t){
    var d=new DOMParser().parseFromString(t,"text/html");
    ["header","main","footer"].forEach(function(s){
      var n=d.querySelector(s),o=document.querySelector(s);if(n&&o){o.replaceWith(n)}});
    document.body.setAttribute("data-refreshes",++refreshes);
  }).catch(function(){
    var f=document.querySelector("footer");if(f){f.textContent="admin listener unreachable; retrying"}
    document.body.setAttribute("data-refresh-failed","1");
  });
},2000);
"#;

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn pct(r: Option<f64>) -> String {
    match r {
        None => "–".into(),
        Some(r) => format!("{:.1}%", r * 100.0),
    }
}

fn ms(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v < 10.0 => format!("{v:.2} ms"),
        Some(v) => format!("{v:.0} ms"),
    }
}

fn err_class(r: Option<f64>) -> &'static str {
    match r {
        Some(r) if r >= 0.05 => "num bad",
        Some(r) if r > 0.0 => "num warn",
        _ => "num",
    }
}

fn ago(unix: f64) -> String {
    let secs = (crate::clock::unix_now() - unix).max(0.0) as u64;
    match secs {
        0..=59 => format!("{secs}s ago"),
        60..=3599 => format!("{}m ago", secs / 60),
        3600..=86399 => format!("{}h {}m ago", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d ago", secs / 86400),
    }
}

fn uptime(secs: u64) -> String {
    match secs {
        0..=59 => format!("{secs}s"),
        60..=3599 => format!("{}m {}s", secs / 60, secs % 60),
        _ => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
    }
}

/// Renders the whole page.
pub(super) fn render(s: &Status, shutting_down: bool) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let _ = write!(
        h,
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width,initial-scale=1\">\
         <noscript><meta http-equiv=refresh content=5></noscript>\
         <title>Fulcrum status</title><style>{STYLE}</style></head><body>"
    );
    header(&mut h, s);
    h.push_str("<main>");
    if shutting_down {
        h.push_str("<div class=\"banner bad\" id=banner>Shutting down: draining connections</div>");
    } else if let Some(reason) = &s.not_ready_reason {
        let _ = write!(
            h,
            "<div class=\"banner bad\" id=banner>Not ready: {}</div>",
            esc(reason)
        );
    }
    if s.reload.last_result == "failure" {
        let _ = write!(
            h,
            "<div class=\"banner warn\" id=reload-error>Last reload failed ({}); \
             generation {} keeps serving: {}</div>",
            s.reload.last_attempt_unix.map(ago).unwrap_or_default(),
            s.generation,
            esc(s.reload.last_error.as_deref().unwrap_or(""))
        );
    }
    for u in &s.upstreams {
        upstream(&mut h, u);
    }
    h.push_str("<div class=grid>");
    listeners(&mut h, s);
    acme(&mut h, s);
    h.push_str("</div>");
    // Full width: a route row has eleven columns.
    routes(&mut h, s);
    h.push_str("</main>");
    let _ = write!(
        h,
        "<footer>Rates over the last {:.0}s, computed from the /metrics counters \
         (requests = responses + failed attempts; errors = 5xx + failed attempts). \
         Refreshes every 2s. Also as <a href=\"/status.json\">/status.json</a>, \
         <a href=\"/metrics\">/metrics</a>.</footer>",
        s.rate_window_seconds
    );
    let _ = write!(h, "<script>{SCRIPT}</script></body></html>");
    h
}

fn header(h: &mut String, s: &Status) {
    let ready = if s.ready {
        "<span class=\"badge up\" id=ready>ready</span>".to_string()
    } else {
        "<span class=\"badge down\" id=ready>not ready</span>".to_string()
    };
    let reload = match s.reload.last_result {
        "none" => "<b>none since start</b>".to_string(),
        "success" => format!(
            "<b>succeeded</b> {}",
            s.reload.last_attempt_unix.map(ago).unwrap_or_default()
        ),
        _ => format!(
            "<span class=\"badge down\">failed</span> {}",
            s.reload.last_attempt_unix.map(ago).unwrap_or_default()
        ),
    };
    let _ = write!(
        h,
        "<header><h1>Fulcrum</h1>\
         <span class=kv>{ready}</span>\
         <span class=kv>config generation <b id=generation>{}</b></span>\
         <span class=kv>last reload <span id=reload data-result={}>{reload}</span></span>\
         <span class=kv>reloads <b>{}</b> ok / <b>{}</b> failed</span>\
         <span class=kv>up <b>{}</b></span>\
         <span class=kv>version <b>{}</b></span></header>",
        s.generation,
        s.reload.last_result,
        s.reload.successes,
        s.reload.failures,
        uptime(s.uptime_seconds),
        esc(s.version),
    );
}

fn upstream(h: &mut String, u: &UpstreamStatus) {
    let health = if u.removed {
        "<span class=\"badge draining\">removed</span>".to_string()
    } else if u.servers_up == 0 {
        format!(
            "<span class=\"badge down\">{}/{} up</span>",
            u.servers_up, u.servers_total
        )
    } else if u.servers_up < u.servers_total {
        format!(
            "<span class=\"badge ejected\">{}/{} up</span>",
            u.servers_up, u.servers_total
        )
    } else {
        format!(
            "<span class=\"badge up\">{}/{} up</span>",
            u.servers_up, u.servers_total
        )
    };
    let name = esc(&u.name);
    let _ = write!(
        h,
        "<section class=upstream data-upstream=\"{name}\"><h2>upstream {name} {health}\
         <span class=sub>{}</span></h2>\
         <div class=stats><div class=stat><b>{:.1}</b><span>requests/s</span></div>\
         <div class=stat><b class=\"{}\">{}</b><span>errors</span></div></div>\
         <table><tr><th>server</th><th>state</th><th class=num>weight</th>\
         <th class=num>in flight</th><th class=num>req/s</th><th class=num>error %</th>\
         <th class=num>mean</th><th class=num>p50</th><th class=num>p99</th>\
         <th class=num>requests</th><th class=num>errors</th><th class=num>idle conns</th></tr>",
        esc(&u.strategy),
        u.requests_per_second,
        err_class(u.error_ratio),
        pct(u.error_ratio),
    );
    for s in &u.servers {
        server_row(h, &u.name, s);
    }
    h.push_str("</table></section>");
}

/// The weight cell: the effective weight, and the configured one when an
/// operator overrode it.
fn weight_cell(s: &ServerStatus) -> String {
    match (s.weight, s.effective_weight) {
        (Some(w), Some(e)) if w != e => {
            format!("<span class=over title=\"runtime override; configured {w}\">{e}</span> <span class=mute>({w})</span>")
        }
        (Some(w), _) => w.to_string(),
        (None, _) => "–".to_string(),
    }
}

fn server_row(h: &mut String, upstream: &str, s: &ServerStatus) {
    // An operator's drain/disable is marked even when health says more
    // (a disabled server that is also down shows both).
    let admin = match s.admin_state {
        "none" => String::new(),
        a => format!(" <span class=\"badge admin-{a}\" title=\"set through the admin API\">admin: {a}</span>"),
    };
    let _ = write!(
        h,
        "<tr class=\"server admin-{adm}\" data-upstream=\"{}\" data-server=\"{}\" data-state={st} data-admin-state={adm}>\
         <td>{}</td><td><span class=\"badge {st}\">{st}</span>{admin}</td>\
         <td class=num>{}</td><td class=num>{}</td><td class=num>{:.1}</td>\
         <td class=\"{}\">{}</td><td class=num>{}</td><td class=num>{}</td><td class=num>{}</td>\
         <td class=num>{}</td><td class=num>{}</td><td class=num>{}</td></tr>",
        esc(upstream),
        esc(&s.address),
        esc(&s.address),
        weight_cell(s),
        s.in_flight,
        s.requests_per_second,
        err_class(s.error_ratio),
        pct(s.error_ratio),
        ms(s.latency_mean_ms),
        ms(s.latency_p50_ms),
        ms(s.latency_p99_ms),
        s.requests_total,
        s.errors_total,
        s.idle_connections,
        st = s.state,
        adm = s.admin_state,
    );
}

fn listeners(h: &mut String, s: &Status) {
    h.push_str(
        "<section id=listeners><h2>listeners</h2><table><tr><th>name</th><th>address</th>\
         <th class=num>connections</th><th class=num>accepted</th><th class=num>req/s</th></tr>",
    );
    for l in &s.listeners {
        let _ = write!(
            h,
            "<tr class=listener data-listener=\"{0}\"><td>{0}</td><td>{1}</td>\
             <td class=num>{2}</td><td class=num>{3}</td><td class=num>{4:.1}</td></tr>",
            esc(&l.name),
            esc(&l.listen),
            l.active_connections,
            l.connections_total,
            l.requests_per_second
        );
    }
    h.push_str("</table></section>");
}

/// ACME certificates: names, expiry, the last order's error.
fn acme(h: &mut String, s: &Status) {
    if s.acme.is_empty() {
        return;
    }
    h.push_str(
        "<section id=acme><h2>certificates (ACME)</h2><table>\
         <tr><th>names</th><th>expires</th><th>last error</th></tr>",
    );
    for c in &s.acme {
        let expires = match c.expires_unix {
            Some(t) => format!("in {:.1} days", (t - crate::clock::unix_now()) / 86400.0),
            None => "no certificate yet".to_string(),
        };
        let _ = write!(
            h,
            "<tr class=acme><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&c.names.join(", ")),
            expires,
            esc(c.last_error.as_deref().unwrap_or(""))
        );
    }
    h.push_str("</table></section>");
}

fn routes(h: &mut String, s: &Status) {
    h.push_str(
        "<section id=routes><h2>routes <span class=sub>first match wins</span></h2><table>\
         <tr><th>#</th><th>name</th><th>listeners</th><th>host</th><th>path prefix</th>\
         <th>matches</th><th>action</th><th>policy</th><th>requests</th><th>rejected</th>\
         <th>compressed</th></tr>",
    );
    let mute = |text: &str| format!("<span class=mute>{text}</span>");
    for (i, r) in s.routes.iter().enumerate() {
        let listeners = r
            .listeners
            .as_ref()
            .map_or(mute("all"), |l| esc(&l.join(", ")));
        let host = r.host.as_ref().map_or(mute("any"), |h| esc(h));
        let matches = if r.matches.is_empty() {
            mute("any")
        } else {
            esc(&r.matches)
        };
        let policy = if r.policy.is_empty() {
            mute("none")
        } else {
            esc(&r.policy.join(" \u{2192} "))
        };
        let _ = write!(
            h,
            "<tr class=route data-route=\"{name}\"><td>{i}</td><td>{name}</td><td>{listeners}</td>\
             <td>{host}</td><td>{}</td><td>{matches}</td><td>{}</td><td class=policy>{policy}</td>\
             <td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.path_prefix),
            esc(&r.upstream),
            r.requests,
            r.rejections,
            r.compressed,
            name = esc(&r.name),
        );
    }
    h.push_str("</table></section>");
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::admin::status::{ListenerStatus, ReloadStatus, RouteStatus};

    fn server(address: &str, state: &'static str) -> ServerStatus {
        ServerStatus {
            address: address.into(),
            weight: Some(1),
            effective_weight: Some(1),
            state,
            admin_state: "none",
            in_flight: 0,
            requests_total: 10,
            errors_total: 1,
            requests_per_second: 2.0,
            error_ratio: Some(0.1),
            latency_mean_ms: Some(1.5),
            latency_p50_ms: Some(1.0),
            latency_p99_ms: Some(12.0),
            idle_connections: 0,
        }
    }

    /// Every state a server can be in gets its own row and badge, and a
    /// not-ready process and a failed reload are called out at the top.
    #[test]
    fn renders_every_state_and_the_bad_news_first() {
        let s = Status {
            version: "0.1.0",
            generation: 3,
            uptime_seconds: 3700,
            ready: false,
            not_ready_reason: Some("no server up in upstream api".into()),
            rate_window_seconds: 10.0,
            reload: ReloadStatus {
                last_result: "failure",
                last_attempt_unix: Some(crate::clock::unix_now() - 5.0),
                last_error: Some("f.toml:3:1: route[0].upstream: no upstream named \"x\"".into()),
                last_success_unix: 0.0,
                successes: 2,
                failures: 1,
            },
            listeners: vec![ListenerStatus {
                name: "web".into(),
                listen: "0.0.0.0:8080".into(),
                active_connections: 3,
                connections_total: 9,
                requests_per_second: 2.0,
            }],
            routes: vec![RouteStatus {
                name: "route0".into(),
                listeners: None,
                host: Some("*.example.com".into()),
                path_prefix: "/".into(),
                matches: String::new(),
                upstream: "api".into(),
                policy: Vec::new(),
                requests: 0,
                rejections: 0,
                compressed: 0,
            }],
            acme: Vec::new(),
            upstreams: vec![UpstreamStatus {
                name: "api".into(),
                strategy: "round-robin".into(),
                removed: false,
                servers_up: 0,
                servers_total: 3,
                requests_per_second: 6.0,
                error_ratio: Some(0.1),
                servers: vec![
                    server("10.0.0.1:80", "down"),
                    server("10.0.0.2:80", "ejected"),
                    server("10.0.0.3:80", "draining"),
                    server("10.0.0.4:80", "up"),
                ],
            }],
        };
        let h = render(&s, false);
        for (addr, state) in [
            ("10.0.0.1:80", "down"),
            ("10.0.0.2:80", "ejected"),
            ("10.0.0.3:80", "draining"),
            ("10.0.0.4:80", "up"),
        ] {
            assert!(h.contains(&format!(
                "data-upstream=\"api\" data-server=\"{addr}\" data-state={state} data-admin-state=none>"
            )));
            assert!(h.contains(&format!("<span class=\"badge {state}\">{state}</span>")));
        }
        assert!(h.contains("Not ready: no server up in upstream api"));
        assert!(h.contains("Last reload failed (5s ago); generation 3 keeps serving"));
        assert!(h.contains("no upstream named &quot;x&quot;"), "escaped");
        assert!(h.contains("<span class=\"badge down\">0/3 up</span>"));
        assert!(h.contains("<td class=\"num bad\">10.0%</td>"));
        assert!(h.contains("12 ms") && h.contains("1.50 ms"));
        assert!(h.contains("up <b>1h 1m</b>"));
        assert!(render(&s, true).contains("Shutting down"));
        assert!(
            !h.contains("src=") && !h.contains("href=\"http"),
            "no external assets"
        );
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
