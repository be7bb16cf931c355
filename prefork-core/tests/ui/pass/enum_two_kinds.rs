use prefork_core::{InheritedListener, WorkerContext};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
enum Role {
    Web {
        #[prefork(id, arg)]
        id: String,
        #[prefork(threads)]
        threads: usize,
        listener: InheritedListener,
    },
    Batch(#[prefork(id)] String, #[prefork(arg = "queue")] String),
}

fn main() {
    let b = Role::Batch("batch-0".into(), "mail".into());
    assert_eq!(b.id(), "batch-0");
    assert_eq!(b.args(), ["queue=mail"]);
    assert_eq!(b.runtime_options().threads, None);
}
