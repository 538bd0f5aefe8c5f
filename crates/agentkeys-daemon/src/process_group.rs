//! The process groups `run` starts, and signalling them: the table of groups that still
//! have members, who may signal which, and when a group is empty. Knows nothing of
//! sessions, runs or the trail; the daemon and the runner audit what is done here.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use agentkeys_types::ServiceName;
use rustix::process::Signal;
use serde_json::{Value, json};

/// A process group started by `run`, keyed by its id (the child's pid: the child called
/// `setsid`). It stays after the child is reaped for as long as the group has members
/// (`runner::wait`, [`Children::prune`]), so signals still reach what it left behind.
pub struct ChildEntry {
    /// The credentials it was given.
    pub services: Vec<ServiceName>,
    /// The connection that started it.
    pub conn: u64,
}

/// `run` children's process groups that still have members, by process group id.
#[derive(Default)]
pub struct Children(Mutex<HashMap<u32, ChildEntry>>);

impl Children {
    /// Registers the group of a child just started.
    pub fn insert(&self, pgid: u32, entry: ChildEntry) {
        if let Ok(mut children) = self.0.lock() {
            children.insert(pgid, entry);
        }
    }

    /// Unregisters a reaped child's group, unless something the child started is still in
    /// it: revocation must still reach that (the housekeeping tick drops the entry once the
    /// group is empty).
    pub fn remove_if_empty(&self, pgid: u32) {
        if !group_alive(pgid)
            && let Ok(mut children) = self.0.lock()
        {
            children.remove(&pgid);
        }
    }

    /// Drops the entries of process groups whose child has been reaped and that have no
    /// member left. Called on the daemon's housekeeping tick.
    pub fn prune(&self) {
        if let Ok(mut children) = self.0.lock() {
            children.retain(|pgid, _| group_alive(*pgid));
        }
    }

    /// How many groups are registered.
    pub fn len(&self) -> usize {
        self.0.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Whether no group is registered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `pgid` is the group of a child connection `conn` started.
    fn started_by(&self, pgid: u32, conn: u64) -> bool {
        self.0
            .lock()
            .ok()
            .is_some_and(|c| c.get(&pgid).is_some_and(|c| c.conn == conn))
    }

    /// Sends `signal` to the process group of every child `select` picks (the child and
    /// whatever it started that stayed in its group); each group's id with the outcome.
    pub fn signal(
        &self,
        select: impl Fn(&ChildEntry) -> bool,
        signal: Signal,
    ) -> Vec<(u32, rustix::io::Result<()>)> {
        let targets: Vec<u32> = self
            .0
            .lock()
            .map(|m| {
                m.iter()
                    .filter(|(_, c)| select(c))
                    .map(|(pgid, _)| *pgid)
                    .collect()
            })
            .unwrap_or_default();
        targets
            .into_iter()
            .map(|pgid| (pgid, signal_group(pgid, signal)))
            .collect()
    }
}

/// Sends `signal` to process group `pgid`: a `run` child (its pid is its group's id, it
/// called `setsid`) and everything it started that did not leave the group.
///
/// The id cannot name another group while the child is unreaped or any member lives (the
/// kernel does not hand out a pid still used as a process group id). Once the group is
/// empty and the child reaped, the entry is dropped ([`Children::remove_if_empty`],
/// [`Children::prune`]); until then a new session could take the number: that window is at
/// most one housekeeping tick.
pub fn signal_group(pgid: u32, signal: Signal) -> rustix::io::Result<()> {
    let pgid = group_id(pgid)?;
    rustix::process::kill_process_group(pgid, signal)
}

/// Whether process group `pgid` still has a member (`kill(-pgid, 0)`; a member we may not
/// signal counts as one).
pub fn group_alive(pgid: u32) -> bool {
    match group_id(pgid).and_then(rustix::process::test_kill_process_group) {
        Ok(()) => true,
        Err(e) => e != rustix::io::Errno::SRCH,
    }
}

fn group_id(pgid: u32) -> rustix::io::Result<rustix::process::Pid> {
    i32::try_from(pgid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or(rustix::io::Errno::INVAL)
}

/// Polls until process group `pgid` is empty or `deadline` passes; whether it emptied.
/// (No event says when the last member of a group exits, and its members are not our
/// children.)
pub async fn wait_group_empty(pgid: u32, deadline: tokio::time::Instant) -> bool {
    loop {
        if !group_alive(pgid) {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Signals a `run` caller may forward.
const FORWARDABLE: [Signal; 9] = [
    Signal::HUP,
    Signal::INT,
    Signal::QUIT,
    Signal::TERM,
    Signal::USR1,
    Signal::USR2,
    Signal::WINCH,
    Signal::CONT,
    Signal::KILL,
];

/// `agentkeys/signal {pid, signal}`: only to a child connection `conn` started, and to its
/// whole process group (a terminal's Ctrl-C reaches the whole foreground group too).
pub fn forward_signal(children: &Children, conn: u64, params: &Value) -> Result<Value, String> {
    let pid = params["pid"]
        .as_u64()
        .and_then(|p| u32::try_from(p).ok())
        .ok_or("pid must be a number")?;
    let number = params["signal"]
        .as_i64()
        .and_then(|s| i32::try_from(s).ok())
        .ok_or("signal must be a number")?;
    let signal = FORWARDABLE
        .into_iter()
        .find(|s| s.as_raw() == number)
        .ok_or_else(|| format!("signal {number} cannot be forwarded"))?;
    if !children.started_by(pid, conn) {
        return Err(format!("no running child {pid} started by this connection"));
    }
    signal_group(pid, signal).map_err(|e| e.to_string())?;
    Ok(json!({}))
}
