//! Tests that load the machine or measure the whole process: faults under load, integrity
//! under load, hostile and slow clients, and the comparison bench in quick mode. Those that
//! load or measure run alone, the others take shared turns (`common::turns`), so no
//! measurement is another test's.

#[path = "../common/mod.rs"]
mod common;

mod bounded_notices;
mod compare_quick;
mod faults;
mod hostile;
mod integrity;
mod slow_clients;
