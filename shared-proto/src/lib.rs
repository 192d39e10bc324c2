//! Flotilla's wire and on-disk types: the one crate both the hub and the agent link.
//!
//! Everything that crosses a process boundary or reaches a disk is defined here and
//! nowhere else: the resource model served by the hub's API ([`resource`]), the
//! per-device desired state ([`manifest`]), the agent↔hub QUIC frames ([`wire`]),
//! the agent↔runtime-helper frames ([`runtime`]), and the records the hub's store and
//! the agent's state database keep ([`store`], [`agent_state`]). The sync protocol's
//! two sides are pure state machines here too ([`session`]), so the agent, the hub and
//! the fleet simulator share one implementation; [`clock`] is the one clock they read.
//!
//! Binary encodings use postcard, which is not self-describing: every frame and record
//! is wrapped in a versioned envelope ([`codec`]) and golden byte vectors in the tests
//! pin the layout. Changing a shape is a new version, never a silent change, and the
//! previous version still decodes.

pub mod agent_state;
pub mod clock;
pub mod codec;
pub mod config;
pub mod fuzzing;
pub mod manifest;
#[cfg(feature = "openapi")]
pub mod openapi;
pub mod quantity;
pub mod resource;
pub mod runtime;
pub mod selector;
pub mod session;
pub mod store;
pub mod time;
pub mod validate;
pub mod wire;
pub mod workload;

pub use codec::{CodecError, decode_versioned, encode_versioned};
pub use quantity::{Bytes, CpuMillis};
pub use resource::*;
pub use selector::{LabelSelector, SelectorOperator, SelectorRequirement};
pub use time::Timestamp;
