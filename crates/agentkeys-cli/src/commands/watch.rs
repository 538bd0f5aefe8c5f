//! `agentkeys watch`: follows the inbox and tells a person that a request waits, wherever
//! they are: the terminal, a command, webhooks (ntfy, Slack, Discord), the desktop. A notice carries the code, the OTP and a link, never a way to approve: the
//! decision is taken where the master authenticates (Teleport's lesson: a link, not a
//! button).

use std::collections::HashSet;
use std::io::Write as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use agentkeys_core::Backend as _;
use agentkeys_core::ClientError;
use agentkeys_types::api::{AuthKind, AuthRequestView};
use serde::Serialize;
use serde_json::json;

use crate::commands::approve::kind_word;
use crate::context::Context;
use crate::error::{CliError, CliResult};
use crate::output::{self, duration, note};

// The flags of `agentkeys watch` (no doc comment: see `crate::cli::Command`).
#[allow(missing_docs)]
#[derive(clap::Args)]
pub struct WatchArgs {
    /// Run CMD (with sh -c) for each new request, the request as JSON on its stdin.
    #[arg(long, value_name = "CMD")]
    exec: Option<String>,
    /// Post each new request to this ntfy topic URL (repeatable).
    #[arg(long, value_name = "URL")]
    ntfy: Vec<String>,
    /// Post each new request to this Slack incoming-webhook URL (repeatable).
    #[arg(long, value_name = "URL")]
    slack: Vec<String>,
    /// Post each new request to this Discord webhook URL (repeatable).
    #[arg(long, value_name = "URL")]
    discord: Vec<String>,
    /// Do not show desktop notifications (shown where a session bus runs).
    #[arg(long)]
    no_desktop: bool,
    /// Exit after the first new request(s) have been announced.
    #[arg(long)]
    once: bool,
}

/// How long one long-poll waits on the server before it is renewed.
const POLL_SECS: u64 = 30;

/// Most characters of the requester's description a notice shows.
const DESCRIPTION_CHARS: usize = 80;

/// Where a notice's text is shown, which decides how the requester's words are escaped:
/// Slack and Discord render markup (links, bold, mentions), a desktop notification a
/// little HTML; a terminal line, ntfy (no `Markdown` header) and `--exec` show it as is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Channel {
    /// A terminal, ntfy: plain text.
    Plain,
    /// Slack mrkdwn.
    Slack,
    /// Discord markdown.
    Discord,
    /// A freedesktop notification body (a subset of HTML).
    Desktop,
}

/// The requester's description as a notice shows it: one line, at most
/// [`DESCRIPTION_CHARS`] characters, marked as the requester's unchecked words, and
/// inert in `channel`. The requester writes it, so it must not be able to pass for the
/// notice's own code, OTP or link (review finding N9): on Slack and Discord it is an
/// inline code span (no links, no formatting, no mentions), and it always comes after the
/// real code, OTP and link.
fn requester_words(description: &str, channel: Channel) -> String {
    let mut one_line = String::new();
    for word in description.split(|c: char| c.is_whitespace() || c.is_control()) {
        if word.is_empty() {
            continue;
        }
        if !one_line.is_empty() {
            one_line.push(' ');
        }
        one_line.push_str(word);
    }
    let mut short: String = one_line.chars().take(DESCRIPTION_CHARS).collect();
    if one_line.chars().count() > DESCRIPTION_CHARS {
        short.push('…');
    }
    let shown = match channel {
        Channel::Plain => format!("\"{short}\""),
        // A code span cannot hold a backtick; Slack needs &, < and > escaped even there.
        Channel::Slack => format!(
            "`{}`",
            short
                .replace('`', "'")
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        ),
        Channel::Discord => format!("`{}`", short.replace('`', "'")),
        Channel::Desktop => format!(
            "\"{}\"",
            short
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        ),
    };
    format!(" The requester's note (their words, not checked by agentkeys): {shown}.")
}

/// What a watcher announces: the request as the inbox shows it, and where to decide it.
#[derive(Debug, Serialize)]
pub struct Notice<'a> {
    /// The request.
    #[serde(flatten)]
    pub request: &'a AuthRequestView,
    /// The approval page for this request, where the server serves one.
    pub approve_url: Option<String>,
    /// The command that decides it at a terminal.
    pub approve_command: String,
}

impl<'a> Notice<'a> {
    /// The notice for `request`.
    pub fn new(request: &'a AuthRequestView) -> Self {
        Notice {
            approve_url: request.approve_url.clone(),
            approve_command: format!("agentkeys approve {}", request.pair_code),
            request,
        }
    }

    /// A title, for notifications that have one.
    pub fn title(&self) -> String {
        format!("agentkeys: {} waiting", kind_word(self.request.kind))
    }

    /// What is asked, by whom, the code, the OTP, the time left and where to decide, then
    /// the requester's note, escaped for `channel`.
    pub fn text(&self, channel: Channel) -> String {
        let r = self.request;
        let agent = r.agent.as_ref().map(|w| {
            let short = output::short_wallet(w.as_str());
            match r.agent_names.first() {
                Some(name) => format!("{short} ({name})"),
                None => short,
            }
        });
        let what = match (r.kind, &agent) {
            (AuthKind::Pair, _) => "A new agent asks to be paired".to_owned(),
            (AuthKind::Recover, Some(a)) => format!("Agent {a} asks for a new session"),
            (AuthKind::Recover, None) => "An agent asks for a new session".to_owned(),
            (AuthKind::HighValue, a) => format!(
                "One release of {} asked for{}",
                r.service.as_ref().map_or("?", |s| s.as_str()),
                a.as_ref()
                    .map_or(String::new(), |a| format!(" ({a}'s credential)"))
            ),
        };
        let mut text = what;
        if let Some(by) = &r.requested_by
            && r.kind == AuthKind::HighValue
        {
            text.push_str(&format!(" by {}", output::short_wallet(by.as_str())));
        }
        text.push('.');
        text.push_str(&format!(
            " Code {}, OTP {} (it must match the requester's), expires in {}.",
            r.pair_code,
            r.otp,
            duration(r.expires_at - output::now()),
        ));
        match &self.approve_url {
            Some(url) => text.push_str(&format!(
                " Decide at {url} or with '{}'.",
                self.approve_command
            )),
            None => text.push_str(&format!(" Decide with '{}'.", self.approve_command)),
        }
        if let Some(d) = r.description.as_deref().filter(|d| !d.trim().is_empty()) {
            text.push_str(&requester_words(d, channel));
        }
        text
    }
}

/// An ntfy publish: the text as the body, the link as the click action. No `Actions`
/// header: ntfy's buttons could carry an HTTP call, and nothing here may approve.
pub fn ntfy_request(n: &Notice<'_>) -> (Vec<(&'static str, String)>, String) {
    let mut headers = vec![("Title", n.title()), ("Tags", "key".to_owned())];
    if let Some(url) = &n.approve_url {
        headers.push(("Click", url.clone()));
    }
    (headers, n.text(Channel::Plain))
}

/// A Slack incoming-webhook message: plain text (Slack turns the link into a link), no
/// blocks, so no buttons.
pub fn slack_payload(n: &Notice<'_>) -> serde_json::Value {
    json!({ "text": format!("*{}*\n{}", n.title(), n.text(Channel::Slack)) })
}

/// A Discord webhook message: plain content, mentions disabled.
pub fn discord_payload(n: &Notice<'_>) -> serde_json::Value {
    json!({
        "content": format!("**{}**\n{}", n.title(), n.text(Channel::Discord)),
        "allowed_mentions": { "parse": [] },
    })
}

/// `agentkeys watch`.
pub async fn watch(ctx: &Context, args: WatchArgs) -> CliResult {
    for url in args.ntfy.iter().chain(&args.slack).chain(&args.discord) {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Err(CliError::usage(format!("'{url}' is not an http(s) URL"))
                .hint("pass the webhook's full URL, e.g. https://ntfy.sh/my-private-topic"));
        }
    }
    let session = ctx.session()?;
    let http = if args.ntfy.is_empty() && args.slack.is_empty() && args.discord.is_empty() {
        None
    } else {
        Some(agentkeys_core::client::outbound_client().map_err(|e| {
            CliError::usage(format!("cannot set up the webhook client: {e}"))
                .hint("check AGENTKEYS_CA, if set")
        })?)
    };
    let desktop = if args.no_desktop {
        None
    } else {
        Desktop::connect().await
    };
    if !ctx.json {
        note("Watching for requests you may decide (Ctrl-C to stop)…");
    }
    let mut seen: HashSet<String> = HashSet::new();
    let mut cursor: Option<String> = None;
    let mut children: Vec<Child> = Vec::new();
    let mut failures = 0u32;
    loop {
        children.retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
        let list = match session.backend.inbox(cursor.as_deref(), POLL_SECS).await {
            Ok(list) => {
                if failures > 0 {
                    note("The server answers again; watching.");
                }
                failures = 0;
                list
            }
            // The server restarting, or the network going away: keep watching.
            Err(ClientError::Transport { url, reason }) => {
                failures += 1;
                let wait = Duration::from_secs(1 << failures.min(5));
                if failures == 1 || failures.is_multiple_of(10) {
                    note(&format!(
                        "cannot reach the server at {url} ({reason}); retrying every {}s",
                        wait.as_secs()
                    ));
                }
                tokio::time::sleep(wait).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let mut announced = 0;
        for request in &list.requests {
            if seen.contains(&request.id) {
                continue;
            }
            announced += 1;
            let notice = Notice::new(request);
            announce(ctx, &notice)?;
            if let Some(cmd) = &args.exec
                && let Some(child) = exec(cmd, &notice)
            {
                children.push(child);
            }
            if let Some(http) = &http {
                post_hooks(http, &args, &notice).await;
            }
            if let Some(d) = &desktop
                && let Err(e) = d.show(&notice).await
            {
                note(&format!("desktop notification not shown: {e}"));
            }
        }
        seen = list.requests.iter().map(|r| r.id.clone()).collect();
        cursor = Some(list.cursor);
        if args.once && announced > 0 {
            break;
        }
    }
    for mut c in children {
        let _ = c.wait();
    }
    Ok(())
}

/// Prints one request: a line, or one JSON object per line.
fn announce(ctx: &Context, n: &Notice<'_>) -> CliResult {
    if ctx.json {
        let line = serde_json::to_string(n)
            .map_err(|e| CliError::new("INTERNAL", crate::error::exit::INTERNAL, e.to_string()))?;
        return output::line(&line);
    }
    output::line(&format!(
        "[{}] {}",
        output::timestamp(output::now()),
        n.text(Channel::Plain)
    ))
}

/// Starts `cmd` with the request as JSON on its stdin; it runs on while the watch goes
/// on. A command that cannot start is reported, and the watch goes on.
fn exec(cmd: &str, n: &Notice<'_>) -> Option<Child> {
    let json = match serde_json::to_vec(n) {
        Ok(j) => j,
        Err(e) => {
            note(&format!("--exec: cannot encode the request: {e}"));
            return None;
        }
    };
    let mut child = match Command::new("/bin/sh")
        .args(["-c", cmd])
        .stdin(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            note(&format!("--exec: cannot start /bin/sh: {e}"));
            return None;
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        // A command that does not read its stdin is not an error.
        let _ = stdin.write_all(&json).and_then(|()| stdin.write_all(b"\n"));
    }
    Some(child)
}

/// Desktop notifications: the freedesktop Notifications interface on the session bus.
/// A notification carries the title, the text and the link, and no actions: nothing can be
/// approved from it.
struct Desktop {
    bus: zbus::Connection,
}

impl Desktop {
    /// The session bus, where one exists; `None` (and a note) otherwise.
    async fn connect() -> Option<Desktop> {
        let runtime_bus = std::env::var_os("XDG_RUNTIME_DIR")
            .map(|d| std::path::Path::new(&d).join("bus"))
            .is_some_and(|p| p.exists());
        if std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_none() && !runtime_bus {
            return None;
        }
        match zbus::Connection::session().await {
            Ok(bus) => Some(Desktop { bus }),
            Err(e) => {
                note(&format!(
                    "no desktop notifications: the session bus refused ({e})"
                ));
                None
            }
        }
    }

    /// Shows one notice.
    async fn show(&self, n: &Notice<'_>) -> Result<(), zbus::Error> {
        let actions: Vec<&str> = Vec::new();
        let hints: std::collections::HashMap<&str, zbus::Variant<'_>> =
            std::collections::HashMap::new();
        self.bus
            .call_method(
                Some("org.freedesktop.Notifications"),
                "/org/freedesktop/Notifications",
                Some("org.freedesktop.Notifications"),
                "Notify",
                &(
                    "agentkeys",
                    0u32,
                    "dialog-password",
                    n.title(),
                    n.text(Channel::Desktop),
                    actions,
                    hints,
                    -1i32,
                ),
            )
            .await
            .map(drop)
    }
}

/// Posts the notice to every configured webhook; a failure is reported, not fatal.
async fn post_hooks(http: &reqwest::Client, args: &WatchArgs, n: &Notice<'_>) {
    let mut posts = Vec::new();
    for url in &args.ntfy {
        let (headers, body) = ntfy_request(n);
        let mut req = http.post(url).body(body);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        posts.push(("ntfy", url, req));
    }
    for url in &args.slack {
        posts.push(("slack", url, http.post(url).json(&slack_payload(n))));
    }
    for url in &args.discord {
        posts.push(("discord", url, http.post(url).json(&discord_payload(n))));
    }
    for (kind, url, req) in posts {
        match req.send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => note(&format!(
                "--{kind} {url}: the webhook answered {}",
                r.status()
            )),
            Err(e) => note(&format!("--{kind} {url}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agentkeys_types::api::AuthStatus;
    use agentkeys_types::{ServiceName, Wallet};

    fn request() -> AuthRequestView {
        AuthRequestView {
            id: "req_1".into(),
            kind: AuthKind::HighValue,
            pair_code: "ABCD-EFGH".into(),
            otp: "123456".into(),
            status: AuthStatus::Pending,
            created_at: output::now(),
            expires_at: output::now() + 300,
            agent: Some(Wallet::from_bytes(&[1; 20])),
            service: Some(ServiceName::parse("stripe").unwrap()),
            requested_by: Some(Wallet::from_bytes(&[2; 20])),
            description: Some("month end".into()),
            agent_names: vec!["billing-bot".into()],
            approve_url: Some("https://keys.example/approve/ABCD-EFGH".into()),
        }
    }

    #[test]
    fn every_notice_carries_the_code_the_otp_and_the_link_and_no_approve_action() {
        let r = request();
        let n = Notice::new(&r);
        let link = "https://keys.example/approve/ABCD-EFGH";
        let (headers, body) = ntfy_request(&n);
        let slack = slack_payload(&n).to_string();
        let discord = discord_payload(&n).to_string();
        for text in [&body, &slack, &discord] {
            for want in ["ABCD-EFGH", "123456", link] {
                assert!(text.contains(want), "missing {want} in {text}");
            }
            assert!(
                text.contains("stripe") && text.contains("billing-bot"),
                "{text}"
            );
        }
        assert!(
            headers
                .iter()
                .all(|(k, _)| !k.eq_ignore_ascii_case("actions"))
        );
        assert!(headers.contains(&("Click", link.to_owned())));
        let slack: serde_json::Value = serde_json::from_str(&slack).unwrap();
        assert_eq!(slack.as_object().unwrap().len(), 1, "text only: {slack}");
        let discord: serde_json::Value = serde_json::from_str(&discord).unwrap();
        assert!(discord.get("components").is_none());
    }

    #[test]
    fn a_requesters_note_cannot_pass_for_the_code_the_otp_or_a_link() {
        let mut r = request();
        r.description = Some(format!(
            "*Code ZZZZ-ZZZZ, OTP 000000* <b>x</b> & <https://evil.example/x|Approve here>\n\
             [approve](https://evil.example/y) @everyone `tick` {}",
            "padding ".repeat(20)
        ));
        let n = Notice::new(&r);
        let note_of = |text: &str| {
            let at = text
                .find("The requester's note")
                .unwrap_or_else(|| panic!("no note marker in {text}"));
            // The real code, OTP and link come before the requester's words.
            let before = &text[..at];
            for want in [
                "ABCD-EFGH",
                "123456",
                "https://keys.example/approve/ABCD-EFGH",
            ] {
                assert!(before.contains(want), "{want} not before the note: {text}");
            }
            text[at..].to_owned()
        };
        let slack = slack_payload(&n)["text"].as_str().unwrap().to_owned();
        let note = note_of(&slack);
        let span = note.split('`').nth(1).expect("a code span");
        assert!(note.ends_with("`."), "{note}");
        assert_eq!(note.matches('`').count(), 2, "one code span: {note}");
        assert!(!span.contains('<') && !span.contains('>'), "{span}");
        assert!(
            span.contains("&lt;https://evil.example/x|Approve here&gt;"),
            "{span}"
        );
        let unescaped = span
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&");
        assert_eq!(
            unescaped.chars().count(),
            DESCRIPTION_CHARS + 1,
            "kept short: {span}"
        );
        assert!(span.ends_with('…'));

        let discord = discord_payload(&n)["content"].as_str().unwrap().to_owned();
        let note = note_of(&discord);
        assert_eq!(note.matches('`').count(), 2, "one code span: {note}");
        let span = note.split('`').nth(1).expect("a code span");
        assert!(
            span.starts_with("*Code ZZZZ-ZZZZ, OTP 000000* <b>x</b> & <https://evil"),
            "{span}"
        );

        let desktop = n.text(Channel::Desktop);
        let note = note_of(&desktop);
        assert!(
            !note.contains("<b>") && note.contains("&lt;b&gt;x&lt;/b&gt; &amp;"),
            "{note}"
        );

        let (_, plain) = ntfy_request(&n);
        let note = note_of(&plain);
        assert!(!note.contains('\n'), "one line: {note}");
        assert!(note.contains("(their words, not checked by agentkeys)"));
    }
}
