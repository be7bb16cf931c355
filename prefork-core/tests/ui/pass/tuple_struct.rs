use prefork_core::WorkerContext;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
struct Slot(
    #[prefork(id, arg = "slot")] u8,
    #[prefork(threads)] u16,
    String,
);

fn main() {
    let s = Slot(3, 2, "x".into());
    assert_eq!(s.id(), 3u8);
    assert_eq!(s.args(), ["slot=3"]);
    assert_eq!(s.runtime_options().threads, Some(2));
}
