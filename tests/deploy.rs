//! The deployment files, checked without Docker or kubectl: the Kubernetes
//! manifests and the compose file parse as YAML and agree with the Fulcrum
//! config they carry (probe paths, ports, ConfigMap mount, grace period,
//! headless Service, HPA target); every example config passes `fulcrum
//! check`; the Dockerfile's HEALTHCHECK command works against a real
//! admin listener.

mod common;
use common::*;

use std::path::{Path, PathBuf};
use std::process::Command;

use yaml_rust2::{Yaml, YamlLoader};

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn yaml_docs(p: &str) -> Vec<Yaml> {
    let text = std::fs::read_to_string(repo(p)).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn find<'a>(docs: &'a [Yaml], kind: &str, name: &str) -> &'a Yaml {
    docs.iter()
        .find(|d| d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn list(y: &Yaml) -> &[Yaml] {
    y.as_vec().map(|v| v.as_slice()).unwrap_or(&[])
}

fn s(y: &Yaml) -> &str {
    y.as_str()
        .unwrap_or_else(|| panic!("expected a string, got {y:?}"))
}

/// `fulcrum check` on `toml` (with DNS names mapped by a hosts file, since
/// cluster and compose names do not resolve here); returns the parsed TOML.
fn check(toml: &str, names: &[&str]) -> toml::Table {
    let dir = temp_dir();
    let path = dir.join("fulcrum.toml");
    std::fs::write(&path, toml).unwrap();
    let hosts = dir.join("hosts");
    // A distinct loopback address per name (nothing is connected to).
    let lines: String = names
        .iter()
        .enumerate()
        .map(|(i, n)| format!("127.0.0.{} {n}\n", i + 1))
        .collect();
    std::fs::write(&hosts, lines).unwrap();
    let out = Command::new(bin())
        .args(["check", "--config"])
        .arg(&path)
        .env("FULCRUM_HOSTS_FILE", &hosts)
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("config ok"),
        "fulcrum check failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    toml.parse().unwrap()
}

fn port_of(addr: &toml::Value) -> i64 {
    addr.as_str()
        .and_then(|a| a.rsplit_once(':'))
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {addr:?}"))
}

fn secs(d: &toml::Value) -> i64 {
    let d = d.as_str().unwrap();
    d.strip_suffix('s')
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{d}"))
}

#[test]
fn kubernetes_manifests_agree_with_their_config() {
    let fulcrum = yaml_docs("examples/kubernetes/fulcrum.yaml");
    let app = yaml_docs("examples/kubernetes/app.yaml");

    // The headless Service the upstream names.
    let headless = find(&app, "Service", "app-headless");
    assert_eq!(s(&headless["spec"]["clusterIP"]), "None");
    let svc_port = headless["spec"]["ports"][0]["port"].as_i64().unwrap();
    let dns = "app-headless.default.svc.cluster.local";

    // The ConfigMap's fulcrum.toml passes `fulcrum check`.
    let cm = find(&fulcrum, "ConfigMap", "fulcrum-config");
    let toml_text = s(&cm["data"]["fulcrum.toml"]);
    let cfg = check(toml_text, &[dns]);
    let admin_port = port_of(&cfg["admin"]["listen"]);
    let web = &cfg["listener"][0];
    let web_port = port_of(&web["listen"]);
    let upstream = &cfg["upstream"]["app"];
    assert_eq!(
        upstream["servers"][0]["address"].as_str(),
        Some(format!("{dns}:{svc_port}").as_str()),
        "the upstream is the headless Service"
    );
    assert!(upstream.get("resolve_interval").is_some());

    // The Deployment: probes on the admin port, ports as configured, the
    // config mounted as a directory (ConfigMap updates reach it), --watch.
    let dep = find(&fulcrum, "Deployment", "fulcrum");
    let pod = &dep["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let port = |name: &str| {
        list(&c["ports"])
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_i64())
            .unwrap_or_else(|| panic!("no container port {name}"))
    };
    assert_eq!(port("admin"), admin_port);
    assert_eq!(port("web"), web_port);
    assert_eq!(s(&c["readinessProbe"]["httpGet"]["path"]), "/ready");
    assert_eq!(s(&c["readinessProbe"]["httpGet"]["port"]), "admin");
    assert_eq!(s(&c["livenessProbe"]["httpGet"]["path"]), "/health");
    assert_eq!(s(&c["livenessProbe"]["httpGet"]["port"]), "admin");
    let args: Vec<&str> = list(&c["args"]).iter().map(s).collect();
    assert_eq!(&args[..3], ["run", "--config", "/etc/fulcrum/fulcrum.toml"]);
    assert!(args.contains(&"--watch"), "{args:?}");
    let mount = &c["volumeMounts"][0];
    assert_eq!(s(&mount["mountPath"]), "/etc/fulcrum");
    assert!(
        mount["subPath"].is_badvalue(),
        "subPath mounts never update"
    );
    let vol = list(&pod["volumes"])
        .iter()
        .find(|v| v["name"] == mount["name"])
        .unwrap();
    assert_eq!(s(&vol["configMap"]["name"]), "fulcrum-config");
    assert!(c["resources"]["requests"]["cpu"].as_str().is_some());
    assert!(c["resources"]["limits"]["memory"].as_str().is_some());
    assert_eq!(pod["securityContext"]["runAsNonRoot"].as_bool(), Some(true));

    // Grace period covers the preStop pause and the whole drain.
    let pre_stop: Vec<&str> = list(&c["lifecycle"]["preStop"]["exec"]["command"])
        .iter()
        .map(s)
        .collect();
    assert_eq!(pre_stop[0], "sleep");
    let pause: i64 = pre_stop[1].parse().unwrap();
    let drain = secs(&cfg["global"]["shutdown_timeout"]);
    let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap();
    assert!(grace > pause + drain, "grace {grace} <= {pause} + {drain}");

    // The Service sends traffic to the web port.
    let svc = find(&fulcrum, "Service", "fulcrum");
    assert_eq!(s(&svc["spec"]["ports"][0]["targetPort"]), "web");
    assert_eq!(
        svc["spec"]["selector"],
        dep["spec"]["template"]["metadata"]["labels"]
    );

    // The apps: the HPA scales the Deployment behind the headless Service.
    let app_dep = find(&app, "Deployment", "app");
    let hpa = find(&app, "HorizontalPodAutoscaler", "app");
    assert_eq!(s(&hpa["spec"]["scaleTargetRef"]["kind"]), "Deployment");
    assert_eq!(s(&hpa["spec"]["scaleTargetRef"]["name"]), "app");
    assert!(hpa["spec"]["minReplicas"].as_i64().unwrap() >= 1);
    assert_eq!(
        headless["spec"]["selector"],
        app_dep["spec"]["template"]["metadata"]["labels"]
    );
    let app_c = &app_dep["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(app_c["ports"][0]["containerPort"].as_i64(), Some(svc_port));
    assert!(
        app_c["resources"]["requests"]["cpu"].as_str().is_some(),
        "the HPA needs CPU requests"
    );
    // The probe path of Fulcrum's active check is the app's readiness path.
    assert_eq!(
        upstream["health_check"]["path"].as_str(),
        app_c["readinessProbe"]["httpGet"]["path"].as_str()
    );
}

#[test]
fn compose_file_wires_three_apps_fulcrum_prometheus_grafana() {
    let docs = yaml_docs("examples/docker-compose.yml");
    let services = &docs[0]["services"];
    for name in ["app1", "app2", "app3", "fulcrum", "prometheus", "grafana"] {
        assert!(!services[name].is_badvalue(), "no service {name}");
    }
    let toml_text = std::fs::read_to_string(repo("examples/compose/fulcrum.toml")).unwrap();
    let cfg = check(&toml_text, &["app1", "app2", "app3"]);
    let servers: Vec<&str> = cfg["upstream"]["app"]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["address"].as_str().unwrap())
        .collect();
    assert_eq!(servers, ["app1:80", "app2:80", "app3:80"]);

    let f = &services["fulcrum"];
    let published: Vec<&str> = list(&f["ports"]).iter().map(s).collect();
    for p in [
        port_of(&cfg["admin"]["listen"]),
        port_of(&cfg["listener"][0]["listen"]),
    ] {
        assert!(
            published.iter().any(|x| x.ends_with(&format!(":{p}"))),
            "{p} not published"
        );
    }
    assert!(list(&f["volumes"])
        .iter()
        .any(|v| s(v) == "./compose:/etc/fulcrum:ro"));
    assert!(list(&f["command"]).iter().any(|a| s(a) == "--watch"));

    // Every mounted file exists, except the observability files
    // (examples/prometheus.yml, examples/grafana-dashboard.json), which the
    // compose file only references.
    let mut referenced = Vec::new();
    for (_, svc) in services.as_hash().unwrap() {
        for v in list(&svc["volumes"]) {
            let src = s(v).split(':').next().unwrap();
            referenced.push(src.to_string());
            if !src.ends_with("prometheus.yml") && !src.ends_with("grafana-dashboard.json") {
                assert!(repo("examples").join(src).exists(), "{src} missing");
            }
        }
    }
    assert!(referenced.iter().any(|r| r == "./prometheus.yml"));
    assert!(referenced.iter().any(|r| r == "./grafana-dashboard.json"));
}

/// The Dockerfile's HEALTHCHECK, exec form: `["bash", "-c", script]`.
fn healthcheck_command() -> Vec<String> {
    let text = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    let joined = text.replace("\\\n", " ");
    let line = joined
        .lines()
        .find(|l| l.starts_with("HEALTHCHECK"))
        .expect("a HEALTHCHECK");
    let json = &line[line.find("CMD").unwrap() + 3..];
    serde_json::from_str(json.trim()).unwrap()
}

#[tokio::test]
async fn dockerfile_basics_and_healthcheck_against_a_real_admin_listener() {
    let text = std::fs::read_to_string(repo("Dockerfile")).unwrap();
    for needle in [
        "cargo build --release --locked",
        "STOPSIGNAL SIGTERM",
        "USER 10001",
        "COPY examples/fulcrum.toml /etc/fulcrum/fulcrum.toml",
        "\"--config\", \"/etc/fulcrum/fulcrum.toml\"",
    ] {
        assert!(text.contains(needle), "Dockerfile lacks {needle:?}");
    }
    // The image's default config passes `fulcrum check`, and its ports are exposed.
    let image_cfg = check(
        &std::fs::read_to_string(repo("examples/fulcrum.toml")).unwrap(),
        &[],
    );
    let expose = text.lines().find(|l| l.starts_with("EXPOSE")).unwrap();
    for p in [
        port_of(&image_cfg["admin"]["listen"]),
        port_of(&image_cfg["listener"][0]["listen"]),
    ] {
        assert!(expose.split_whitespace().any(|x| x == p.to_string()), "{p}");
    }
    assert!(text.contains(&format!(
        "FULCRUM_ADMIN_PORT={}",
        port_of(&image_cfg["admin"]["listen"])
    )));

    // The check itself: healthy against a serving Fulcrum (even with its
    // upstream down), unhealthy when nothing listens.
    let f = Fulcrum::start(&config(
        "[[route]]\nupstream = \"u\"\n[upstream.u]\nservers = [{ address = \"127.0.0.1:1\" }]\n",
    ));
    let port = f.admin.port();
    let healthy = tokio::task::spawn_blocking(move || healthcheck(port));
    assert!(
        healthy.await.unwrap(),
        "unhealthy against a serving Fulcrum"
    );
    drop(f);
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let healthy = tokio::task::spawn_blocking(move || healthcheck(closed));
    assert!(!healthy.await.unwrap(), "healthy with nothing listening");
}

/// Runs the Dockerfile's HEALTHCHECK command against `port`.
fn healthcheck(port: u16) -> bool {
    let cmd = healthcheck_command();
    Command::new(&cmd[0])
        .args(&cmd[1..])
        .env("FULCRUM_ADMIN_PORT", port.to_string())
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success()
}
