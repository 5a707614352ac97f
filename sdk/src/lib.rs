//! Ward's client SDK.
//!
//! All cryptography happens here, on the device. The sans-IO protocol core
//! lives in its own crate, [`ward_core`] (`sdk/core/`), so that the servers can
//! link the verifiers without the client's store and network code; this crate
//! re-exports it and will add the encrypted device store and the network
//! client around it.
#![forbid(unsafe_code)]

pub use ward_core as core;
pub use ward_proto as proto;
