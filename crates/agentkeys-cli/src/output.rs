//! Presentation: timestamps, durations, aligned tables, JSON on stdout. Nothing here ever
//! receives a secret; secret bytes go out through `secret_io`.

use std::io::Write as _;

use agentkeys_types::Scope;

use crate::error::{CliError, CliResult};

/// Seconds since the Unix epoch, now.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// How long the next long-poll may wait: at most 25 s (below the client's 90 s timeout and
/// common proxy idle limits) and never past `deadline`; `None` once the deadline passed.
pub fn poll_window(deadline: i64) -> Option<u64> {
    let remaining = deadline - now();
    (remaining > 0).then(|| u64::try_from(remaining.min(25)).unwrap_or(25))
}

/// `2026-11-28 14:05:09 UTC`.
pub fn timestamp(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A compact duration: `29d 23h`, `4m 59s`, `12s`.
pub fn duration(secs: i64) -> String {
    let s = secs.max(0);
    let (d, h, m, sec) = (s / 86_400, s % 86_400 / 3600, s % 3600 / 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{sec}s"),
        (0, 0, _) => format!("{m}m {sec}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// Parses `90s`, `15m`, `2h`, `7d`, `2w` (a bare number is seconds).
pub fn parse_duration(s: &str) -> CliResult<i64> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num.parse().map_err(|_| bad_duration(s))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 604_800,
        _ => return Err(bad_duration(s)),
    };
    n.checked_mul(mult).ok_or_else(|| bad_duration(s))
}

fn bad_duration(s: &str) -> CliError {
    CliError::usage(format!("'{s}' is not a duration"))
        .hint("use a number with a unit: 90s, 15m, 2h, 7d or 2w")
}

/// A scope for people (see [`Scope::describe`]).
pub fn scope(s: &Scope) -> String {
    s.describe()
}

/// `0x1234…abcd` for tables; JSON always carries the full wallet.
pub fn short_wallet(w: &str) -> String {
    if w.len() == 42 && w.starts_with("0x") {
        format!("{}…{}", &w[..6], &w[38..])
    } else {
        w.to_owned()
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn json(value: &serde_json::Value) -> CliResult {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::new("INTERNAL", crate::error::exit::INTERNAL, e.to_string()))?;
    line(&text)
}

/// Prints one line on stdout; a closed pipe is not an error worth a message.
pub fn line(text: &str) -> CliResult {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}") {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(CliError::new(
            "INTERNAL",
            crate::error::exit::INTERNAL,
            format!("cannot write to stdout: {e}"),
        )),
        _ => Ok(()),
    }
}

/// A progress or status line on stderr (stdout stays clean for results).
pub fn note(text: &str) {
    eprintln!("{text}");
}

/// Prints rows under a header, columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> CliResult {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let render = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(cell);
                s.push_str(&" ".repeat(w - cell.chars().count() + 2));
            }
        }
        s.trim_end().to_owned()
    };
    line(&render(header.to_vec()))?;
    for row in rows {
        line(&render(row.iter().map(String::as_str).collect()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc_calendar_dates() {
        assert_eq!(timestamp(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(timestamp(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(timestamp(1_795_874_709), "2026-11-28 14:05:09 UTC");
    }

    #[test]
    fn durations_print_compactly_and_parse_with_units() {
        assert_eq!(duration(2_591_999), "29d 23h");
        assert_eq!(duration(299), "4m 59s");
        assert_eq!(duration(-5), "0s");
        assert_eq!(parse_duration("90s").unwrap(), 90);
        assert_eq!(parse_duration("2h").unwrap(), 7200);
        assert_eq!(parse_duration("2w").unwrap(), 1_209_600);
        assert_eq!(parse_duration("15").unwrap(), 15);
        assert!(parse_duration("2y").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn scopes_read_like_sentences() {
        assert_eq!(scope(&Scope::all()), "* (every service)");
        assert_eq!(scope(&Scope::none()), "none");
        let s = Scope {
            services: vec!["github".into(), "openai".into()],
            read_only: true,
        };
        assert_eq!(scope(&s), "github, openai, read-only");
    }
}
