//! Ward's relay: store-and-forward of ciphertext between devices.
//!
//! Not built yet: see issue 4. This crate exists so the workspace has its
//! final shape from the first commit.
#![forbid(unsafe_code)]
