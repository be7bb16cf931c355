use prefork_core::WorkerContext;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
struct Worker {
    #[prefork(arg)]
    port: u16,
}

#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
enum Role {
    Web {
        #[prefork(id)]
        id: u32,
    },
    Batch(u32),
}

fn main() {}
