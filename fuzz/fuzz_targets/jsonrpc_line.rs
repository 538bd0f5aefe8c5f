//! One line from a daemon socket client: decode, announced descriptors, routing (the MCP
//! message types rmcp accepts), and `agentkeys/run` parameters. Must never panic.
#![no_main]

use agentkeys_daemon::transport::{Decoded, Route, announced_fds, decode, route};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    let Decoded::Json(value) = decode(line) else {
        return;
    };
    let _ = announced_fds(&value);
    if let Route::Custom { method, params, .. } = route(value)
        && method == "agentkeys/run"
    {
        let _ = agentkeys_daemon::runner::parse_spec(&params);
    }
});
