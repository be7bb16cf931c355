use prefork_core::WorkerContext;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
#[prefork(runtime_options)]
struct Worker {
    #[prefork(id = 3)]
    id: u32,
    #[prefork(threads)]
    a: usize,
    #[prefork(threads, nice, nice)]
    b: usize,
    #[prefork(arg = "")]
    c: u8,
}

fn main() {}
