use std::collections::BTreeSet;

use prefork_core::{RlimitResource, RuntimeOptions, WorkerContext};
use serde::{Deserialize, Serialize};

mod helpers {
    pub fn extra_args(w: &super::Worker) -> Vec<String> {
        vec![format!("cpus={}", w.cpus.len())]
    }
}

fn limits(_: &Worker) -> RuntimeOptions {
    RuntimeOptions::default().rlimit(RlimitResource::NoFile, 1024, 4096)
}

#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
#[prefork(args = helpers::extra_args)]
#[prefork(runtime_options = "limits")]
struct Worker {
    #[prefork(id, arg)]
    id: u32,
    #[prefork(threads)]
    threads: u8,
    #[prefork(cpus)]
    cpus: BTreeSet<usize>,
    #[prefork(nice)]
    nice: i8,
}

#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
enum Pinned {
    One(#[prefork(id)] u32, #[prefork(cpus)] [usize; 2]),
    Two {
        #[prefork(id)]
        id: u32,
        #[prefork(nice)]
        nice: i32,
    },
}

fn main() {
    let w = Worker {
        id: 1,
        threads: 4,
        cpus: [3, 1].into(),
        nice: -2,
    };
    assert_eq!(w.args(), ["id=1", "cpus=2"]);
    let o = w.runtime_options();
    assert_eq!(o.threads, Some(4));
    assert_eq!(o.cpu_affinity, Some(vec![1, 3]));
    assert_eq!(o.nice, Some(-2));
    assert_eq!(o.rlimits.len(), 1);

    assert_eq!(
        Pinned::One(0, [5, 6]).runtime_options().cpu_affinity,
        Some(vec![5, 6])
    );
    assert_eq!(
        Pinned::Two { id: 1, nice: 9 }.runtime_options().nice,
        Some(9)
    );
    assert!(Pinned::One(0, [5, 6]).args().is_empty());
}
