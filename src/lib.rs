//! levee: an HTTP load balancer that never sends a server more than it can take.
//!
//! See `../shared/design.md` for the map of modules and the request flow.
#![forbid(unsafe_code)]

pub mod admin;
pub mod backend;
pub mod check;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod drill;
pub mod events;
pub mod health;
pub mod journal;
pub mod loadtest;
pub mod observe;
pub mod proxy;
pub mod shield;
