mod backend;
mod helpers;
mod server;

mod check_cli;
mod config;
mod corpus;
mod crash;
mod delivery;
mod edge_cases;
mod faults;
mod golden;
mod ops_cli;
mod pega;
mod prepare_cli;
mod previews;
mod properties;
mod triggers;
