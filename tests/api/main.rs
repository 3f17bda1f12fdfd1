mod helpers;
mod server;

mod check_cli;
mod config;
mod corpus;
mod edge_cases;
mod golden;
mod prepare_cli;
mod previews;
mod properties;
mod triggers;
