//! Fulcrum: a reverse-proxy load balancer daemon.
//!
//! Data flows one way: config file → validated [`config::Config`] → immutable
//! [`routing::RoutingTable`] snapshot → request path ([`proxy`]). Long-lived
//! per-server state lives in [`backend::Registry`], outside the snapshot.
#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod app;
pub mod backend;
pub mod balance;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod demo;
pub mod health;
pub mod logging;
pub mod metrics;
pub mod proxy;
pub mod routing;
pub mod server;
pub mod watch;
