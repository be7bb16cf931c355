//! The sizes of a run: every count and duration, full or `--quick`.

use std::time::Duration;

/// Sizes of a run.
#[derive(Debug)]
pub struct Plan {
    /// A `--quick` smoke run.
    pub quick: bool,
    /// §1 Startup: the worker counts N.
    pub startup_ns: Vec<u32>,
    /// §1 Startup: repetitions of each N.
    pub startup_reps: usize,
    /// §1 The floor: no-op processes started in a row per measurement.
    pub floor_iters: u32,
    /// §1 The floor: measurements.
    pub floor_reps: usize,
    /// §2 Respawn: the worker counts N.
    pub respawn_ns: Vec<u32>,
    /// §2 Respawn: kills per pass and N.
    pub respawn_samples: usize,
    /// §3 Reload: `SIGHUP`s under load.
    pub reloads: usize,
    /// §3 Reload: load before the first and after each reload.
    pub reload_gap: Duration,
    /// §4 Throughput: seconds a run.
    pub tput_secs: f64,
    /// §4 Throughput: runs per target.
    pub tput_reps: usize,
    /// §5 Master cost: one idle window.
    pub idle_window: Duration,
    /// §5 Master cost: idle windows.
    pub idle_reps: usize,
    /// §6 Scale: workers.
    pub scale_n: u32,
    /// §6 Scale: starts of the master.
    pub scale_reps: usize,
    /// §6 Scale: workers killed at once in a storm.
    pub storm: u32,
    /// §6 Scale: storms.
    pub storms: usize,
    /// §7 Cost of the serving layer: rounds of (new, old) runs, `tput_secs` each.
    pub layer_rounds: usize,
    /// §9 Control: `status` round trips per master.
    pub control_reps: usize,
    /// §11 Upgrade: upgrades of the master in place under load (and nginx's, as a control).
    pub upgrades: usize,
    /// §11 Upgrade: upgrades in a row, for the master's fds and RSS.
    pub upgrades_in_row: usize,
}

impl Plan {
    /// The full run, or with `quick` the smoke run.
    pub fn new(quick: bool) -> Plan {
        if quick {
            Plan {
                quick,
                startup_ns: vec![1, 16, 64],
                startup_reps: 2,
                floor_iters: 20,
                floor_reps: 2,
                respawn_ns: vec![2, 16],
                respawn_samples: 8,
                reloads: 2,
                reload_gap: Duration::from_millis(300),
                tput_secs: 1.0,
                tput_reps: 1,
                idle_window: Duration::from_secs(2),
                idle_reps: 1,
                scale_n: 200,
                scale_reps: 1,
                storm: 20,
                storms: 1,
                layer_rounds: 3,
                control_reps: 20,
                upgrades: 2,
                upgrades_in_row: 3,
            }
        } else {
            Plan {
                quick,
                startup_ns: vec![1, 16, 64, 256],
                startup_reps: 7,
                floor_iters: 200,
                floor_reps: 7,
                respawn_ns: vec![2, 16],
                respawn_samples: 50,
                reloads: 5,
                reload_gap: Duration::from_secs(1),
                tput_secs: 5.0,
                tput_reps: 5,
                idle_window: Duration::from_secs(10),
                idle_reps: 3,
                scale_n: 1000,
                scale_reps: 3,
                storm: 100,
                storms: 3,
                layer_rounds: 7,
                control_reps: 200,
                upgrades: 5,
                upgrades_in_row: 10,
            }
        }
    }
}
