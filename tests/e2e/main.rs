//! PERE end to end: a real server on a loopback port, real HTTP.
//! One test binary, a module per topic.

#![allow(clippy::unwrap_used, missing_docs)]

mod ack_batching;
mod admin;
mod auth;
mod cli;
mod cli_exec;
mod cli_pace;
mod cli_ux;
mod cluster;
mod cluster_lag;
mod cluster_more;
mod cluster_receipts;
mod cluster_replicas;
mod cluster_snapshot;
mod cluster_unknown;
mod connections;
mod durability;
mod envelope;
mod errors;
mod feed;
mod feedback;
mod jwt;
mod limits;
mod load;
mod metrics;
mod overdue;
mod pere_compat;
mod pipelined_receipts;
mod procs;
mod protocol_doc;
mod publish;
mod receipts;
mod redelivery;
mod retention;
mod shutdown;
mod store_failure;
mod tls;
mod tls_clients;
mod web;
mod web_live;
mod written;
