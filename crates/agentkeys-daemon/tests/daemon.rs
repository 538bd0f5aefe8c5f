//! End-to-end tests of `agentkeys-daemon` with the real server and the real CLI: one test
//! binary, a module per area, each test with its own server, homes and socket.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns panic on purpose

mod daemon {
    mod clients;
    pub mod common;
    mod delivery;
    mod deployment;
    mod hardening;
    mod hygiene;
    mod load;
    mod mcp;
    mod pairing;
    mod policy;
    mod proxy;
    mod run;
}
