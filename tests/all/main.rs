//! skyhost's integration tests: one binary of modules, so the machine links once.

mod batches;
mod cli;
mod cluster;
mod conformance;
mod console;
mod direct;
mod discovery;
mod game;
mod groups;
mod harbor;
mod health;
mod hibernation;
mod local;
mod metrics;
mod multicast;
mod projects;
mod support;
mod tenants;
mod tls;
mod tracing;
mod upgrade;
