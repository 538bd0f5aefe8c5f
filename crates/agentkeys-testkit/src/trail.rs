//! The daemon's audit trail (`daemon-audit.jsonl`), read the way a racing reader must: only
//! whole lines, and waited for where the daemon writes after the client sees its answer.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

/// The trail, parsed.
///
/// Only whole lines: the daemon writes each line with one `write(2)`, but a read racing
/// that write may see part of it, so a last line without its newline is left out.
pub fn trail_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).expect("read the daemon trail");
    complete_lines(&text)
        .map(|l| serde_json::from_str(l).expect("a JSON trail line"))
        .collect()
}

/// The newline-terminated lines of `text`, without their newlines.
pub fn complete_lines(text: &str) -> impl Iterator<Item = &str> {
    text.split_inclusive('\n')
        .filter_map(|l| l.strip_suffix('\n'))
}

/// Waits until the trail holds `count` `event` lines (the daemon audits a delivery right
/// after the response line is written, so the client can see the answer first).
pub fn wait_for_events(path: &Path, event: &str, count: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let needle = format!("\"event\":\"{event}\"");
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let n = complete_lines(&text)
            .filter(|l| l.contains(&needle))
            .count();
        if n >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {n} {event} events after 10 s"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The pid of the first command a `run` started, from its `deliver` line (waited for: the
/// command can print before the daemon writes it).
pub fn first_child_pid(trail: &Path) -> u32 {
    wait_for_events(trail, "deliver", 1);
    trail_lines(trail)
        .iter()
        .find(|l| l["event"] == "deliver")
        .and_then(|l| {
            l["detail"]
                .as_str()?
                .strip_prefix("child pid ")?
                .parse()
                .ok()
        })
        .expect("a deliver line naming the child pid")
}

#[cfg(test)]
mod tests {
    use super::complete_lines;

    #[test]
    fn a_last_line_without_its_newline_is_left_out() {
        let lines: Vec<&str> = complete_lines("{\"a\":1}\n{\"b\":2}\n{\"c\"").collect();
        assert_eq!(lines, ["{\"a\":1}", "{\"b\":2}"]);
    }
}
