//! Flotilla's wire and on-disk types: the one crate both the hub and the agent link.
//!
//! Everything that crosses a process boundary or reaches a disk is defined here and
//! nowhere else: the resource model served by the hub's API ([`resource`]), the
//! per-device desired state ([`manifest`]), the agent↔hub QUIC frames ([`wire`]),
//! the agent↔runtime-helper frames ([`runtime`]), and the records the hub's store and
//! the agent's state database keep ([`store`], [`agent_state`]).
//!
//! Binary encodings use postcard, which is not self-describing: every frame and record
//! is wrapped in a versioned envelope ([`codec`]) and golden byte vectors in the tests
//! pin the layout. Adding a field is a new version, never a silent change.

pub mod agent_state;
pub mod codec;
pub mod config;
pub mod manifest;
pub mod quantity;
pub mod resource;
pub mod runtime;
pub mod selector;
pub mod store;
pub mod time;
pub mod validate;
pub mod wire;

pub use codec::{CodecError, decode_versioned, encode_versioned};
pub use quantity::{Bytes, CpuMillis};
pub use resource::*;
pub use selector::{LabelSelector, SelectorOperator, SelectorRequirement};
pub use time::Timestamp;
