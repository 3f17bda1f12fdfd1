//! pegabridge carries Pega's offer and interaction identifiers through email and brings every
//! email interaction back to Pega.
//!
//! - [`template`]: prepares email templates with the manual-field `<meta>` tags and checks them.
//! - [`config`]: `pegabridge.toml`, environment overrides and `${VAR}` expansion.
//! - [`cli`]: the command line.
#![forbid(unsafe_code)]

/// The `User-Agent` of every request pegabridge makes.
pub const USER_AGENT: &str = concat!("pegabridge/", env!("CARGO_PKG_VERSION"));

pub mod activity;
pub mod app;
pub mod bounces;
pub mod broadcast;
pub mod cli;
pub mod config;
pub mod console;
pub mod delivery;
pub mod engagement;
pub mod event;
pub mod events;
pub mod http;
pub mod intake;
pub mod mail;
pub mod mapping;
pub mod mock;
pub mod outbox;
pub mod quote;
pub mod recording;
pub mod store;
pub mod tasks;
pub mod template;
