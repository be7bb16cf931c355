use std::fmt::{Debug, Display};

use prefork_core::WorkerContext;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

// The derive adds no bounds: the type declares what `WorkerContext` needs. `serde(bound)` keeps
// serde from adding `I: Deserialize<'de>` next to `I: DeserializeOwned`.
#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
#[serde(bound(deserialize = ""))]
struct Worker<I, T>
where
    I: Ord + Clone + Debug + Display + Send + Serialize + DeserializeOwned + 'static,
    T: Clone + Debug + Serialize + DeserializeOwned + 'static,
{
    #[prefork(id, arg)]
    id: I,
    payload: T,
}

fn main() {
    let w = Worker {
        id: 4u64,
        payload: vec![1, 2],
    };
    assert_eq!(w.id(), 4);
    assert_eq!(w.args(), ["id=4"]);
    let w = Worker {
        id: "a".to_string(),
        payload: (),
    };
    assert_eq!(w.id(), "a");
    let back = Worker::<String, ()>::decode(&w.encode().unwrap()).unwrap();
    assert_eq!(back.id(), "a");
}
