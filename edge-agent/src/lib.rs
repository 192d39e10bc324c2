//! Flotilla's edge agent (`flotilla-agent`): runs the containers its hub wants on
//! this device, through libcontainer, and keeps running them when the hub is gone.
//!
//! - [`reconcile`] is the pure core: desired + observed + now → actions.
//! - [`agent`] carries the actions out and runs the loop.
//! - [`sync`] keeps the desired state in step with the hub over QUIC; [`enrol`] gets
//!   the device its certificate the first time and [`renew`] a new one before it
//!   expires; [`pull`] fetches images.
//! - [`state`] is the redb database that makes all of it survive restarts.

pub mod agent;
pub mod check;
pub mod config;
pub mod dirs;
pub mod enrol;
pub mod exec;
pub mod executor;
pub mod facts;
pub mod host;
pub mod logs;
pub mod net;
pub mod probes;
pub mod pull;
pub mod reconcile;
pub mod renew;
pub mod secrets;
pub mod state;
pub mod sync;
pub mod transport;
pub mod volumes;
