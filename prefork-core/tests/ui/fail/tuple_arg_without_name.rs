use prefork_core::WorkerContext;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
struct Worker(#[prefork(id, arg)] u32);

fn main() {}
