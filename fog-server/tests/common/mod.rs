//! Message builders shared by the fog server's integration tests (from the test kit).
#![allow(unused_imports)] // each test binary uses some of them

pub use testkit::messages::{request, station};
