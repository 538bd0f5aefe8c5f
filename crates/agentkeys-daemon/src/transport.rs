//! Newline-delimited JSON-RPC on one socket connection, as an rmcp transport, with the
//! daemon's rules around it (docs/daemon.md, "The socket"):
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

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd as _, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use rmcp::RoleServer;
use rmcp::model::RequestId;
use rmcp::service::{RxJsonRpcMessage, TxJsonRpcMessage};
use rmcp::transport::Transport;
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde_json::{Value, json};
use tokio::io::{AsyncWriteExt as _, Interest};
use tokio::net::UnixStream;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::Mutex;

use crate::daemon::{Conn, Daemon, Delivery, FD_CAPABILITY};
use crate::line_writer::{Writer, error_body, serialize_line, write_line};
use crate::proxy::persistent::Persistent;

/// The longest line accepted, in bytes.
pub const MAX_LINE: usize = 1 << 20;
/// Malformed lines in a row before the connection is closed.
pub const MAX_BAD_LINES: u32 = 16;
/// Sustained messages per second per connection.
pub const RATE: f64 = 200.0;
/// Burst of messages per connection.
pub const BURST: f64 = 400.0;
/// Descriptors accepted with one `recvmsg`, and held unclaimed at most.
pub const MAX_FDS: usize = 8;

/// The rmcp transport for one connection.
pub struct LineTransport {
    reader: OwnedReadHalf,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    fds: VecDeque<OwnedFd>,
    writer: Writer,
    daemon: Arc<Daemon>,
    conn: Arc<Conn>,
    proxies: Arc<Persistent>,
    bad_lines: u32,
    tokens: f64,
    last: Instant,
    partial: Vec<u8>,
    own_uid: u32,
    same_uid_noted: bool,
}

impl LineTransport {
    /// Wraps a connection's halves.
    pub fn new(
        read: OwnedReadHalf,
        write: OwnedWriteHalf,
        daemon: Arc<Daemon>,
        conn: Arc<Conn>,
        proxies: Arc<Persistent>,
    ) -> Self {
        LineTransport {
            reader: read,
            buf: vec![0; 16 * 1024],
            start: 0,
            end: 0,
            fds: VecDeque::new(),
            writer: Arc::new(Mutex::new(write)),
            daemon,
            conn,
            proxies,
            bad_lines: 0,
            tokens: BURST,
            last: Instant::now(),
            partial: Vec::new(),
            own_uid: rustix::process::geteuid().as_raw(),
            same_uid_noted: false,
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

    /// Receives more bytes (and any descriptors sent with them) into the buffer.
    /// `Ok(0)` at end of stream. The only await is readiness, so this is cancel-safe.
    async fn fill(&mut self) -> io::Result<usize> {
        let stream: &UnixStream = self.reader.as_ref();
        loop {
            stream.readable().await?;
            let (buf, fds) = (&mut self.buf, &mut self.fds);
            match stream.try_io(Interest::READABLE, || recv_with_fds(stream, buf, fds)) {
                Ok(n) => {
                    self.start = 0;
                    self.end = n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads one line of at most [`MAX_LINE`] bytes. `Ok(None)` at end of stream.
    /// Cancel-safe: bytes taken from the socket are kept in `self.buf`/`self.partial`.
    async fn read_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if self.start == self.end && self.fill().await? == 0 {
                let rest = std::mem::take(&mut self.partial);
                return Ok(if rest.is_empty() { None } else { Some(rest) });
            }
            let buf = &self.buf[self.start..self.end];
            let (take, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            if self.partial.len() + take > MAX_LINE + 1 {
                self.partial.clear();
                return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
            }
            self.partial.extend_from_slice(&buf[..take]);
            self.start += take;
            if done {
                let mut line = std::mem::take(&mut self.partial);
                line.pop();
                return Ok(Some(line));
            }
        }
    }

    /// The descriptors announced by a line's `"fds": n`, or an error when they did not
    /// arrive. Called once per line; descriptors no line claims are closed.
    fn claim_fds(&mut self, value: &Value) -> Result<Vec<OwnedFd>, &'static str> {
        let wanted = announced_fds(value)?;
        if self.fds.len() < wanted {
            self.fds.clear();
            return Err("the message announced descriptors that did not arrive with it");
        }
        let claimed = self.fds.drain(..wanted).collect();
        if self.start == self.end && self.partial.is_empty() {
            // Nothing more is buffered, so nothing else can claim what is left.
            self.fds.clear();
        }
        Ok(claimed)
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
    fn custom(&self, id: Option<Value>, method: String, params: Value, fds: Vec<OwnedFd>) {
        let daemon = self.daemon.clone();
        let writer = self.writer.clone();
        let conn = self.conn.clone();
        let proxies = self.proxies.clone();
        if method == "agentkeys/run" {
            tokio::spawn(crate::runner::serve_run(
                daemon, conn, writer, id, params, fds,
            ));
            return;
        }
        if !fds.is_empty() {
            drop(fds);
            self.error(id, -32602, "this method takes no descriptors");
            return;
        }
        // Backpressure: a connection gets a few of our methods answered at once, not an
        // unbounded queue of tasks.
        let Ok(permit) = conn.busy.clone().try_acquire_owned() else {
            drop(fds);
            self.error(
                id,
                -32000,
                "busy: too many agentkeys/… requests in flight on this connection",
            );
            return;
        };
        if method == "agentkeys/signal" {
            let answer = crate::process_group::forward_signal(&daemon.children, conn.id, &params);
            let body = match answer {
                Ok(r) => json!({"jsonrpc": "2.0", "id": id, "result": r}),
                Err(msg) => error_body(id, -32602, &msg),
            };
            self.reply(body);
            return;
        }
        tokio::spawn(async move {
            let _permit = permit;
            let id = id.unwrap_or(Value::Null);
            let answer = match method.as_str() {
                "agentkeys/status" => Ok(daemon.status()),
                "agentkeys/audit" => audit_page(&daemon, &params).await,
                "agentkeys/proxy-env" => proxy_env(&daemon, &proxies, &conn, &id, &params).await,
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

/// `agentkeys/proxy-env {services}`: the persistent egress proxy's environment.
async fn proxy_env(
    daemon: &Arc<Daemon>,
    proxies: &Persistent,
    conn: &Conn,
    id: &Value,
    params: &Value,
) -> Result<Value, (i64, String)> {
    let services: Vec<String> =
        serde_json::from_value(params["services"].clone()).map_err(|_| {
            (
                -32602,
                "services must be a list of service names".to_owned(),
            )
        })?;
    let services = services
        .iter()
        .map(|s| {
            agentkeys_types::ServiceName::parse(s)
                .map_err(|_| (-32602, format!("'{s}' is not a service name")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    proxies
        .env(daemon, conn, &id.to_string(), services)
        .await
        .map_err(|r| (-32000, format!("{}: {}", r.code, r.message)))
}

/// Lines the daemon answers `agentkeys/audit` with at most, per call.
pub const AUDIT_PAGE_MAX: usize = 10_000;

/// `agentkeys/audit {after?, limit?, anchor?}`: a page of the trail (`limit` lines after
/// line `after`, default 1000, at most [`AUDIT_PAGE_MAX`]), never the whole file at once;
/// with `anchor: true`, also the newest anchor the server holds for it.
async fn audit_page(daemon: &Daemon, params: &Value) -> Result<Value, (i64, String)> {
    let after = params["after"].as_u64().unwrap_or(0);
    let limit = params["limit"]
        .as_u64()
        .map_or(1000, |l| usize::try_from(l).unwrap_or(AUDIT_PAGE_MAX))
        .min(AUDIT_PAGE_MAX);
    let lines = crate::trail::read_page(daemon.trail.path(), after, limit)
        .map_err(|e| (-32603, e.to_string()))?;
    let mut answer = json!({ "events": lines });
    if params["anchor"] == json!(true) {
        daemon.anchor().await; // the head as of now, then what the server holds
        let anchor = daemon
            .latest_anchor()
            .await
            .map_err(|e| (-32603, format!("cannot ask the server for the anchor: {e}")))?;
        answer["anchor"] =
            anchor.map_or(Value::Null, |(seq, hash)| json!({"seq": seq, "hash": hash}));
    }
    Ok(answer)
}

/// Writes `line` with `fd` attached to its first byte (one `sendmsg`; the rest, if the
/// socket took only part, with plain writes).
async fn write_line_with_fd(writer: &Writer, line: &[u8], fd: BorrowedFd<'_>) -> io::Result<()> {
    let mut guard = writer.lock().await;
    let sent = {
        let stream: &UnixStream = (*guard).as_ref();
        loop {
            stream.writable().await?;
            match stream.try_io(Interest::WRITABLE, || send_with_fd(stream, line, fd)) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    };
    guard.write_all(&line[sent..]).await
}

fn send_with_fd(stream: &UnixStream, line: &[u8], fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut cmsg = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    if !cmsg.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(io::Error::other("no room for the descriptor"));
    }
    Ok(rustix::net::sendmsg(
        stream,
        &[IoSlice::new(line)],
        &mut cmsg,
        SendFlags::DONTWAIT | SendFlags::NOSIGNAL,
    )?)
}

fn recv_with_fds(
    stream: &UnixStream,
    buf: &mut [u8],
    queue: &mut VecDeque<OwnedFd>,
) -> io::Result<usize> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut cmsg = RecvAncillaryBuffer::new(&mut space);
    let msg = rustix::net::recvmsg(
        stream,
        &mut [IoSliceMut::new(buf)],
        &mut cmsg,
        RecvFlags::CMSG_CLOEXEC | RecvFlags::DONTWAIT,
    )?;
    for m in cmsg.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = m {
            queue.extend(fds);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) || queue.len() > MAX_FDS {
        queue.clear();
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "too many descriptors sent",
        ));
    }
    Ok(msg.bytes)
}

/// One received line, before any state is touched.
pub enum Decoded {
    /// Only whitespace: ignored.
    Blank,
    /// Not JSON.
    Malformed,
    /// A JSON value (not yet known to be a valid message).
    Json(Value),
}

/// Parses one line. Pure: the fuzz target `jsonrpc_line` drives it with arbitrary bytes.
pub fn decode(line: &[u8]) -> Decoded {
    if line.iter().all(u8::is_ascii_whitespace) {
        return Decoded::Blank;
    }
    serde_json::from_slice(line).map_or(Decoded::Malformed, Decoded::Json)
}

/// The descriptors a message announces with `"fds": n` (0 when absent).
pub fn announced_fds(value: &Value) -> Result<usize, &'static str> {
    match value.get("fds") {
        None => Ok(0),
        Some(n) => match n.as_u64().and_then(|n| usize::try_from(n).ok()) {
            Some(n) if n <= MAX_FDS => Ok(n),
            _ => Err("\"fds\" must be a small non-negative integer"),
        },
    }
}

/// Where a decoded message goes.
pub enum Route {
    /// One of our `agentkeys/…` methods.
    Custom {
        /// The request id, if any.
        id: Option<Value>,
        /// The method name.
        method: String,
        /// Its parameters (`null` when absent).
        params: Value,
    },
    /// An MCP message for rmcp, and whether it advertises fd delivery.
    Mcp {
        /// The message.
        message: Box<RxJsonRpcMessage<RoleServer>>,
        /// Its id, when it is a request.
        id: Option<RequestId>,
        /// `initialize` with the capability.
        at_init: bool,
        /// The capability in this request's `_meta`.
        per_request: bool,
    },
    /// Not a valid message: the error to answer with.
    Invalid {
        /// The id to echo (only a string or an integer).
        id: Option<Value>,
        /// JSON-RPC error code.
        code: i64,
        /// Message.
        message: &'static str,
    },
}

/// Routes a decoded JSON value. Pure, like [`decode`].
pub fn route(value: Value) -> Route {
    let id = value.get("id").cloned();
    if let Some(method) = value.get("method").and_then(Value::as_str)
        && method.starts_with("agentkeys/")
    {
        return Route::Custom {
            method: method.to_owned(),
            params: value.get("params").cloned().unwrap_or(Value::Null),
            id,
        };
    }
    let (at_init, per_request) = advertises_fd(&value);
    match serde_json::from_value::<RxJsonRpcMessage<RoleServer>>(value) {
        Ok(message) => Route::Mcp {
            message: Box::new(message),
            id: id.and_then(|i| serde_json::from_value::<RequestId>(i).ok()),
            at_init,
            per_request,
        },
        Err(e) => Route::Invalid {
            // Echo the id only when it is one JSON-RPC allows.
            id: id.filter(|i| i.is_string() || i.is_i64()),
            code: if e.to_string().contains("unknown variant") {
                -32601
            } else {
                -32600
            },
            message: if e.to_string().contains("unknown variant") {
                "method not found"
            } else {
                "invalid request"
            },
        },
    }
}

/// Whether a message advertises fd delivery: `capabilities.experimental` at `initialize`,
/// or the request's `_meta` (bare, or inside the 2026-07-28 client capabilities).
fn advertises_fd(value: &Value) -> (bool, bool) {
    let params = &value["params"];
    let at_init = value["method"] == "initialize"
        && !params["capabilities"]["experimental"][FD_CAPABILITY].is_null();
    let meta = &params["_meta"];
    let per_request = !meta[FD_CAPABILITY].is_null()
        || !meta["io.modelcontextprotocol/clientCapabilities"]["experimental"][FD_CAPABILITY]
            .is_null();
    (at_init, per_request)
}

/// A duplicate of the page fd an fd-mode response must carry (the page itself stays in
/// `in_flight` until `after_response`).
fn fd_to_send(conn: &Conn, id: &RequestId) -> Option<OwnedFd> {
    let held = conn.in_flight.lock().ok()?;
    let entry = held.get(id)?;
    if entry.delivery != Delivery::Fd {
        return None;
    }
    entry.page.fd()?.try_clone_to_owned().ok()
}

/// An fd-mode response: the JSON says `"fds": 1` and carries no secret bytes.
async fn send_fd_response(
    writer: &Writer,
    item: &TxJsonRpcMessage<RoleServer>,
    fd: BorrowedFd<'_>,
) -> io::Result<()> {
    let mut value = serde_json::to_value(item).map_err(io::Error::other)?;
    if let Some(object) = value.as_object_mut() {
        object.insert("fds".into(), json!(1));
    }
    let line = serialize_line(&value)?;
    write_line_with_fd(writer, &line, fd).await
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
            let fd = id.as_ref().and_then(|id| fd_to_send(&conn, id));
            let written = match fd {
                Some(fd) => send_fd_response(&writer, &item, fd.as_fd()).await,
                None => write_line(&writer, &item).await,
            };
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
                Ok(Some(line)) => {
                    self.conn.spoke.store(true, Ordering::Relaxed);
                    line
                }
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
            let value = match decode(&line) {
                Decoded::Blank => continue,
                Decoded::Json(v) => v,
                Decoded::Malformed => {
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
            let fds = match self.claim_fds(&value) {
                Ok(fds) => fds,
                Err(msg) => {
                    self.bad_lines += 1;
                    self.error(id, -32600, msg);
                    continue;
                }
            };
            let route = route(value);
            let asks = match &route {
                Route::Custom { method, .. } => method != "agentkeys/status",
                Route::Mcp { .. } => true,
                Route::Invalid { .. } => false,
            };
            if asks && !self.same_uid_noted && self.conn.peer.uid == self.own_uid {
                self.same_uid_noted = true;
                self.daemon.saw_same_uid(&self.conn.peer);
            }
            match route {
                Route::Custom { id, method, params } => {
                    self.bad_lines = 0;
                    self.custom(id, method, params, fds);
                }
                Route::Mcp { .. } | Route::Invalid { .. } if !fds.is_empty() => {
                    drop(fds);
                    self.bad_lines += 1;
                    self.error(id, -32600, "only agentkeys/run takes descriptors");
                }
                Route::Mcp {
                    message,
                    id,
                    at_init,
                    per_request,
                } => {
                    if at_init {
                        self.conn.fd_delivery.store(true, Ordering::Relaxed);
                    }
                    if per_request
                        && let Some(id) = id
                        && let Ok(mut set) = self.conn.fd_requests.lock()
                    {
                        set.insert(id);
                    }
                    self.bad_lines = 0;
                    return Some(*message);
                }
                Route::Invalid { id, code, message } => {
                    self.bad_lines += 1;
                    self.error(id, code, message);
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
