//! Clients as they are: real client programs and drivers, the smallest clients showing what
//! the drivers' own suites found differing, broken input and shutdown, and the limits
//! clients run into.

#[path = "../common/mod.rs"]
mod common;

mod clients;
mod driver_transparency;
mod limits;
mod robustness;
