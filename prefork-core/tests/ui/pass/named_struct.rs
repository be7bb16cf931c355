use prefork_core::{InheritedListener, WorkerContext};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
struct Worker {
    #[prefork(id, arg)]
    id: u32,
    #[prefork(arg = "port")]
    listen_port: u16,
    #[prefork(arg)]
    r#type: String,
    #[prefork(fd)]
    listener: Option<InheritedListener>,
    #[serde(default)]
    note: String,
}

fn main() {
    let w = Worker {
        id: 7,
        listen_port: 8080,
        r#type: "web".into(),
        listener: None,
        note: String::new(),
    };
    let id: u32 = w.id();
    assert_eq!(id, 7);
    assert_eq!(w.args(), ["id=7", "port=8080", "type=web"]);
    assert!(w.runtime_options().is_empty());
}
