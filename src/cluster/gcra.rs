//! The GCRA rate-limit script Redis runs, and the keys and arguments it takes.
//!
//! One bucket per (route name, client IP) is one Redis string holding the
//! bucket's theoretical arrival time (TAT) in microseconds of Redis's own
//! clock (`TIME`), so instances with skewed clocks still agree. The key
//! expires (`PX`) exactly when the bucket would be full again, so an idle
//! client costs nothing after `burst / requests_per_second` seconds.

use std::fmt::Write as _;
use std::net::IpAddr;

/// KEYS[1]: the bucket. ARGV[1]: emission interval in µs (1e6 / rate).
/// ARGV[2]: burst. Answers `{1, 0}` (allowed, one request taken) or
/// `{0, ms}` (denied; one request fits in `ms` milliseconds).
///
/// The TAT is written with `%.0f`: Lua 5.1's default number formatting
/// keeps 14 digits, fewer than a µs timestamp has.
pub const SCRIPT: &str = r#"
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local tolerance = interval * tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
if new_tat - now > tolerance then
  return {0, math.ceil((new_tat - now - tolerance) / 1000)}
end
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil((new_tat - now) / 1000))
return {1, 0}
"#;

/// A route's limit as the script's arguments, formatted once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// `key_prefix` + route name + `/`: a client's key appends its IP.
    key_base: String,
    pub interval_us: String,
    pub burst: String,
}

impl Limit {
    pub fn new(key_prefix: &str, route: &str, requests_per_second: f64, burst: u32) -> Limit {
        Limit {
            key_base: format!("{key_prefix}{route}/"),
            interval_us: format!("{:.3}", 1e6 / requests_per_second),
            burst: burst.to_string(),
        }
    }

    /// The bucket key of `client`. The IP comes last after a `/`, which no
    /// IP text contains, so any route name (spaces, `:`, unicode) gives
    /// distinct keys. IPv4-mapped IPv6 is written as IPv4: a dual-stack
    /// listener and an IPv4 one on another instance share the bucket.
    pub fn key(&self, client: IpAddr) -> String {
        let mut k = String::with_capacity(self.key_base.len() + 39);
        k.push_str(&self.key_base);
        let _ = write!(k, "{}", client.to_canonical());
        k
    }
}

/// The script's answer: allowed, or Retry-After in whole seconds (>= 1).
pub fn verdict(allowed: i64, wait_ms: i64) -> Result<(), u64> {
    if allowed == 1 {
        return Ok(());
    }
    let ms = wait_ms.max(0) as u64;
    Err(ms.div_ceil(1000).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_prefix_route_and_canonical_ip() {
        let l = Limit::new("fulcrum:", "api", 100.0, 200);
        assert_eq!(l.key("10.0.0.1".parse().unwrap()), "fulcrum:api/10.0.0.1");
        assert_eq!(
            l.key("::ffff:10.0.0.1".parse().unwrap()),
            "fulcrum:api/10.0.0.1"
        );
        assert_eq!(l.key("::1".parse().unwrap()), "fulcrum:api/::1");
        assert_eq!(l.interval_us, "10000.000");
        assert_eq!(l.burst, "200");
        // A name that looks like the start of an IPv6 address cannot make
        // two (route, client) pairs collide.
        let a = Limit::new("p:", "a:b", 1.0, 1).key("::1".parse().unwrap());
        let b = Limit::new("p:", "a", 1.0, 1).key("b::1".parse().unwrap());
        assert_ne!(a, b);
        let u = Limit::new("p:", "nom avec espaces é", 3.0, 1);
        assert_eq!(
            u.key("192.0.2.1".parse().unwrap()),
            "p:nom avec espaces é/192.0.2.1"
        );
        assert_eq!(u.interval_us, "333333.333");
    }

    #[test]
    fn verdict_rounds_retry_after_up_to_whole_seconds() {
        assert_eq!(verdict(1, 0), Ok(()));
        assert_eq!(verdict(0, 1), Err(1));
        assert_eq!(verdict(0, 1000), Err(1));
        assert_eq!(verdict(0, 1001), Err(2));
        assert_eq!(verdict(0, 0), Err(1));
        assert_eq!(verdict(0, 9_999), Err(10));
    }
}
