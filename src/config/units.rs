//! Parsing of the unit-bearing values in the config: durations and byte sizes.

use std::time::Duration;

/// Parses `"250ms"`, `"5s"`, `"2m"`, `"1h"`, `"30d"` (and `"0s"`). A unit is required so
/// that `"30"` can never silently mean 30 ms or 30 minutes.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .ok_or_else(|| format!("duration \"{s}\" needs a unit: ms, s, m, h or d (e.g. \"5s\")"))?;
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(format!("duration \"{s}\" must start with a number"));
    }
    let value: f64 = num
        .parse()
        .map_err(|_| format!("duration \"{s}\" has an invalid number"))?;
    let secs = match unit {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        _ => {
            return Err(format!(
                "duration \"{s}\" has unknown unit \"{unit}\": use ms, s, m, h or d"
            ))
        }
    };
    if !secs.is_finite() || secs > 365.0 * 24.0 * 3600.0 {
        return Err(format!("duration \"{s}\" is out of range"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses a byte size: `"512"`, `"64KiB"`, `"10MiB"`, `"1GiB"`, `"10MB"`, `"1k"`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: u64 = num.parse().map_err(|_| {
        format!("size \"{s}\" must be a whole number with an optional unit (e.g. \"10MiB\")")
    })?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "k" | "K" | "KB" | "kB" => 1000,
        "KiB" | "Ki" => 1 << 10,
        "M" | "MB" => 1_000_000,
        "MiB" | "Mi" => 1 << 20,
        "G" | "GB" => 1_000_000_000,
        "GiB" | "Gi" => 1 << 30,
        other => {
            return Err(format!(
                "size \"{s}\" has unknown unit \"{other}\": use B, KiB, MiB, GiB, KB, MB or GB"
            ))
        }
    };
    value
        .checked_mul(mult)
        .ok_or_else(|| format!("size \"{s}\" is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("5s").unwrap(), Duration::from_secs(5));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("30").unwrap_err().contains("needs a unit"));
        assert_eq!(
            parse_duration("30d").unwrap(),
            Duration::from_secs(30 * 86400)
        );
        assert!(parse_duration("5w").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10MiB").unwrap(), 10 << 20);
        assert_eq!(parse_size("64KiB").unwrap(), 65536);
        assert_eq!(parse_size("100").unwrap(), 100);
        assert_eq!(parse_size("1MB").unwrap(), 1_000_000);
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5XB").is_err());
    }
}
