use prefork_core::WorkerContext;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
#[prefork(argz = helper)]
struct Worker {
    #[prefork(id, foo, thread = 3)]
    id: u32,
}

fn helper(_: &Worker) -> Vec<String> {
    Vec::new()
}

fn main() {}
