use prefork_core::WorkerContext;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
enum Role {
    Web(#[prefork(id)] u32),
    Idle,
}

fn main() {}
