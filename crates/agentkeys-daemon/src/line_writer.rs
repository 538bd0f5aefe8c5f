//! Writing JSON-RPC lines to a socket connection: the shared write half, each line
//! serialized into a buffer of exactly its size that is zeroized after the write (a line
//! may carry a delivered credential), and the error object.

use std::io;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt as _;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::Mutex;
use zeroize::Zeroizing;

/// The write half, shared by rmcp's responses and our own messages.
pub type Writer = Arc<Mutex<OwnedWriteHalf>>;

/// A JSON-RPC error object.
pub fn error_body(id: Option<Value>, code: i64, message: &str) -> Value {
    json!({
        "jsonrpc": "2.0", "id": id.unwrap_or(Value::Null),
        "error": { "code": code, "message": message },
    })
}

/// Serializes `value` into a buffer of exactly its size, writes it with a newline, and
/// zeroizes the buffer.
pub async fn write_line<T: serde::Serialize>(writer: &Writer, value: &T) -> io::Result<()> {
    let bytes = serialize_line(value)?;
    writer.lock().await.write_all(&bytes).await
}

/// `value` and a newline, in a buffer of exactly that size, zeroized when dropped.
pub(crate) fn serialize_line<T: serde::Serialize>(value: &T) -> io::Result<Zeroizing<Vec<u8>>> {
    let len = agentkeys_core::json::json_len(value).map_err(io::Error::other)?;
    let mut bytes = Zeroizing::new(Vec::with_capacity(len + 1));
    serde_json::to_writer(&mut *bytes, value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    Ok(bytes)
}
