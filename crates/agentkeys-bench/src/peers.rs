//! fnox, run side by side in the same run: `fnox exec`, `fnox get` in a new process per
//! fetch, and `fnox mcp`'s `get_secret` on a held stdio session.
//!
//! fnox reads its secret from its `plain` provider (no decryption, no daemon): its cheapest
//! configuration, so the comparison is against fnox at its fastest. The binary is not built
//! here (it takes 40 minutes on two cores); pass a prebuilt one with `--fnox PATH` or
//! `$AGENTKEYS_BENCH_FNOX`, or put `fnox` on the PATH.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

use agentkeys_testkit::TempDir;
use serde_json::{Value, json};

use crate::stats::Samples;

/// The secret's name in fnox.toml.
const NAME: &str = "OPENAI_API_KEY";

/// The fnox binary to run: `flag`, else `$AGENTKEYS_BENCH_FNOX`, else `fnox` on the PATH.
/// A path with a directory in it (`target/fnox`) is made absolute against the current
/// directory: fnox runs in a project directory of its own, where a relative path would
/// name nothing. A bare name is looked up on the PATH.
pub(crate) fn locate(flag: Option<&Path>) -> Option<PathBuf> {
    let given = flag.map(Path::to_owned).or_else(|| {
        std::env::var_os("AGENTKEYS_BENCH_FNOX")
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
    });
    let name = match given {
        Some(p) if p.components().count() > 1 || p.is_absolute() => {
            return std::path::absolute(&p).ok();
        }
        Some(p) => p,
        None => PathBuf::from("fnox"),
    };
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(&name))
        .find(|p| p.is_file())
}

/// A project directory with a `fnox.toml` holding one secret.
pub(crate) struct Fnox {
    bin: PathBuf,
    dir: TempDir,
    /// What `fnox --version` printed.
    pub(crate) version: String,
}

impl Fnox {
    /// Writes the config and checks that `fnox get` returns `value`.
    pub(crate) fn new(bin: &Path, value: &str) -> Result<Fnox, String> {
        let dir = TempDir::new("agentkeys-bench-fnox");
        let config = format!(
            "[providers.plain]\ntype = \"plain\"\n\n[secrets]\n{NAME} = {{ provider = \"plain\", value = {} }}\n",
            json!(value)
        );
        std::fs::write(dir.path().join("fnox.toml"), config).map_err(|e| e.to_string())?;
        let fnox = Fnox {
            bin: bin.to_owned(),
            dir,
            version: String::new(),
        };
        let version = fnox
            .command(&["--version"])
            .stdout(Stdio::piped())
            .output()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let got = fnox
            .command(&["get", NAME])
            .stdout(Stdio::piped())
            .output()
            .map_err(|e| e.to_string())?;
        if String::from_utf8_lossy(&got.stdout).trim() != value {
            return Err(format!(
                "{} get {NAME} did not return the configured value",
                bin.display()
            ));
        }
        Ok(Fnox {
            version: String::from_utf8_lossy(&version.stdout).trim().to_owned(),
            ..fnox
        })
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(&self.bin);
        c.args(args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        c
    }

    /// `fnox exec -- /bin/true`, a process each.
    pub(crate) fn exec(&self, warm: usize, n: usize) -> Samples {
        Samples::measure(warm, n, || {
            let _ = self.command(&["exec", "--", "/bin/true"]).status();
        })
    }

    /// `fnox get OPENAI_API_KEY`, a process each.
    pub(crate) fn get(&self, warm: usize, n: usize) -> Samples {
        Samples::measure(warm, n, || {
            let _ = self.command(&["get", NAME]).status();
        })
    }

    /// `get_secret` on one held `fnox mcp` session.
    pub(crate) fn mcp(&self, warm: usize, n: usize) -> Result<Samples, String> {
        let mut session = Session::start(self)?;
        let args = json!({"name": "get_secret", "arguments": {"name": NAME}});
        for _ in 0..warm {
            session.call("tools/call", args.clone())?;
        }
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let t = std::time::Instant::now();
            session.call("tools/call", args.clone())?;
            times.push(t.elapsed());
        }
        Ok(Samples::from(times))
    }
}

/// A `fnox mcp` child speaking newline-delimited JSON-RPC on its stdio.
struct Session {
    child: Child,
    input: ChildStdin,
    output: BufReader<ChildStdout>,
    next: u64,
    line: String,
}

impl Session {
    fn start(fnox: &Fnox) -> Result<Session, String> {
        let mut child = fnox
            .command(&["mcp"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let (Some(input), Some(output)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("fnox mcp without stdio pipes".into());
        };
        let mut s = Session {
            child,
            input,
            output: BufReader::new(output),
            next: 0,
            line: String::new(),
        };
        s.call(
            "initialize",
            json!({"protocolVersion": "2025-11-25", "capabilities": {},
                   "clientInfo": {"name": "agentkeys-bench", "version": "0"}}),
        )?;
        s.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))?;
        Ok(s)
    }

    fn send(&mut self, msg: &Value) -> Result<(), String> {
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(b'\n');
        self.input.write_all(&bytes).map_err(|e| e.to_string())
    }

    /// One request; waits for its answer and fails on an error or a tool error.
    fn call(&mut self, method: &str, params: Value) -> Result<(), String> {
        self.next += 1;
        let id = self.next;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))?;
        loop {
            self.line.clear();
            let read = self
                .output
                .read_line(&mut self.line)
                .map_err(|e| e.to_string())?;
            if read == 0 {
                return Err("fnox mcp closed its output".into());
            }
            let Ok(v) = serde_json::from_str::<Value>(&self.line) else {
                continue;
            };
            if v["id"] != json!(id) {
                continue;
            }
            if v.get("error").is_some() || v["result"]["isError"] == json!(true) {
                return Err(format!("fnox mcp refused {method}: {}", self.line.trim()));
            }
            return Ok(());
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_fnox_path_is_made_absolute_and_a_bare_name_is_looked_up() {
        let cwd = std::env::current_dir().expect("cwd");
        assert_eq!(
            locate(Some(Path::new("target/fnox"))),
            Some(cwd.join("target/fnox"))
        );
        assert_eq!(
            locate(Some(Path::new("/opt/fnox"))),
            Some(PathBuf::from("/opt/fnox"))
        );
        // `sh` is on every PATH; a bare name never resolves against the current directory.
        let sh = locate(Some(Path::new("sh"))).expect("sh on the PATH");
        assert!(sh.is_absolute() && sh.ends_with("sh"), "{}", sh.display());
        assert_eq!(locate(Some(Path::new("no-such-program-here"))), None);
    }
}
