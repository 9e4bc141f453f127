//! The `fulcrum` binary: parse arguments, load config, run. Exit codes: 0 after
//! a clean shutdown, 1 on a config error, 2 when a listener can't bind.

use std::process::ExitCode;

use clap::Parser;
use fulcrum::cli::{Cli, Command};
use fulcrum::config::Config;

fn runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if workers > 0 {
        b.worker_threads(workers);
    }
    b.enable_all().build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(c) => {
                for w in &c.warnings {
                    eprintln!("warning: {w}");
                }
                println!("config ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
        Command::Run { config, watch, log } => {
            let _log_guard = fulcrum::logging::init(log.log_format, &log.log_level);
            let config = match Config::load(&config) {
                Ok(c) => {
                    for w in &c.warnings {
                        tracing::warn!(warning = %w, "config warning");
                    }
                    c
                }
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(1);
                }
            };
            let rt = match runtime(config.global.worker_threads) {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            let options = fulcrum::app::RunOptions { watch };
            match rt.block_on(fulcrum::app::run_with(config, options, |_| {})) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(e.exit_code() as u8)
                }
            }
        }
        Command::Ctl(args) => {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(fulcrum::ctl::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::Demo { port, log } => {
            let _log_guard = fulcrum::logging::init(log.log_format, &log.log_level);
            let rt = match runtime(0) {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("cannot start runtime: {e}");
                    return ExitCode::from(1);
                }
            };
            match rt.block_on(fulcrum::demo::run(port)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::from(2)
                }
            }
        }
    }
}
