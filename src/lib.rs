//! Fulcrum: a reverse-proxy load balancer daemon.
//!
//! Data flows one way: config file → validated [`config::Config`] → immutable
//! [`routing::RoutingTable`] snapshot → request path ([`proxy`]). Long-lived
//! per-server state lives in [`backend::Registry`], outside the snapshot.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod acme;
pub mod admin;
pub mod app;
pub mod backend;
pub mod balance;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod conn_state;
pub mod ctl;
pub mod demo;
pub mod health;
pub mod htpasswd;
pub mod logging;
pub mod metrics;
pub mod policy;
pub mod pool;
pub mod proxy;
pub mod ratelimit;
pub mod reload;
pub mod req_body;
pub mod retry_budget;
pub mod routing;
pub mod server;
pub mod tls;
pub mod watch;
