use prefork_core::WorkerContext;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
enum Role {
    #[prefork(id)]
    Web(#[prefork(id)] u32),
}

#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
enum Empty {}

fn main() {}
