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
    /// Self-contained demo: three built-in backends, a proxy and the admin listener.
    Demo {
        #[arg(long, default_value_t = 8080)]
        port: u16,
        #[command(flatten)]
        log: LogArgs,
    },
}
