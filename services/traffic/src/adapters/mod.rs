//! Data planes other than the embedded proxy that ficus can drive with its routes.
//!
//! An adapter turns the route table into another proxy's configuration and applies it
//! safely: a configuration the proxy refuses never replaces the one it serves.

pub mod nginx;
