//! The control socket's protocol, and a client for it.
//!
//! A master started with [`Settings::control_socket`](crate::Settings::control_socket) listens
//! on a Unix stream socket (mode 0600; a peer whose uid is neither the master's nor root is
//! refused, by `SO_PEERCRED`). Each connection carries **one request and one response**, each
//! one line of JSON, and is then closed:
//!
//! ```text
//! → {"cmd":"status"}                       ← {"result":"status","status":{…}}
//! → {"cmd":"status","resources":true}      ← the same, with each worker's memory and CPU
//! → {"cmd":"reload"}                       ← {"result":"reload","reload":{"generation":3,"outcome":"ok",…}}
//! → {"cmd":"scale","to":7}                 ← {"result":"scale","scale":{"from":5,"to":7,"started":["5","6"],"removed":[]}}
//! → {"cmd":"scale","by":-2}                ← the same shape
//! → {"cmd":"replace","id":"3"}             ← {"result":"replace","replace":{"id":"3","old_pid":1234,"new_pid":1250}}
//! → {"cmd":"stop"}  or  {"cmd":"stop","fast":true}   ← {"result":"stopping","fast":false}
//! → {"cmd":"metrics"}                      ← {"result":"metrics","text":"# HELP prefork_workers …"}
//! anything refused or malformed            ← {"result":"error","error":"scale 70 is outside the bounds 1..=64"}
//! ```
//!
//! `reload` answers once the reload has finished (every worker replaced and ready, or the
//! master gave up on some ids: `incomplete`, with each id and why; `rejected` when `update`
//! returned no configuration). `replace` answers once the new worker of that id took over, or
//! the master gave up on it. The others answer at once.
//!
//! [`request`] sends one [`Command`] and returns the [`Response`]; the `prefork-ctl` program is
//! this function with a command line.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::status::{ReloadStatus, Status, UpgradeStatus};

/// The largest request the master reads (64 KiB); a longer one is refused.
pub const MAX_REQUEST: usize = 64 * 1024;

/// The largest response [`request`] reads (64 MiB: a status of many thousand workers).
const MAX_RESPONSE: u64 = 64 << 20;

/// A request to the master.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// The [`Status`].
    Status {
        /// Also read each worker's memory and CPU from `/proc`.
        #[serde(default)]
        resources: bool,
    },
    /// A reload, as `SIGHUP`; the answer comes when it has finished.
    Reload,
    /// Change the runtime scale (see [`Settings::scale`](crate::Settings::scale)).
    Scale {
        /// To a number, or by a difference.
        #[serde(flatten)]
        change: ScaleChange,
    },
    /// A rolling, readiness-gated replacement of one id's worker; the answer comes when the
    /// new worker took over.
    Replace {
        /// The id, as the status shows it.
        id: String,
    },
    /// Stop the master: gracefully as `SIGTERM`, or with `fast`, `SIGKILL` to every worker at
    /// once (as a second `SIGTERM`).
    Stop {
        /// Do not drain.
        #[serde(default)]
        fast: bool,
    },
    /// The status as Prometheus text.
    Metrics,
    /// Upgrade the master in place, as `SIGUSR2`; the answer comes when it has ended (for a
    /// successful upgrade: when every worker of the new code took over).
    Upgrade,
}

/// A change of the runtime scale: `7`, `+2` or `-2` on a command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleChange {
    /// To this many.
    To(u32),
    /// By this many more (or fewer, if negative).
    By(i64),
}

impl ScaleChange {
    /// The scale this change makes from `current`, if it is a number at all.
    pub fn apply(self, current: u32) -> i64 {
        match self {
            ScaleChange::To(n) => i64::from(n),
            ScaleChange::By(d) => i64::from(current).saturating_add(d),
        }
    }
}

impl FromStr for ScaleChange {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let t = s.trim();
        let bad =
            |e: std::num::ParseIntError| format!("invalid scale {s:?}: {e} (expected N, +K or -K)");
        if let Some(k) = t.strip_prefix('+') {
            k.parse::<i64>().map(ScaleChange::By).map_err(bad)
        } else if t.starts_with('-') {
            t.parse::<i64>().map(ScaleChange::By).map_err(bad)
        } else {
            t.parse::<u32>().map(ScaleChange::To).map_err(bad)
        }
    }
}

/// The master's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    /// To `status`.
    Status {
        /// The status.
        status: Box<Status>,
    },
    /// To `reload`, once it finished.
    Reload {
        /// How it ended.
        reload: ReloadStatus,
    },
    /// To `scale`.
    Scale {
        /// What changed.
        scale: ScaleResult,
    },
    /// To `replace`, once the new worker took over.
    Replace {
        /// Which worker replaced which.
        replace: ReplaceResult,
    },
    /// To `stop`: the master is stopping.
    Stopping {
        /// `SIGKILL` rather than a drain.
        fast: bool,
    },
    /// To `metrics`.
    Metrics {
        /// Prometheus text.
        text: String,
    },
    /// To `upgrade`, once it ended (refused and rolled back included).
    Upgrade {
        /// How it ended.
        upgrade: UpgradeStatus,
    },
    /// The request was refused, malformed, or failed.
    Error {
        /// Why, in one line.
        error: String,
    },
}

/// What a `scale` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScaleResult {
    /// The scale before.
    pub from: u32,
    /// The scale now.
    pub to: u32,
    /// Ids that joined the set (their workers are starting).
    pub started: Vec<String>,
    /// Ids that left it (their workers drain and exit).
    pub removed: Vec<String>,
}

/// What a `replace` did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplaceResult {
    /// The id.
    pub id: String,
    /// The worker that was replaced (now draining).
    pub old_pid: i32,
    /// The worker that took over.
    pub new_pid: i32,
}

/// Sends `cmd` to the master listening at `path` and returns its answer, waiting at most
/// 10 s (a `reload` or `replace` waits as long as the master takes: see [`request_timeout`]).
pub fn request(path: impl AsRef<Path>, cmd: &Command) -> Result<Response> {
    let timeout = match cmd {
        Command::Reload | Command::Replace { .. } | Command::Upgrade => None,
        _ => Some(Duration::from_secs(10)),
    };
    request_timeout(path, cmd, timeout)
}

/// [`request`] with a time limit for the answer (`None`: wait as long as it takes).
pub fn request_timeout(
    path: impl AsRef<Path>,
    cmd: &Command,
    timeout: Option<Duration>,
) -> Result<Response> {
    let path = path.as_ref();
    let err = |what: &str, source: std::io::Error| Error::Control {
        what: format!("{what} {}", path.display()),
        source,
    };
    let mut stream = UnixStream::connect(path).map_err(|e| err("cannot connect to", e))?;
    stream
        .set_read_timeout(timeout)
        .and_then(|()| stream.set_write_timeout(Some(Duration::from_secs(10))))
        .map_err(|e| err("cannot set a timeout on", e))?;
    let mut line =
        serde_json::to_vec(cmd).map_err(|e| err("cannot encode a request for", e.into()))?;
    line.push(b'\n');
    // A master that refuses a client (another uid, too many clients) answers and closes at
    // once, maybe before the request is written: the write then fails, but the answer is there.
    let sent = stream.write_all(&line);
    let mut reply = Vec::new();
    let mut reader = BufReader::new(std::io::Read::take(&stream, MAX_RESPONSE));
    let read = reader.read_until(b'\n', &mut reply);
    if let (Err(e), true) = (sent, reply.is_empty()) {
        return Err(err("cannot send the request to", e));
    }
    read.map_err(|e| err("no answer from", e))?;
    if reply.is_empty() {
        return Err(err(
            "no answer from",
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the master closed the connection",
            ),
        ));
    }
    serde_json::from_slice(&reply).map_err(|e| err("a malformed answer from", e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_one_json_object_each() {
        let cases = [
            (
                Command::Status { resources: false },
                r#"{"cmd":"status","resources":false}"#,
            ),
            (Command::Reload, r#"{"cmd":"reload"}"#),
            (Command::Upgrade, r#"{"cmd":"upgrade"}"#),
            (
                Command::Scale {
                    change: ScaleChange::To(7),
                },
                r#"{"cmd":"scale","to":7}"#,
            ),
            (
                Command::Scale {
                    change: ScaleChange::By(-2),
                },
                r#"{"cmd":"scale","by":-2}"#,
            ),
            (
                Command::Replace { id: "3".into() },
                r#"{"cmd":"replace","id":"3"}"#,
            ),
            (
                Command::Stop { fast: true },
                r#"{"cmd":"stop","fast":true}"#,
            ),
            (Command::Metrics, r#"{"cmd":"metrics"}"#),
        ];
        for (cmd, json) in cases {
            assert_eq!(serde_json::to_string(&cmd).unwrap(), json);
            assert_eq!(serde_json::from_str::<Command>(json).unwrap(), cmd);
        }
        assert_eq!(
            serde_json::from_str::<Command>(r#"{"cmd":"status"}"#).unwrap(),
            Command::Status { resources: false }
        );
        assert_eq!(
            serde_json::from_str::<Command>(r#"{"cmd":"stop"}"#).unwrap(),
            Command::Stop { fast: false }
        );
        assert!(serde_json::from_str::<Command>(r#"{"cmd":"explode"}"#).is_err());
        assert!(serde_json::from_str::<Command>(r#"{"cmd":"scale"}"#).is_err());
    }

    #[test]
    fn scale_changes_parse_from_the_command_line() {
        assert_eq!("7".parse(), Ok(ScaleChange::To(7)));
        assert_eq!("+2".parse(), Ok(ScaleChange::By(2)));
        assert_eq!("-2".parse(), Ok(ScaleChange::By(-2)));
        assert!("x".parse::<ScaleChange>().is_err());
        assert!("+".parse::<ScaleChange>().is_err());
        assert_eq!(ScaleChange::By(-9).apply(5), -4);
        assert_eq!(ScaleChange::To(3).apply(5), 3);
    }

    #[test]
    fn responses_are_tagged_by_result() {
        let r = Response::Error { error: "no".into() };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"result":"error","error":"no"}"#
        );
        let r: Response = serde_json::from_str(r#"{"result":"stopping","fast":false}"#).unwrap();
        assert!(matches!(r, Response::Stopping { fast: false }));
    }
}
