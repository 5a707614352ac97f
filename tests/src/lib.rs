//! Shared helpers for Ward's cross-service tests in `tests/tests/`.
#![forbid(unsafe_code)]

pub mod keyserver;
pub mod proxy;
pub mod relay;
