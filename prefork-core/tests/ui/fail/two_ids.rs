use prefork_core::WorkerContext;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
struct Worker {
    #[prefork(id)]
    id: u32,
    #[prefork(arg, id)]
    port: u16,
}

fn main() {}
