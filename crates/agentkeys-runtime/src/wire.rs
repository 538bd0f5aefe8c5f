//! One connection to the daemon: newline-delimited JSON-RPC over the Unix socket, read with
//! `recvmsg` so descriptors sent with a line are kept (and those nobody announced closed).

use std::collections::VecDeque;
use std::io::{IoSliceMut, Write as _};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::Path;

use agentkeys_secmem::SecretPage;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
use serde_json::{Value, json};

use crate::{Credential, Error, FD_CAPABILITY, default_socket, initialize_params};

/// The longest line accepted.
const MAX_LINE: usize = 1 << 20;
/// Descriptors accepted per `recvmsg`.
const MAX_FDS: usize = 4;

/// A connection to the daemon that negotiated fd delivery.
pub struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    fds: VecDeque<OwnedFd>,
    next_id: u64,
}

impl Client {
    /// Connects to `socket` (default: [`default_socket`]) and negotiates fd delivery at
    /// `initialize`. Fails if the daemon does not offer it, so no credential ever arrives
    /// as text.
    pub fn connect(socket: Option<&Path>) -> Result<Client, Error> {
        let path = socket.map_or_else(default_socket, Path::to_path_buf);
        let stream = UnixStream::connect(&path).map_err(|source| Error::Unreachable {
            path: path.clone(),
            source,
        })?;
        let mut client = Client {
            stream,
            buf: vec![0; 16 * 1024],
            start: 0,
            end: 0,
            fds: VecDeque::new(),
            next_id: 1,
        };
        let (result, _) = client.call("initialize", initialize_params(true))?;
        if result["capabilities"]["experimental"][FD_CAPABILITY].is_null() {
            return Err(Error::Protocol(
                "this daemon does not offer fd delivery; upgrade agentkeys-daemon".into(),
            ));
        }
        client.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))?;
        Ok(client)
    }

    /// Fetches `service` as an fd and maps it. The bytes never pass through a message.
    pub fn get_credential(&mut self, service: &str) -> Result<Credential, Error> {
        let (result, mut fds) = self.call(
            "tools/call",
            json!({"name": "get_credential", "arguments": {"service": service}}),
        )?;
        let text = result["content"][0]["text"].as_str().unwrap_or("");
        if result["isError"] == json!(true) {
            return Err(Error::Refused(text.to_owned()));
        }
        let meta = &result["_meta"]["agentkeys/fd"];
        let (Some(fd), Some(length)) = (fds.pop(), meta["length"].as_u64()) else {
            // Never echo `text`: a daemon that ignored the capability put the secret there.
            return Err(Error::Protocol(
                "the daemon answered without a descriptor (does it support fd delivery?)".into(),
            ));
        };
        if meta["service"] != json!(service) {
            return Err(Error::Protocol(
                "the descriptor is for another service".into(),
            ));
        }
        let length = usize::try_from(length)
            .map_err(|_| Error::Protocol("the announced length is too large".into()))?;
        let page = SecretPage::adopt(fd, length)?;
        Credential::new(page, service)
    }

    /// Sends a request and returns its result with the descriptors its line carried.
    fn call(&mut self, method: &str, params: Value) -> Result<(Value, Vec<OwnedFd>), Error> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))?;
        loop {
            let (message, fds) = self.receive()?;
            if message["id"] != json!(id) {
                continue; // a notification, or an answer to nobody: its fds are dropped
            }
            if let Some(error) = message.get("error") {
                let text = error["message"].as_str().unwrap_or("error");
                return Err(Error::Refused(text.to_owned()));
            }
            return Ok((message["result"].clone(), fds));
        }
    }

    fn send(&mut self, message: &Value) -> Result<(), Error> {
        let mut line = serde_json::to_vec(message).map_err(|e| Error::Protocol(e.to_string()))?;
        line.push(b'\n');
        self.stream.write_all(&line)?;
        Ok(())
    }

    /// The next message and the descriptors it announced (`"fds": n`).
    fn receive(&mut self) -> Result<(Value, Vec<OwnedFd>), Error> {
        let mut line = Vec::new();
        loop {
            if self.start == self.end {
                self.fill()?;
            }
            let chunk = &self.buf[self.start..self.end];
            let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            if line.len() + take > MAX_LINE {
                return Err(Error::Protocol("a line longer than 1 MiB".into()));
            }
            line.extend_from_slice(&chunk[..take]);
            self.start += take;
            if done {
                break;
            }
        }
        let message: Value =
            serde_json::from_slice(&line).map_err(|e| Error::Protocol(e.to_string()))?;
        let wanted = message["fds"]
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0);
        if wanted > self.fds.len() {
            return Err(Error::Protocol(
                "a message announced descriptors that did not arrive".into(),
            ));
        }
        let fds: Vec<OwnedFd> = self.fds.drain(..wanted).collect();
        if self.start == self.end {
            self.fds.clear(); // nothing buffered can claim them
        }
        Ok((message, fds))
    }

    fn fill(&mut self) -> Result<(), Error> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut cmsg = RecvAncillaryBuffer::new(&mut space);
        let msg = loop {
            match rustix::net::recvmsg(
                &self.stream,
                &mut [IoSliceMut::new(&mut self.buf)],
                &mut cmsg,
                RecvFlags::CMSG_CLOEXEC,
            ) {
                Ok(m) => break m,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(std::io::Error::from(e).into()),
            }
        };
        for m in cmsg.drain() {
            if let RecvAncillaryMessage::ScmRights(fds) = m {
                self.fds.extend(fds);
            }
        }
        if msg.flags.contains(ReturnFlags::CTRUNC) {
            self.fds.clear();
            return Err(Error::Protocol("descriptors were truncated".into()));
        }
        if msg.bytes == 0 {
            return Err(Error::Protocol("the daemon closed the connection".into()));
        }
        self.start = 0;
        self.end = msg.bytes;
        Ok(())
    }
}
