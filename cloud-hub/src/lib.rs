//! Flotilla's hub: the control plane and the operator CLI, in one binary (`flotilla`).
//!
//! - [`hub`] wires it together: store, API, QUIC endpoint, controllers.
//! - [`api`] is the HTTPS API; [`sync`] the QUIC endpoint agents talk to.
//! - [`controllers`] are pure planners plus one async loop that runs them on the leader.
//! - [`metrics`] is what `/metrics` reports; [`notify`] tells systemd the hub is ready
//!   and alive.
//! - [`cli`] is the operator CLI; [`demo`] the one-command demo; [`sim`] the fleet
//!   simulator, built on the agent's own sync core.
//!
//! The replicated store itself lives in the `hub-store` crate, the only user of openraft.

pub mod advertise;
pub mod api;
pub mod cli;
pub mod cluster;
pub mod controllers;
pub mod demo;
pub mod hub;
pub mod metrics;
pub mod notify;
pub mod sealing;
pub mod sim;
pub mod state;
pub mod sync;
pub mod util;
