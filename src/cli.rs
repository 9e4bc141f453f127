//! Command-line interface (SPEC "Command line").

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "fulcrum",
    version,
    about = "A reverse-proxy load balancer daemon"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log level (error, warn, info, debug, trace); RUST_LOG overrides it.
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy until SIGTERM/SIGINT.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Also reload (as SIGHUP does) when the config file or a certificate
        /// it names changes on disk, including a ConfigMap symlink swap.
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Validate a config file: prints "config ok" or every error found.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Runtime control through the admin API: list, drain, disable, enable
    /// and re-weight servers.
    Ctl(CtlArgs),
    /// Self-contained demo: three built-in backends, a proxy and the admin listener.
    Demo {
        #[arg(long, default_value_t = 8080)]
        port: u16,
        #[command(flatten)]
        log: LogArgs,
    },
}

/// `fulcrum ctl`: where the admin API is, and what to do.
#[derive(Debug, clap::Args)]
pub struct CtlArgs {
    /// Take the admin address and token file from this config.
    #[arg(long, short, global = true, conflicts_with_all = ["admin", "token_file"])]
    pub config: Option<PathBuf>,
    /// The admin listener's address (host:port); needs --token-file.
    #[arg(long, global = true, requires = "token_file")]
    pub admin: Option<String>,
    /// The file holding the API token; needs --admin.
    #[arg(long, global = true, requires = "admin")]
    pub token_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: CtlCommand,
}

/// A server of an upstream, as `ctl` names it.
#[derive(Debug, clap::Args)]
pub struct ServerArg {
    /// Upstream name.
    pub upstream: String,
    /// Server address as configured resolved (ip:port, IPv6 as [::1]:80).
    pub address: String,
}

#[derive(Debug, Subcommand)]
pub enum CtlCommand {
    /// Every upstream's servers, as a table.
    Servers,
    /// No new requests (sticky clients and in-flight requests finish).
    Drain {
        #[command(flatten)]
        server: ServerArg,
        /// Return only when the server has no request in flight (exit 0),
        /// or at --timeout (exit 1).
        #[arg(long)]
        wait: bool,
        /// How long --wait waits.
        #[arg(long, default_value = "60s", requires = "wait")]
        timeout: String,
    },
    /// No requests at all (maintenance); health checks go on.
    Disable {
        #[command(flatten)]
        server: ServerArg,
    },
    /// Clears drain/disable: the server follows its health again.
    Enable {
        #[command(flatten)]
        server: ServerArg,
    },
    /// Sets a runtime weight (1..=1000), or `reset` to the configured one.
    Weight {
        #[command(flatten)]
        server: ServerArg,
        /// N, or "reset".
        value: String,
    },
}
