//! `#[derive(WorkerContext)]` for prefork-core (placeholder being written).
use proc_macro::TokenStream;

/// Derives `prefork_core::WorkerContext`.
#[proc_macro_derive(WorkerContext, attributes(prefork))]
pub fn derive_worker_context(_input: TokenStream) -> TokenStream {
    TokenStream::new()
}
