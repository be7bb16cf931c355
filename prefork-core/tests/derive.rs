//! Behaviour of `#[derive(WorkerContext)]` on real types: ids, argv, runtime options, fd
//! visiting order, enums, and the default encode/decode round trip.

use std::collections::BTreeSet;
use std::os::fd::AsRawFd;

use prefork_core::{InheritedListener, RlimitResource, RuntimeOptions, WorkerContext};
use serde::{Deserialize, Serialize};

fn listener() -> InheritedListener {
    InheritedListener::bind_tcp("127.0.0.1:0").expect("bind a TCP listener on 127.0.0.1")
}

/// The master-side fd numbers of the listeners `visit_fds` visits, in order.
fn visited<W: WorkerContext>(w: &mut W) -> Vec<i32> {
    let mut fds = Vec::new();
    w.visit_fds(&mut |l| fds.push(l.master_fd().expect("a master-side listener").as_raw_fd()));
    fds
}

fn raw(l: &InheritedListener) -> i32 {
    l.master_fd().expect("a master-side listener").as_raw_fd()
}

// The example of prefork-macros' crate documentation.
mod crate_docs_example {
    use prefork_core::{InheritedListener, RuntimeOptions, WorkerContext};
    use serde::{Deserialize, Serialize};

    #[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
    #[prefork(runtime_options = extra_options)]
    struct Worker {
        #[prefork(id, arg)]
        id: u32,
        #[prefork(arg = "port")]
        listen_port: u16,
        #[prefork(threads)]
        threads: usize,
        #[prefork(cpus)]
        cpus: Vec<usize>,
        // an `InheritedListener`, `Option<InheritedListener>` or `Vec<InheritedListener>`
        // field is inherited even without #[prefork(fd)]
        listener: Option<InheritedListener>,
    }

    fn extra_options(_: &Worker) -> RuntimeOptions {
        RuntimeOptions::default().env("RUST_LOG", "info")
    }

    #[test]
    fn crate_docs_example() {
        let w = Worker {
            id: 2,
            listen_port: 8080,
            threads: 4,
            cpus: vec![0, 1],
            listener: None,
        };
        assert_eq!(w.id(), 2);
        assert_eq!(w.args(), ["id=2", "port=8080"]);
        assert_eq!(w.runtime_options().threads, Some(4));
        assert_eq!(w.runtime_options().cpu_affinity, Some(vec![0, 1]));
        assert_eq!(
            w.runtime_options().env,
            [("RUST_LOG".to_string(), "info".to_string())]
        );
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
struct Web {
    #[prefork(id, arg)]
    id: u32,
    #[prefork(arg = "port")]
    listen_port: u16,
    #[prefork(arg)]
    r#type: String,
    #[prefork(threads)]
    threads: u16,
    #[prefork(cpus)]
    cpus: Vec<usize>,
    #[prefork(nice)]
    nice: i8,
    main: InheritedListener,
    not_shown: String,
    #[prefork(fd)]
    admin: Option<InheritedListener>,
    extra: Vec<InheritedListener>,
}

fn web() -> Web {
    Web {
        id: 3,
        listen_port: 8080,
        r#type: "http".into(),
        threads: 5,
        cpus: vec![2, 0],
        nice: -4,
        main: listener(),
        not_shown: "hidden".into(),
        admin: Some(listener()),
        extra: vec![listener(), listener()],
    }
}

#[test]
fn named_struct_id_and_args() {
    let w = web();
    let id: u32 = w.id();
    assert_eq!(id, 3);
    assert_eq!(w.args(), ["id=3", "port=8080", "type=http"]);
}

#[test]
fn named_struct_runtime_options() {
    let o = web().runtime_options();
    assert_eq!(o.threads, Some(5));
    assert_eq!(o.cpu_affinity, Some(vec![2, 0]));
    assert_eq!(o.nice, Some(-4));
    assert!(o.rlimits.is_empty());
    assert!(o.env.is_empty());
    assert_eq!(
        o.to_args(),
        ["+RTS", "-N5", "--cpus=2,0", "--nice=-4", "-RTS"]
    );
}

#[test]
fn visits_declared_listeners_in_declaration_order() {
    let mut w = web();
    let admin = w.admin.as_ref().map(raw).expect("admin listener");
    let expected = vec![raw(&w.main), admin, raw(&w.extra[0]), raw(&w.extra[1])];
    assert_eq!(visited(&mut w), expected);

    w.admin = None;
    w.extra.clear();
    assert_eq!(visited(&mut w), vec![raw(&w.main)]);
}

#[test]
fn visit_fds_gets_mutable_access() {
    // Whatever `f` does to the listeners it is handed happens to the context's own fields: the
    // spawner relies on it to write the child-side fd numbers.
    let mut w = web();
    let mut replaced = Vec::new();
    w.visit_fds(&mut |l| {
        *l = listener();
        replaced.push(raw(l));
    });
    assert_eq!(replaced.len(), 4);
    assert_eq!(visited(&mut w), replaced);
}

#[test]
fn defaults_when_nothing_is_marked() {
    #[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
    struct Bare {
        #[prefork(id)]
        name: String,
        listener_like: Option<String>,
    }
    let mut b = Bare {
        name: "x".into(),
        listener_like: None,
    };
    assert_eq!(b.id(), "x");
    assert!(b.args().is_empty());
    assert!(b.runtime_options().is_empty());
    assert!(visited(&mut b).is_empty());
}

#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
struct Slot(
    #[prefork(id, arg = "slot")] u8,
    #[prefork(fd)] InheritedListener,
    #[prefork(threads)] usize,
    #[prefork(arg = "label")] String,
);

#[test]
fn tuple_struct() {
    let mut s = Slot(1, listener(), 2, "a b".into());
    assert_eq!(s.id(), 1);
    assert_eq!(s.args(), ["slot=1", "label=a b"]);
    assert_eq!(s.runtime_options(), RuntimeOptions::with_threads(2));
    let fd = raw(&s.1);
    assert_eq!(visited(&mut s), vec![fd]);
}

#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
enum Role {
    Web {
        #[prefork(id, arg = "web")]
        id: u32,
        #[prefork(threads)]
        threads: usize,
        public: InheritedListener,
        internal: InheritedListener,
    },
    Batch(
        #[prefork(arg = "queue")] String,
        #[prefork(id)] u32,
        #[prefork(nice)] i32,
    ),
    Admin {
        #[prefork(id)]
        id: u32,
        #[prefork(fd)]
        socket: Option<InheritedListener>,
    },
}

#[test]
fn enum_dispatches_per_variant() {
    let mut web = Role::Web {
        id: 1,
        threads: 3,
        public: listener(),
        internal: listener(),
    };
    let mut batch = Role::Batch("mail".into(), 2, 10);
    let mut admin = Role::Admin {
        id: 3,
        socket: Some(listener()),
    };

    assert_eq!((web.id(), batch.id(), admin.id()), (1, 2, 3));

    assert_eq!(web.args(), ["web=1"]);
    assert_eq!(batch.args(), ["queue=mail"]);
    assert!(admin.args().is_empty());

    assert_eq!(web.runtime_options(), RuntimeOptions::with_threads(3));
    assert_eq!(batch.runtime_options(), RuntimeOptions::default().nice(10));
    assert!(admin.runtime_options().is_empty());

    let expected = match &web {
        Role::Web {
            public, internal, ..
        } => vec![raw(public), raw(internal)],
        _ => unreachable!(),
    };
    assert_eq!(visited(&mut web), expected);
    assert!(visited(&mut batch).is_empty());
    let expected = match &admin {
        Role::Admin { socket, .. } => vec![raw(socket.as_ref().expect("socket"))],
        _ => unreachable!(),
    };
    assert_eq!(visited(&mut admin), expected);
}

fn common_args(w: &Tuned) -> Vec<String> {
    vec![format!("cpus={}", w.cpus.len()), "tuned".to_string()]
}

mod options {
    use prefork_core::{RlimitResource, RuntimeOptions};

    pub fn limits(w: &super::Tuned) -> RuntimeOptions {
        // `threads` set here wins over the field; the field's cpus and nice stay.
        let o = RuntimeOptions::default().rlimit(RlimitResource::NoFile, 1024, 4096);
        if w.override_threads { o.threads(16) } else { o }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
#[prefork(args = common_args, runtime_options = options::limits)]
struct Tuned {
    #[prefork(id, arg)]
    id: u64,
    #[prefork(threads)]
    threads: u32,
    #[prefork(cpus)]
    cpus: BTreeSet<usize>,
    #[prefork(nice)]
    nice: i64,
    override_threads: bool,
}

#[test]
fn container_attributes_come_after_fields() {
    let mut t = Tuned {
        id: 9,
        threads: 2,
        cpus: [3, 1].into(),
        nice: 1,
        override_threads: false,
    };
    assert_eq!(t.args(), ["id=9", "cpus=2", "tuned"]);
    let o = t.runtime_options();
    assert_eq!(o.threads, Some(2));
    assert_eq!(o.cpu_affinity, Some(vec![1, 3]));
    assert_eq!(o.nice, Some(1));
    assert_eq!(o.rlimits.len(), 1);
    assert_eq!(o.rlimits[0].resource, RlimitResource::NoFile);

    t.override_threads = true;
    let o = t.runtime_options();
    assert_eq!(o.threads, Some(16), "the container function is merged last");
    assert_eq!(o.nice, Some(1));
}

#[test]
fn container_attributes_alone() {
    fn argv(_: &OnlyContainer) -> Vec<String> {
        vec!["x".into()]
    }
    fn opts(_: &OnlyContainer) -> RuntimeOptions {
        RuntimeOptions::with_threads(1)
    }
    #[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
    #[prefork(args = "argv")]
    #[prefork(runtime_options = opts)]
    struct OnlyContainer {
        #[prefork(id)]
        id: u8,
    }
    let c = OnlyContainer { id: 0 };
    assert_eq!(c.args(), ["x"]);
    assert_eq!(c.runtime_options(), RuntimeOptions::with_threads(1));
}

// The derive adds no bounds: the type states what `WorkerContext` needs (serde is told not to
// add its own `T: Deserialize<'de>` next to `T: DeserializeOwned`).
#[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
#[serde(bound(deserialize = ""))]
struct Generic<T>
where
    T: Clone + std::fmt::Debug + std::fmt::Display + Serialize + 'static,
    T: serde::de::DeserializeOwned,
{
    #[prefork(id)]
    id: (u8, u8),
    #[prefork(arg)]
    value: T,
}

#[test]
fn generic_struct() {
    let g = Generic {
        id: (1, 2),
        value: 2.5f64,
    };
    assert_eq!(g.id(), (1, 2));
    assert_eq!(g.args(), ["value=2.5"]);
}

#[test]
fn encode_decode_round_trip() {
    let w = Role::Batch("mail".into(), 7, -1);
    let bytes = w.encode().expect("encode");
    let back = Role::decode(&bytes).expect("decode");
    assert_eq!(back.id(), 7);
    assert_eq!(back.args(), ["queue=mail"]);
    assert_eq!(back.runtime_options().nice, Some(-1));

    // A listener crosses as its kind and child-side fd; the master's socket stays behind.
    let t = Slot(4, listener(), 1, "l".into());
    let back = Slot::decode(&t.encode().expect("encode")).expect("decode");
    assert_eq!(back.id(), 4);
    assert_eq!(back.args(), t.args());
    assert!(back.1.master_fd().is_none());
    assert_eq!(back.1.child_fd(), None);

    assert!(Slot::decode(b"{not json").is_err());
}

#[test]
fn one_field_with_several_roles() {
    #[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
    struct Multi {
        #[prefork(id, arg, threads, nice)]
        n: u8,
        #[prefork(cpus)]
        cpus: Vec<usize>,
    }
    #[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
    enum MultiEnum {
        A(#[prefork(id, threads, nice)] u8),
    }
    let m = Multi {
        n: 3,
        cpus: vec![1],
    };
    assert_eq!(m.id(), 3);
    assert_eq!(m.args(), ["n=3"]);
    let o = m.runtime_options();
    assert_eq!((o.threads, o.nice), (Some(3), Some(3)));
    let o = MultiEnum::A(2).runtime_options();
    assert_eq!((o.threads, o.nice), (Some(2), Some(2)));
}
