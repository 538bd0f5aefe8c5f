//! A newline-delimited JSON-RPC (MCP) client on the daemon's socket: what an inline agent
//! does. Answers are matched by id; notifications and other ids are skipped.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

/// One connection to the daemon socket.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next: i64,
    line: String,
}

impl Client {
    /// Connects to `path`, which must accept.
    pub fn connect(path: &Path) -> Client {
        Self::try_connect(path).expect("connect to the daemon socket")
    }

    /// Connects to `path`; answers are awaited 30 s at most.
    pub fn try_connect(path: &Path) -> std::io::Result<Client> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(Client {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
            next: 100,
            line: String::new(),
        })
    }

    /// Writes `line` and a newline.
    pub fn send_raw(&mut self, line: &[u8]) {
        self.writer.write_all(line).expect("write to the daemon");
        self.writer.write_all(b"\n").expect("write to the daemon");
    }

    /// Writes without waiting for answers; errors (a closed connection) are returned.
    pub fn try_send_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    /// The next line as JSON; `None` when the daemon closed the connection.
    pub fn recv(&mut self) -> Option<Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(serde_json::from_str(&line).expect("a JSON line")),
        }
    }

    /// Sends a request and returns its answer (skipping notifications and other ids).
    pub fn request(&mut self, method: &str, params: Value) -> Value {
        let id = self
            .send_request(method, &params)
            .expect("write to the daemon");
        loop {
            let v = self.recv().unwrap_or_else(|| {
                panic!("no answer to {method} (the daemon closed the connection or timed out)")
            });
            if v.get("id") == Some(&json!(id)) {
                return v;
            }
        }
    }

    /// Sends a request and returns the length of its answer's line, unparsed: the cheapest
    /// round trip, for timing. An error answer to a tool call is an error.
    pub fn call(&mut self, method: &str, params: Value) -> Result<usize, String> {
        let id = self
            .send_request(method, &params)
            .map_err(|e| e.to_string())?;
        // Ids only grow, so no earlier answer carries an id this one is a prefix of.
        let wanted = format!("\"id\":{id}");
        loop {
            self.line.clear();
            self.reader
                .read_line(&mut self.line)
                .map_err(|e| e.to_string())?;
            if self.line.is_empty() {
                return Err("the daemon closed the connection".into());
            }
            if self.line.contains(&wanted) {
                if self.line.contains("\"isError\":true") {
                    return Err(format!("tool error: {}", self.line.trim()));
                }
                return Ok(self.line.len());
            }
        }
    }

    fn send_request(&mut self, method: &str, params: &Value) -> std::io::Result<i64> {
        self.next += 1;
        let msg = json!({"jsonrpc": "2.0", "id": self.next, "method": method, "params": params});
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(b'\n');
        self.writer.write_all(&bytes)?;
        Ok(self.next)
    }

    /// `initialize` (protocol 2025-11-25) as the client `test`, and
    /// `notifications/initialized`.
    pub fn initialize(&mut self) -> Value {
        self.initialize_as("test")
    }

    /// [`Client::initialize`] as the client `name`.
    pub fn initialize_as(&mut self, name: &str) -> Value {
        let r = self.request(
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": name, "version": "0"}}),
        );
        self.send_raw(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        r
    }

    /// Calls a tool: (is_error, text).
    pub fn tool(&mut self, name: &str, args: Value) -> (bool, String) {
        let r = self.request("tools/call", json!({"name": name, "arguments": args}));
        let result = &r["result"];
        assert!(result.is_object(), "not a tool result: {r}");
        let text = result["content"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        (result["isError"] == json!(true), text)
    }
}
