//! Validation of `[upstream.X.health_check]` and `[upstream.X.passive_health]`.

use std::time::Duration;

use super::ctx::Ctx;
use super::raw::{RawHealthCheck, RawPassiveHealth};
use super::{HealthCheckConfig, PassiveHealthConfig};

pub(super) fn active(ctx: &mut Ctx<'_>, upstream: &str, h: &RawHealthCheck) -> HealthCheckConfig {
    let k = |key: &str| format!("upstream.{upstream}.health_check.{key}");
    let path = match &h.path {
        None => "/healthz".to_string(),
        Some(p) if p.get_ref().starts_with('/') && p.get_ref().parse::<http::Uri>().is_ok() => {
            p.get_ref().clone()
        }
        Some(p) => {
            ctx.error(
                p.span(),
                k("path"),
                format!("\"{}\" must be a path starting with '/'", p.get_ref()),
            );
            "/healthz".to_string()
        }
    };
    let interval = ctx.positive_duration(&h.interval, &k("interval"), Duration::from_secs(5));
    let timeout = ctx.positive_duration(&h.timeout, &k("timeout"), Duration::from_secs(2));
    let healthy_threshold =
        ctx.int(&h.healthy_threshold, &k("healthy_threshold"), 1..101, 2) as u32;
    let unhealthy_threshold =
        ctx.int(&h.unhealthy_threshold, &k("unhealthy_threshold"), 1..101, 3) as u32;
    let expect_status = match &h.expect_status {
        None => (200, 399),
        Some(s) => match parse_status_range(s.get_ref()) {
            Some(r) => r,
            None => {
                ctx.error(
                    s.span(),
                    k("expect_status"),
                    format!(
                        "\"{}\" is not a status or range like \"200-399\"",
                        s.get_ref()
                    ),
                );
                (200, 399)
            }
        },
    };
    let jitter = match &h.jitter {
        None => 0.1,
        Some(j) => match j
            .get_ref()
            .trim()
            .strip_suffix('%')
            .and_then(|p| p.trim().parse::<f64>().ok())
        {
            Some(p) if (0.0..=100.0).contains(&p) => p / 100.0,
            _ => {
                ctx.error(
                    j.span(),
                    k("jitter"),
                    format!("\"{}\" must be a percentage like \"10%\"", j.get_ref()),
                );
                0.1
            }
        },
    };
    let initial_up = match &h.initial_state {
        None => true,
        Some(s) => match s.get_ref().as_str() {
            "up" => true,
            "down" => false,
            other => {
                ctx.error(
                    s.span(),
                    k("initial_state"),
                    format!("\"{other}\" must be \"up\" or \"down\""),
                );
                true
            }
        },
    };
    let host = h.host.as_ref().map(|s| s.get_ref().clone());
    if let Some(hs) = &h.host {
        if http::HeaderValue::from_str(hs.get_ref()).is_err() || hs.get_ref().is_empty() {
            ctx.error(hs.span(), k("host"), "not a valid Host header value");
        }
    }
    HealthCheckConfig {
        path,
        interval,
        timeout,
        healthy_threshold,
        unhealthy_threshold,
        expect_status,
        jitter,
        initial_up,
        host,
    }
}

fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let s = s.trim();
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
        None => {
            let v = s.parse().ok()?;
            (v, v)
        }
    };
    ((100..=599).contains(&lo) && (100..=599).contains(&hi) && lo <= hi).then_some((lo, hi))
}

pub(super) fn passive(
    ctx: &mut Ctx<'_>,
    upstream: &str,
    p: &RawPassiveHealth,
) -> PassiveHealthConfig {
    let k = |key: &str| format!("upstream.{upstream}.passive_health.{key}");
    PassiveHealthConfig {
        consecutive_failures: ctx.int(
            &p.consecutive_failures,
            &k("consecutive_failures"),
            1..1001,
            5,
        ) as u32,
        ejection_time: ctx.positive_duration(
            &p.ejection_time,
            &k("ejection_time"),
            Duration::from_secs(30),
        ),
        max_ejection_percent: ctx.int(
            &p.max_ejection_percent,
            &k("max_ejection_percent"),
            0..101,
            50,
        ) as u32,
    }
}

#[cfg(test)]
mod tests {
    use super::parse_status_range;

    #[test]
    fn status_ranges() {
        assert_eq!(parse_status_range("200-399"), Some((200, 399)));
        assert_eq!(parse_status_range("204"), Some((204, 204)));
        assert_eq!(parse_status_range("399-200"), None);
        assert_eq!(parse_status_range("abc"), None);
    }
}
