//! Config parsing and validation never panic, whatever the text. Inputs that
//! would make validation resolve a DNS name are skipped (no network while
//! fuzzing); IP literals are validated like any other address.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn names_a_host(v: &toml::Value) -> bool {
    match v {
        toml::Value::String(s) => match s.rsplit_once(':') {
            Some((host, port)) if port.parse::<u16>().is_ok() => {
                let host = host.trim_start_matches('[').trim_end_matches(']');
                host.parse::<std::net::IpAddr>().is_err()
            }
            _ => false,
        },
        toml::Value::Array(a) => a.iter().any(names_a_host),
        toml::Value::Table(t) => t.values().any(names_a_host),
        _ => false,
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(v) = text.parse::<toml::Value>() {
        if names_a_host(&v) {
            return;
        }
    }
    let path = std::path::Path::new("/nonexistent/fuzz.toml");
    match fulcrum::config::Config::from_toml(path, text) {
        Ok(c) => {
            // A valid config names its listeners and upstreams uniquely.
            for (i, l) in c.listeners.iter().enumerate() {
                assert!(c.listeners[..i].iter().all(|o| o.name != l.name));
            }
        }
        Err(e) => {
            // Every error renders (file, line, key).
            let _ = e.to_string();
        }
    }
});
