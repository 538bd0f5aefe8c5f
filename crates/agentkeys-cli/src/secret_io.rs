//! Secret bytes in and out of the process: a value read from stdin, a hidden terminal prompt,
//! an environment variable or a file goes straight into a `SecretPage`; a credential goes to
//! stdout straight from its page with `write(2)` (no `Stdout` buffer, no `String`).

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStringExt as _;
use std::path::Path;

use agentkeys_core::crypto::MAX_PLAINTEXT_LEN;
use agentkeys_secmem::SecretPage;
use rustix::termios::{self, LocalModes, OptionalActions};
use zeroize::Zeroize as _;

use crate::error::{CliError, CliResult, exit};

/// Where a value comes from.
pub enum Source<'a> {
    /// An environment variable, byte for byte.
    Env(&'a str),
    /// A file (`-` = stdin), byte for byte.
    File(&'a Path),
    /// Stdin when it is not a terminal (one trailing newline dropped), else a hidden prompt.
    StdinOrPrompt {
        /// Shown in the prompt.
        label: &'a str,
    },
}

fn io_error(what: &str, e: &io::Error) -> CliError {
    CliError::new("INTERNAL", exit::INTERNAL, format!("{what}: {e}"))
}

fn memory_error(e: &io::Error) -> CliError {
    CliError::new(
        "INTERNAL",
        exit::INTERNAL,
        format!("cannot allocate secret memory: {e}"),
    )
    .hint("secret pages count against RLIMIT_MEMLOCK; check 'ulimit -l'")
}

/// Reads a value from `source` into a secret page. Refuses an empty value.
pub fn read_value(source: Source<'_>) -> CliResult<SecretPage> {
    let page = match source {
        Source::Env(var) => {
            let mut bytes = std::env::var_os(var)
                .ok_or_else(|| {
                    CliError::usage(format!("the environment variable {var} is not set")).hint(
                        format!("export {var}=... first, or pipe the value on stdin"),
                    )
                })?
                .into_vec();
            let page = SecretPage::from_slice(&bytes).map_err(|e| memory_error(&e));
            bytes.zeroize();
            page?
        }
        Source::File(path) if path == Path::new("-") => {
            read_all_into_page(io::stdin().as_fd()).map_err(|e| io_error("stdin", &e))?
        }
        Source::File(path) => {
            let f = File::open(path)
                .map_err(|e| io_error(&format!("cannot open {}", path.display()), &e))?;
            read_all_into_page(f.as_fd())
                .map_err(|e| io_error(&format!("cannot read {}", path.display()), &e))?
        }
        Source::StdinOrPrompt { label } => {
            let stdin = io::stdin();
            let mut page = if termios::isatty(stdin.as_fd()) {
                prompt_hidden(&format!("Value for {label} (input hidden): "))?
            } else {
                let page = read_all_into_page(stdin.as_fd()).map_err(|e| io_error("stdin", &e))?;
                if page.is_empty() {
                    return Err(
                        CliError::usage("no value on stdin, and no terminal to prompt on").hint(
                            format!(
                                "pipe it (printf %s \"$VALUE\" | agentkeys store {label}), or use \
                         --from-env VAR / --from-file PATH"
                            ),
                        ),
                    );
                }
                page
            };
            strip_one_newline(&mut page);
            page
        }
    };
    if page.is_empty() {
        return Err(CliError::usage("the value is empty").hint("nothing was stored"));
    }
    Ok(page)
}

fn strip_one_newline(page: &mut SecretPage) {
    let b = page.expose_secret();
    let cut = if b.ends_with(b"\r\n") {
        2
    } else {
        usize::from(b.ends_with(b"\n"))
    };
    let len = page.len() - cut;
    page.set_len(len);
}

/// Reads everything from `fd` with `read(2)` into secret pages that double in size as needed
/// (the old page is wiped on drop after its bytes move), up to the 1 MiB value limit. Raw
/// `read(2)`, not `std::io::Stdin`: its 8 KiB buffer would keep a copy of the value for the
/// life of the process.
fn read_all_into_page(fd: BorrowedFd<'_>) -> io::Result<SecretPage> {
    let mut page = SecretPage::new(4096)?;
    let mut filled = 0;
    loop {
        if filled == page.len() {
            if page.len() > MAX_PLAINTEXT_LEN {
                return Err(io::Error::other("the value is larger than 1 MiB"));
            }
            let mut bigger = SecretPage::new(page.len() * 2)?;
            bigger.expose_secret_mut()[..filled].copy_from_slice(&page.expose_secret()[..filled]);
            page = bigger;
        }
        match rustix::io::read(fd, &mut page.expose_secret_mut()[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if filled > MAX_PLAINTEXT_LEN {
        return Err(io::Error::other("the value is larger than 1 MiB"));
    }
    page.set_len(filled);
    Ok(page)
}

/// Reads one line from `/dev/tty` with echo off, into a secret page.
pub fn prompt_hidden(prompt: &str) -> CliResult<SecretPage> {
    let tty = open_tty()?;
    // Echo goes off before the prompt shows, so nothing typed after it can be echoed.
    let saved = termios::tcgetattr(&tty).map_err(|e| io_error("terminal", &e.into()))?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    quiet.local_modes.insert(LocalModes::ECHONL);
    termios::tcsetattr(&tty, OptionalActions::Flush, &quiet)
        .map_err(|e| io_error("terminal", &e.into()))?;
    let mut out = &tty;
    let result =
        io::Write::write_all(&mut out, prompt.as_bytes()).and_then(|()| read_line_into_page(&tty));
    // Restore the terminal whatever happened.
    let _ = termios::tcsetattr(&tty, OptionalActions::Flush, &saved);
    result.map_err(|e| io_error("terminal", &e))
}

fn read_line_into_page(tty: &File) -> io::Result<SecretPage> {
    let mut page = SecretPage::new(8192)?;
    let mut filled = 0;
    while filled < page.len() {
        let n = rustix::io::read(tty, &mut page.expose_secret_mut()[filled..filled + 1])?;
        if n == 0 || page.expose_secret()[filled] == b'\n' {
            break;
        }
        filled += n;
    }
    page.set_len(filled);
    Ok(page)
}

fn open_tty() -> CliResult<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|_| {
            CliError::usage("no terminal to ask on")
                .hint("pass the value on stdin, --from-env or --from-file (or --yes to confirm)")
        })
}

/// Asks a y/N question on the terminal; anything but y/yes is no.
pub fn confirm(question: &str) -> CliResult<bool> {
    let text = ask(&format!("{question} [y/N] "))?.to_ascii_lowercase();
    Ok(text == "y" || text == "yes")
}

/// Asks on the terminal and returns the answer's first line, trimmed (at most 16 bytes
/// are read: the answers asked for are short).
pub fn ask(prompt: &str) -> CliResult<String> {
    let tty = open_tty()?;
    let mut out = &tty;
    io::Write::write_all(&mut out, prompt.as_bytes()).map_err(|e| io_error("terminal", &e))?;
    let mut answer = [0u8; 16];
    let mut n = 0;
    while n < answer.len() {
        let k = rustix::io::read(&tty, &mut answer[n..n + 1])
            .map_err(|e| io_error("terminal", &e.into()))?;
        if k == 0 || answer[n] == b'\n' {
            break;
        }
        n += 1;
    }
    Ok(String::from_utf8_lossy(&answer[..n]).trim().to_owned())
}

/// Whether stdin is a terminal.
pub fn stdin_is_tty() -> bool {
    termios::isatty(io::stdin().as_fd())
}

/// Whether stdout is a terminal.
pub fn stdout_is_tty() -> bool {
    termios::isatty(io::stdout().as_fd())
}

/// Writes `bytes` to stdout with `write(2)`, bypassing `Stdout`'s buffer so no copy of the
/// secret is left in it. A closed pipe ends the write quietly.
pub fn write_secret_to_stdout(bytes: &[u8]) -> CliResult {
    let stdout = io::stdout();
    write_all_fd(stdout.as_fd(), bytes)
}

fn write_all_fd(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> CliResult {
    while !bytes.is_empty() {
        match rustix::io::write(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(rustix::io::Errno::PIPE) => return Ok(()),
            Err(e) => return Err(io_error("cannot write to stdout", &e.into())),
        }
    }
    Ok(())
}

/// Builds `{"agent": …, "service": …, "value": "<escaped>"}` (or `value_base64` for
/// non-UTF-8 bytes) directly in a secret page: the escaped value exists nowhere else.
pub fn json_credential(agent: &str, service: &str, value: &[u8]) -> CliResult<SecretPage> {
    use base64::Engine as _;
    let head = format!(
        "{{\"agent\":{},\"service\":{},",
        serde_json::Value::from(agent),
        serde_json::Value::from(service)
    );
    let utf8 = std::str::from_utf8(value).is_ok();
    let body_len = if utf8 {
        escaped_len(value)
    } else {
        base64::encoded_len(value.len(), true).unwrap_or(usize::MAX)
    };
    let key = if utf8 {
        "\"value\":\""
    } else {
        "\"value_base64\":\""
    };
    let total = head.len() + key.len() + body_len + 2;
    let mut page = SecretPage::new(total).map_err(|e| memory_error(&e))?;
    let buf = page.expose_secret_mut();
    let mut pos = 0;
    for part in [head.as_bytes(), key.as_bytes()] {
        buf[pos..pos + part.len()].copy_from_slice(part);
        pos += part.len();
    }
    if utf8 {
        pos = escape_into(value, buf, pos);
    } else {
        let n = base64::engine::general_purpose::STANDARD
            .encode_slice(value, &mut buf[pos..pos + body_len])
            .map_err(|e| CliError::new("INTERNAL", exit::INTERNAL, e.to_string()))?;
        pos += n;
    }
    buf[pos..pos + 2].copy_from_slice(b"\"}");
    Ok(page)
}

fn escape_one(b: u8) -> Option<&'static [u8]> {
    Some(match b {
        b'"' => b"\\\"",
        b'\\' => b"\\\\",
        b'\n' => b"\\n",
        b'\r' => b"\\r",
        b'\t' => b"\\t",
        _ => return None,
    })
}

fn escaped_len(value: &[u8]) -> usize {
    value
        .iter()
        .map(|&b| match escape_one(b) {
            Some(e) => e.len(),
            None if b < 0x20 || b == 0x7f => 6,
            None => 1,
        })
        .sum()
}

fn escape_into(value: &[u8], buf: &mut [u8], mut pos: usize) -> usize {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in value {
        if let Some(e) = escape_one(b) {
            buf[pos..pos + e.len()].copy_from_slice(e);
            pos += e.len();
        } else if b < 0x20 || b == 0x7f {
            let esc = [
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 15)],
            ];
            buf[pos..pos + 6].copy_from_slice(&esc);
            pos += 6;
        } else {
            buf[pos] = b;
            pos += 1;
        }
    }
    pos
}

/// Takes the stray argument vector clap collected, wipes it, and says why it is refused.
pub fn refuse_argv_value(mut stray: Vec<OsString>, service: &str) -> CliError {
    for s in &mut stray {
        let mut bytes = std::mem::take(s).into_vec();
        bytes.zeroize();
    }
    CliError::usage(
        "a credential value on the command line is refused: arguments are visible to every \
         local user (ps, /proc/<pid>/cmdline) and land in shell history",
    )
    .hint(format!(
        "pipe it: printf %s \"$VALUE\" | agentkeys store {service}   (or --from-env VAR, \
         --from-file PATH, or no value to be prompted)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_credentials_escape_like_serde_json() {
        for value in [
            &b"sk-plain"[..],
            b"quote\" back\\slash\nnew\ttab\x01\x7f",
            "unicodé ✓".as_bytes(),
        ] {
            let page = json_credential("0xabc", "openai", value).unwrap();
            let parsed: serde_json::Value = serde_json::from_slice(page.expose_secret()).unwrap();
            assert_eq!(parsed["value"].as_str().unwrap().as_bytes(), value);
            assert_eq!(parsed["service"], "openai");
        }
    }

    #[test]
    fn json_credentials_carry_non_utf8_values_as_base64() {
        let page = json_credential("0xabc", "bin", &[0xff, 0x00, 0x80]).unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(page.expose_secret()).unwrap();
        assert_eq!(parsed["value_base64"], "/wCA");
    }

    #[test]
    fn reading_grows_pages_and_keeps_every_byte() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &data).unwrap();
        std::io::Seek::rewind(&mut file).unwrap();
        let page = read_all_into_page(file.as_fd()).unwrap();
        assert_eq!(page.expose_secret(), &data[..]);
    }

    #[test]
    fn one_trailing_newline_is_dropped() {
        for (input, want) in [
            (&b"abc\n"[..], &b"abc"[..]),
            (b"abc\r\n", b"abc"),
            (b"abc\n\n", b"abc\n"),
            (b"abc", b"abc"),
        ] {
            let mut page = SecretPage::from_slice(input).unwrap();
            strip_one_newline(&mut page);
            assert_eq!(page.expose_secret(), want);
        }
    }

    #[test]
    fn the_argv_refusal_does_not_echo_the_value() {
        let err = refuse_argv_value(vec![OsString::from("sk-canary-123")], "openai");
        assert!(!err.to_text().contains("sk-canary"));
        assert!(!err.to_json().to_string().contains("sk-canary"));
    }
}
