//! Looking at processes from the outside, for the test kit (`prefork-tests`, lib `testkit`) and
//! the benchmark (`bench`) alike: what `/proc` says about them ([`procfs`]) and what they answer
//! over HTTP/1.1 ([`http`]).
//!
//! Both readers only read: nothing here signals, waits or panics. A process that vanished
//! between two reads is `None` (or an empty list), never an error, because the processes looked
//! at are dying and being born all the time. Waiting, deadlines and cleanup belong to the
//! callers, which differ: the test kit panics with a message, the benchmark returns an error
//! and keeps measuring.

pub mod http;
pub mod procfs;
