//! Integration tests of agentkeys-server: one test binary (cheap to link on 2 cores) with
//! a module per area. In-process tests bind port 0 and talk through the real HTTP client;
//! `e2e` starts the real binary.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns panic on purpose

mod server {
    mod api;
    mod approvals;
    mod bad_input;
    mod bindings;
    pub mod common;
    mod e2e;
    mod mitm;
    mod passkeys;
    mod read_cost;
    mod replicas;
    mod state;
    mod store;
    mod tools;
}
