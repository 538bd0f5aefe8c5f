//! End-to-end tests of the `agentkeys` binary against a real `agentkeys-server` process:
//! one test binary (cheap to link on 2 cores), a module per area, each test with its own
//! server and `AGENTKEYS_HOME`.

#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns panic on purpose

mod cli {
    mod agents;
    mod approvals;
    mod audit;
    pub mod common;
    mod credentials;
    mod hygiene;
    mod memory;
    mod session;
    mod tls;
    mod watch;
}
