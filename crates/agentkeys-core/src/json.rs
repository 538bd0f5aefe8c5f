//! Sizing JSON before writing it, so a buffer that will hold a secret (a session file, a
//! response line carrying a credential) is allocated once, at its final size, and never
//! leaves stale copies behind by growing.

use std::io;

/// The length `serde_json::to_writer` will produce for `value`.
pub fn json_len<T: serde::Serialize + ?Sized>(value: &T) -> serde_json::Result<usize> {
    let mut counter = Counter(0);
    serde_json::to_writer(&mut counter, value)?;
    Ok(counter.0)
}

struct Counter(usize);

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_length_matches_the_serialization() {
        let v = serde_json::json!({"a": [1, 2, "three"], "b": "é\"q"});
        assert_eq!(
            super::json_len(&v).unwrap(),
            serde_json::to_vec(&v).unwrap().len()
        );
    }
}
