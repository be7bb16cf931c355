use prefork_core::WorkerContext;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
struct Worker;

fn main() {}
