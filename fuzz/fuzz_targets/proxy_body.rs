//! A request body the egress proxy may substitute into (`agentkeys_daemon::proxy::body`),
//! as JSON and as a form. Must never panic; an accepted body holds the placeholder only
//! inside the sites found, and its rewrite of a valid JSON document is valid JSON again.
#![no_main]

use agentkeys_daemon::proxy::body::{Kind, rewrite, sites};
use agentkeys_types::binding::BodyField;
use libfuzzer_sys::fuzz_target;

const PH: &[u8] = b"sk-PLACEHOLDER";

fuzz_target!(|body: &[u8]| {
    let fields: Vec<BodyField> = ["/api_key", "/a/0", "form:api_key"]
        .iter()
        .map(|f| BodyField::parse(f).expect("a valid field"))
        .collect();
    for kind in [Kind::Json, Kind::Form] {
        let Ok(found) = sites(body, &kind, &fields, PH) else {
            continue;
        };
        let mut at = 0;
        while let Some(i) = memchr::memmem::find(&body[at..], PH) {
            let (start, end) = (at + i, at + i + PH.len());
            assert!(found.iter().any(|s| s.start <= start && end <= s.end));
            at = end;
        }
        let mut with: Vec<_> = found.into_iter().map(|r| (r, &b"V\"\\\n"[..])).collect();
        let out = rewrite(body, &kind, &mut with).expect("sites rewrite");
        if kind == Kind::Json && serde_json::from_slice::<serde_json::Value>(body).is_ok() {
            serde_json::from_slice::<serde_json::Value>(&out).expect("still JSON");
        }
    }
});
