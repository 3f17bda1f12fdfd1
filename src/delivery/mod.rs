//! Delivery to Pega: the worker claims due events from the outbox, posts them (one JSON array
//! per POST), and records each attempt; the schedule decides retries and dead letters.

pub mod breaker;
pub mod capture;
pub mod client;
pub mod concurrency;
pub mod kafka;
pub mod metrics;
pub mod schedule;
pub mod sink;
mod worker;

pub use worker::{FaultHook, Inbox, Step, Worker};
