//! `prefork-ctl` driven in-process, for the tests that talk to a master's control socket
//! (included with `#[path]` by each test file that needs it).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

/// `prefork-ctl -s SOCK args…`: (exit status, stdout, stderr).
pub fn ctl(sock: &Path, args: &[&str]) -> (u8, String, String) {
    let mut argv = vec!["prefork-ctl", "-s", sock.to_str().unwrap()];
    argv.extend_from_slice(args);
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let code = prefork_ctl::run(argv, &mut out, &mut err);
    (
        code,
        String::from_utf8_lossy(&out).into_owned(),
        String::from_utf8_lossy(&err).into_owned(),
    )
}

/// `prefork-ctl status --json`, parsed.
pub fn status(sock: &Path) -> Value {
    let (code, out, err) = ctl(sock, &["status", "--json"]);
    assert_eq!(code, 0, "status failed: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("status is not JSON ({e}): {out}"))
}

/// id → pid of the workers in state `state`.
pub fn by_state(s: &Value, state: &str) -> BTreeMap<String, i32> {
    s["workers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|w| w["state"] == state)
        .map(|w| {
            (
                w["id"].as_str().unwrap().to_string(),
                w["pid"].as_i64().unwrap() as i32,
            )
        })
        .collect()
}
