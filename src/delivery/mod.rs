//! Delivery to Pega: the worker claims due events from the outbox, posts them (one JSON array
//! per POST), and records each attempt; the schedule decides retries and dead letters.

pub mod client;
pub mod metrics;
pub mod schedule;
mod worker;

pub use worker::{Step, Worker};
