//! `#[derive(WorkerContext)]` for [prefork-core](https://example.invalid/prefork).
//!
//! Use it through `prefork_core::WorkerContext` (re-exported behind prefork-core's default
//! `derive` feature); this crate is not meant to be depended on directly. The derive writes
//! `impl ::prefork_core::WorkerContext for YourType` from `#[prefork(...)]` attributes:
//!
//! ```rust,ignore
//! use prefork_core::{InheritedListener, RuntimeOptions, WorkerContext};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Clone, Debug, Serialize, Deserialize, WorkerContext)]
//! #[prefork(runtime_options = extra_options)]
//! struct Worker {
//!     #[prefork(id, arg)]
//!     id: u32,
//!     #[prefork(arg = "port")]
//!     listen_port: u16,
//!     #[prefork(threads)]
//!     threads: usize,
//!     #[prefork(cpus)]
//!     cpus: Vec<usize>,
//!     // an `InheritedListener`, `Option<InheritedListener>` or `Vec<InheritedListener>`
//!     // field is inherited even without #[prefork(fd)]
//!     listener: Option<InheritedListener>,
//! }
//!
//! fn extra_options(_: &Worker) -> RuntimeOptions {
//!     RuntimeOptions::default().env("RUST_LOG", "info")
//! }
//!
//! let w = Worker { id: 2, listen_port: 8080, threads: 4, cpus: vec![0, 1], listener: None };
//! assert_eq!(w.id(), 2);
//! assert_eq!(w.args(), ["id=2", "port=8080"]);
//! assert_eq!(w.runtime_options().threads, Some(4));
//! ```
//!
//! (This example is compiled and run by prefork-core's tests, `tests/derive.rs`.)
//!
//! # Field attributes
//!
//! Several can be given at once, as in `#[prefork(id, arg)]`.
//!
//! | attribute | meaning |
//! |---|---|
//! | `id` | The worker's identity: `type Id` is this field's type and `id()` returns a clone of it. Exactly one field (one per variant of an enum) must have it. |
//! | `arg` | Shown in the worker's argv as `name=value` (with `Display`), in declaration order. The name is the field's name. |
//! | `arg = "name"` | The same, under another name. A tuple field has no name, so it needs this form. |
//! | `fd` | The field carries inherited sockets: `visit_fds` visits it through `prefork_core::VisitFds` (implemented by `InheritedListener` and by `Option`s and `Vec`s of it), in declaration order. A field whose type is `InheritedListener`, `Option<InheritedListener>` or `Vec<InheritedListener>` is visited without the attribute. |
//! | `threads` | `runtime_options().threads = Some(field as usize)`. |
//! | `cpus` | `runtime_options().cpu_affinity`: the field is anything whose reference iterates over `&usize` (`Vec<usize>`, `[usize; N]`, `BTreeSet<usize>`, …). |
//! | `nice` | `runtime_options().nice = Some(field as i32)`. |
//!
//! # Container attributes
//!
//! On the struct or enum itself:
//!
//! | attribute | meaning |
//! |---|---|
//! | `args = path::to::fn` | A `fn(&Self) -> Vec<String>` whose result is appended after the field args. |
//! | `runtime_options = path::to::fn` | A `fn(&Self) -> RuntimeOptions` merged (with `RuntimeOptions::merge`, so what it sets wins) over the options the fields give. |
//!
//! The path may also be written as a string, `args = "path::to::fn"`.
//!
//! # Shapes
//!
//! * Structs with named fields, and tuple structs.
//! * Enums whose variants all have fields (named or positional). Each variant needs its own
//!   `#[prefork(id)]` field, all of the same type (the first variant's id type is `Id`). The other
//!   attributes apply to the variant they are in.
//! * Unit structs, unit variants and unions are rejected.
//!
//! Generic types are supported; the impl gets exactly the type's own bounds, so declare the ones
//! `WorkerContext` needs (`Serialize`, `DeserializeOwned`, `Clone`, `Debug`, `'static`, and
//! `Ord + Send` for a generic id) on the type. With `T: DeserializeOwned` among them, add
//! `#[serde(bound(deserialize = ""))]` so that serde does not add a clashing `T: Deserialize<'de>`.
//!
//! `encode` and `decode` are not generated: the trait's `serde_json` defaults apply.

// Three steps, one module each: `attr` reads the `#[prefork(...)]` attributes, `shape` checks
// the fields against the rules and records what each method reads, `expand` writes the impl.
mod attr;
mod expand;
mod shape;

use proc_macro::TokenStream;
use proc_macro2::TokenStream as TokenStream2;
use syn::{DeriveInput, Error};

/// Derives `prefork_core::WorkerContext` from `#[prefork(...)]` attributes.
///
/// See the [crate documentation](crate) for the attributes.
#[proc_macro_derive(WorkerContext, attributes(prefork))]
pub fn derive_worker_context(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as DeriveInput);
    match derive(&input) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

/// Reads the container attributes, then the shape of the type, collecting every mistake in
/// both; only when there is none, writes the impl.
fn derive(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let mut errors = Errors::default();
    let container = attr::parse_container_attrs(&input.attrs, &mut errors);
    let (shapes, is_enum) = shape::analyze(input, &mut errors);
    errors.finish()?;
    Ok(expand::worker_context_impl(
        input, &container, &shapes, is_enum,
    ))
}

/// Collects every error instead of stopping at the first one.
#[derive(Default)]
struct Errors(Option<Error>);

impl Errors {
    fn push(&mut self, err: Error) {
        match &mut self.0 {
            Some(all) => all.combine(err),
            None => self.0 = Some(err),
        }
    }

    fn finish(self) -> syn::Result<()> {
        match self.0 {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }
}
