use prefork_core::WorkerContext;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
enum Role {
    Web(#[prefork(id)] u32),
    Batch(#[prefork(id)] String),
}

#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
struct Worker {
    #[prefork(id)]
    id: u32,
    #[prefork(fd)]
    not_a_socket: String,
    #[prefork(threads)]
    threads: String,
}

fn main() {}
