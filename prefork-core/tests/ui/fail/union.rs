use prefork_core::WorkerContext;

#[derive(WorkerContext)]
union Worker {
    id: u32,
    other: f32,
}

fn main() {}
