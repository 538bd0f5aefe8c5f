//! Every JSON body the server accepts, deserialized as its axum extractor does. Must never
//! panic; what deserializes must serialize again.
#![no_main]

use agentkeys_types::api::{
    ApproveRequest, CreateSessionRequest, LinkIdentityRequest, OpenAuthRequest,
    ReadCredentialRequest, RevokeRequest, StoreCredentialRequest,
};
use libfuzzer_sys::fuzz_target;

fn roundtrip<T: serde::de::DeserializeOwned + serde::Serialize>(body: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<T>(body) {
        serde_json::to_vec(&v).expect("a parsed body serializes again");
    }
}

fuzz_target!(|body: &[u8]| {
    roundtrip::<CreateSessionRequest>(body);
    roundtrip::<RevokeRequest>(body);
    roundtrip::<StoreCredentialRequest>(body);
    roundtrip::<ReadCredentialRequest>(body);
    roundtrip::<OpenAuthRequest>(body);
    roundtrip::<ApproveRequest>(body);
    roundtrip::<LinkIdentityRequest>(body);
});
