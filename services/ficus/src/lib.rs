//! The `ficus` command as a library: the CLI and the in-process control plane, so tests
//! drive exactly what users run.

pub mod cli;
pub mod commands;
pub mod demo;
pub mod health;
pub mod output;
pub mod spec_file;
pub mod up;
pub mod watch;
