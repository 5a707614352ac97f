//! Ward's keyserver: the clinicians' public-key directory and the wrapped
//! resource keys.
//!
//! Not built yet: see issue 3. This crate exists so the workspace has its
//! final shape from the first commit.
#![forbid(unsafe_code)]
