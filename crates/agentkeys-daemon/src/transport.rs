//! Newline-delimited JSON-RPC on one socket connection, as an rmcp transport, with the
//! daemon's rules around it (DESIGN "Daemon socket protocol"):
//!
//! - lines are limited to [`MAX_LINE`]; a longer one ends the connection;
//! - a malformed line or an invalid request gets a JSON-RPC error and the connection stays
//!   usable, until [`MAX_BAD_LINES`] in a row end it;
//! - a client sending more than [`RATE`] messages a second (burst [`BURST`]) is disconnected;
//! - the `agentkeys/…` methods are answered here, never reaching rmcp;
//! - every outgoing line is serialized into a buffer of exactly its size that is zeroized
//!   after the write (no long-lived codec buffer keeps a delivered credential), and then
//!   the daemon drops the page the response carried.
//!
//! `receive` is cancel-safe, because rmcp's loop `select!`s it against outgoing responses
//! and drops it mid-flight: a partly read line lives in the transport, not in the future,
//! and the only await that can be interrupted is `fill_buf` (which consumes nothing).
//! Answers written from inside `receive` go out from spawned tasks for the same reason.

use std::io;
use std::sync::Arc;
use std::time::Instant;

use rmcp::RoleServer;
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::daemon::{Conn, Daemon};

/// The longest line accepted, in bytes.
pub const MAX_LINE: usize = 1 << 20;
/// Malformed lines in a row before the connection is closed.
pub const MAX_BAD_LINES: u32 = 16;
/// Sustained messages per second per connection.
pub const RATE: f64 = 200.0;
/// Burst of messages per connection.
pub const BURST: f64 = 400.0;

type Writer = Arc<Mutex<OwnedWriteHalf>>;

/// The rmcp transport for one connection.
pub struct LineTransport {
    reader: BufReader<OwnedReadHalf>,
    writer: Writer,
    daemon: Arc<Daemon>,
    conn: Arc<Conn>,
    bad_lines: u32,
    tokens: f64,
    last: Instant,
    partial: Vec<u8>,
}

impl LineTransport {
    /// Wraps a connection's halves.
    pub fn new(
        read: OwnedReadHalf,
        write: OwnedWriteHalf,
        daemon: Arc<Daemon>,
        conn: Arc<Conn>,
    ) -> Self {
        LineTransport {
            reader: BufReader::with_capacity(16 * 1024, read),
            writer: Arc::new(Mutex::new(write)),
            daemon,
            conn,
            bad_lines: 0,
            tokens: BURST,
            last: Instant::now(),
            partial: Vec::new(),
        }
    }

    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * RATE).min(BURST);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Reads one line of at most [`MAX_LINE`] bytes. `Ok(None)` at end of stream.
    /// Cancel-safe: bytes taken from the reader are kept in `self.partial`.
    async fn read_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            let buf = self.reader.fill_buf().await?;
            if buf.is_empty() {
                let rest = std::mem::take(&mut self.partial);
                return Ok(if rest.is_empty() { None } else { Some(rest) });
            }
            let (take, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            if self.partial.len() + take > MAX_LINE + 1 {
                self.partial.clear();
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            self.partial.extend_from_slice(&buf[..take]);
            self.reader.consume(take);
            if done {
                let mut line = std::mem::take(&mut self.partial);
                line.pop();
                return Ok(Some(line));
            }
        }
    }

    /// Writes `value` from a spawned task (see the module note on cancellation).
    fn reply(&self, value: Value) {
        let writer = self.writer.clone();
        tokio::spawn(async move {
            let _ = write_line(&writer, &value).await;
        });
    }

    fn error(&self, id: Option<Value>, code: i64, message: &str) {
        self.reply(error_body(id, code, message));
    }

    /// Writes a last error before the connection is closed.
    async fn fatal(&self, code: i64, message: &str) {
        let _ = write_line(&self.writer, &error_body(None, code, message)).await;
    }

    /// Answers an `agentkeys/…` method from a spawned task.
    fn custom(&self, id: Option<Value>, method: String) {
        let daemon = self.daemon.clone();
        let writer = self.writer.clone();
        tokio::spawn(async move {
            let id = id.unwrap_or(Value::Null);
            let answer = match method.as_str() {
                "agentkeys/status" => Ok(daemon.status().await),
                "agentkeys/audit" => crate::trail::read(daemon.trail.path())
                    .map(|lines| json!({ "events": lines }))
                    .map_err(|e| (-32603, e.to_string())),
                _ => Err((-32601, format!("unknown method {method}"))),
            };
            let body = match answer {
                Ok(r) => json!({"jsonrpc": "2.0", "id": id, "result": r}),
                Err((code, msg)) => error_body(Some(id), code, &msg),
            };
            let _ = write_line(&writer, &body).await;
        });
    }
}

fn error_body(id: Option<Value>, code: i64, message: &str) -> Value {
    json!({
        "jsonrpc": "2.0", "id": id.unwrap_or(Value::Null),
        "error": { "code": code, "message": message },
    })
}

/// Serializes `value` into a buffer of exactly its size, writes it with a newline, and
/// zeroizes the buffer.
async fn write_line<T: serde::Serialize>(writer: &Writer, value: &T) -> io::Result<()> {
    let len = agentkeys_core::json::json_len(value).map_err(io::Error::other)?;
    let mut bytes = Zeroizing::new(Vec::with_capacity(len + 1));
    serde_json::to_writer(&mut *bytes, value).map_err(io::Error::other)?;
    bytes.push(b'\n');
    writer.lock().await.write_all(&bytes).await
}

impl Transport<RoleServer> for LineTransport {
    type Error = io::Error;

    fn send(
        &mut self,
        item: TxJsonRpcMessage<RoleServer>,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send + 'static {
        let writer = self.writer.clone();
        let daemon = self.daemon.clone();
        let conn = self.conn.clone();
        async move {
            let id = match &item {
                rmcp::model::JsonRpcMessage::Response(r) => Some(r.id.clone()),
                rmcp::model::JsonRpcMessage::Error(e) => e.id.clone(),
                _ => None,
            };
            let written = write_line(&writer, &item).await;
            drop(item);
            if let Some(id) = id {
                daemon.after_response(&conn, &id, written.is_ok());
            }
            written
        }
    }

    async fn receive(&mut self) -> Option<RxJsonRpcMessage<RoleServer>> {
        loop {
            let line = match self.read_line().await {
                Ok(Some(line)) => line,
                Ok(None) => return None,
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    self.fatal(-32600, "line too long (the limit is 1 MiB); closing")
                        .await;
                    return None;
                }
                Err(_) => return None,
            };
            if !self.allow() {
                self.fatal(-32000, "too many requests; closing this connection")
                    .await;
                return None;
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let value: Value = match serde_json::from_slice(&line) {
                Ok(v) => v,
                Err(_) => {
                    self.bad_lines += 1;
                    self.error(
                        None,
                        -32700,
                        "parse error: each line must be one JSON-RPC message",
                    );
                    if self.bad_lines >= MAX_BAD_LINES {
                        return None;
                    }
                    continue;
                }
            };
            let id = value.get("id").cloned();
            if let Some(method) = value.get("method").and_then(Value::as_str)
                && method.starts_with("agentkeys/")
            {
                self.bad_lines = 0;
                let method = method.to_owned();
                self.custom(id, method);
                continue;
            }
            match serde_json::from_value::<RxJsonRpcMessage<RoleServer>>(value) {
                Ok(message) => {
                    self.bad_lines = 0;
                    return Some(message);
                }
                Err(e) => {
                    self.bad_lines += 1;
                    // Echo the id only when it is one JSON-RPC allows.
                    let id = id.filter(|i| i.is_string() || i.is_i64());
                    let msg = if e.to_string().contains("unknown variant") {
                        (-32601, "method not found")
                    } else {
                        (-32600, "invalid request")
                    };
                    self.error(id, msg.0, msg.1);
                    if self.bad_lines >= MAX_BAD_LINES {
                        return None;
                    }
                }
            }
        }
    }

    async fn close(&mut self) -> Result<(), Self::Error> {
        self.daemon.forget(&self.conn);
        self.writer.lock().await.shutdown().await
    }
}
