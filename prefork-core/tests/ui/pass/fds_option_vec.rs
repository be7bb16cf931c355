use prefork_core::{InheritedListener, WorkerContext};
use serde::{Deserialize, Serialize};

// Recognised by type, without #[prefork(fd)].
#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
struct ByType {
    #[prefork(id)]
    id: u32,
    main: InheritedListener,
    admin: Option<InheritedListener>,
    extra: Vec<prefork_core::InheritedListener>,
}

// Declared by attribute, in a type the derive cannot recognise by name.
type Listeners = Vec<Option<InheritedListener>>;

#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
struct ByAttribute {
    #[prefork(id)]
    id: u32,
    #[prefork(fd)]
    all: Listeners,
}

fn main() {
    let mut w = ByAttribute {
        id: 1,
        all: vec![None, None],
    };
    let mut n = 0;
    w.visit_fds(&mut |_| n += 1);
    assert_eq!(n, 0);
    let _ = ByType::decode(br#"{"id":1,"main":{"kind":"tcp","fd":3},"admin":null,"extra":[]}"#)
        .map(|w| w.id());
}
