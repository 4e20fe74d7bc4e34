//! Who gets in and how: client authentication, access rules, TLS toward clients, and no
//! secret showing in logs, metrics, the console or `config print`.

#[path = "../common/mod.rs"]
mod common;

mod access;
mod auth;
mod secrets;
mod tls;
