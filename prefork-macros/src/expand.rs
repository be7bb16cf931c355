//! Code generation: the `impl ::prefork_core::WorkerContext` block, one method at a time.
//!
//! * A method with nothing to do (no field and no container function for it) is not written,
//!   so the trait's default applies.
//! * Every method reads fields through one pattern per shape: `let Self { .. } = self;` for a
//!   struct, `match self { Self::A { .. } => .., }` for an enum.
//! * Generated locals are named `__prefork_*`, so that they cannot clash with, or shadow, the
//!   user's names; paths are absolute (`::core`, `::std`, `::prefork_core`).
//! * The code that uses a field is spanned at the field's type (but resolves at the call
//!   site), so that a type error points at the field, and lints see macro-generated code.

use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{DeriveInput, LitStr};

use crate::attr::ContainerAttrs;
use crate::shape::{FieldRef, Shape};

/// The `impl WorkerContext` block for `input`, from its container attributes and its shapes.
pub(crate) fn worker_context_impl(
    input: &DeriveInput,
    container: &ContainerAttrs,
    shapes: &[Shape],
    is_enum: bool,
) -> TokenStream2 {
    let type_name = &input.ident;
    let id = id_method(shapes, is_enum);
    let args = args_method(shapes, is_enum, container);
    let runtime_options = runtime_options_method(shapes, is_enum, container);
    let visit_fds = visit_fds_method(shapes, is_enum);
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    quote! {
        #[automatically_derived]
        impl #impl_generics ::prefork_core::WorkerContext for #type_name #ty_generics #where_clause {
            #id
            #args
            #runtime_options
            #visit_fds
        }
    }
}

/// `type Id` (the first shape's id type) and `fn id`, a clone of the id field.
fn id_method(shapes: &[Shape], is_enum: bool) -> TokenStream2 {
    let Some(id_ty) = shapes.first().and_then(|s| s.id.as_ref()).map(|f| &f.ty) else {
        return TokenStream2::new();
    };
    let body = destructure_self(shapes, is_enum, |shape| {
        let field = shape.id.as_ref()?;
        let binding = &field.binding;
        let code = quote_spanned!(field.code_span()=> ::core::clone::Clone::clone(#binding));
        Some((vec![field.clone()], code))
    });
    quote! {
        type Id = #id_ty;

        fn id(&self) -> Self::Id {
            #body
        }
    }
}

/// `fn args`: `name=value` for each `arg` field, then the container's `args` function.
fn args_method(shapes: &[Shape], is_enum: bool, container: &ContainerAttrs) -> TokenStream2 {
    let field_args = destructure_self(shapes, is_enum, |shape| {
        if shape.args.is_empty() {
            return None;
        }
        let pushes = shape.args.iter().map(|(name, field)| {
            let format = LitStr::new(
                &format!("{}={{}}", name.replace('{', "{{").replace('}', "}}")),
                Span::call_site(),
            );
            let binding = &field.binding;
            quote_spanned! {field.code_span()=>
                __prefork_args.push(::std::format!(#format, #binding));
            }
        });
        let code = quote!(#(#pushes)*);
        Some((shape.args.iter().map(|(_, f)| f.clone()).collect(), code))
    });
    let container_call = container.args.as_ref().map(|path| {
        quote_spanned! {Span::call_site().located_at(path.span())=>
            ::core::iter::Extend::extend(&mut __prefork_args, #path(self));
        }
    });
    if field_args.is_none() && container_call.is_none() {
        return TokenStream2::new();
    }
    quote! {
        fn args(&self) -> ::std::vec::Vec<::std::string::String> {
            let mut __prefork_args: ::std::vec::Vec<::std::string::String> =
                ::std::vec::Vec::new();
            #field_args
            #container_call
            __prefork_args
        }
    }
}

/// `fn runtime_options`: the `threads`, `cpus` and `nice` fields, then the container's
/// `runtime_options` function merged over them.
fn runtime_options_method(
    shapes: &[Shape],
    is_enum: bool,
    container: &ContainerAttrs,
) -> TokenStream2 {
    let field_options = destructure_self(shapes, is_enum, |shape| {
        let mut read_fields = Vec::new();
        let mut code = TokenStream2::new();
        if let Some(field) = &shape.threads {
            let binding = &field.binding;
            code.extend(quote_spanned! {field.code_span()=>
                __prefork_options.threads = ::core::option::Option::Some((*#binding) as usize);
            });
            read_fields.push(field.clone());
        }
        if let Some(field) = &shape.cpus {
            let binding = &field.binding;
            code.extend(quote_spanned! {field.code_span()=>
                __prefork_options.cpu_affinity = ::core::option::Option::Some(
                    ::core::iter::Iterator::collect(::core::iter::Iterator::copied(
                        ::core::iter::IntoIterator::into_iter(#binding),
                    )),
                );
            });
            read_fields.push(field.clone());
        }
        if let Some(field) = &shape.nice {
            let binding = &field.binding;
            code.extend(quote_spanned! {field.code_span()=>
                __prefork_options.nice = ::core::option::Option::Some((*#binding) as i32);
            });
            read_fields.push(field.clone());
        }
        (!read_fields.is_empty()).then_some((read_fields, code))
    });
    let container_call = container.runtime_options.as_ref().map(|path| {
        quote_spanned! {Span::call_site().located_at(path.span())=>
            __prefork_options = ::prefork_core::RuntimeOptions::merge(__prefork_options, #path(self));
        }
    });
    if field_options.is_none() && container_call.is_none() {
        return TokenStream2::new();
    }
    quote! {
        fn runtime_options(&self) -> ::prefork_core::RuntimeOptions {
            let mut __prefork_options = ::prefork_core::RuntimeOptions::default();
            #field_options
            #container_call
            __prefork_options
        }
    }
}

/// `fn visit_fds`: each fd field through `VisitFds`, in declaration order.
fn visit_fds_method(shapes: &[Shape], is_enum: bool) -> TokenStream2 {
    let body = destructure_self(shapes, is_enum, |shape| {
        if shape.fds.is_empty() {
            return None;
        }
        let visits = shape.fds.iter().map(|field| {
            let binding = &field.binding;
            quote_spanned! {field.code_span()=>
                ::prefork_core::VisitFds::visit_fds(#binding, __prefork_visit);
            }
        });
        Some((shape.fds.clone(), quote!(#(#visits)*)))
    });
    match body {
        None => TokenStream2::new(),
        Some(body) => quote! {
            fn visit_fds(
                &mut self,
                __prefork_visit: &mut dyn ::core::ops::FnMut(&mut ::prefork_core::InheritedListener),
            ) {
                #body
            }
        },
    }
}

/// Destructures `self` for per-shape code (`match self` for an enum, `let` for a struct). `body` gives, for one shape, the fields it reads and
/// the code that uses their bindings (references to the fields); `None` when the shape has
/// nothing to do for this method.
fn destructure_self(
    shapes: &[Shape],
    is_enum: bool,
    mut body: impl FnMut(&Shape) -> Option<(Vec<FieldRef>, TokenStream2)>,
) -> Option<TokenStream2> {
    let bodies: Vec<_> = shapes.iter().map(&mut body).collect();
    if bodies.iter().all(Option::is_none) {
        return None;
    }
    let arms = shapes.iter().zip(bodies).map(|(shape, body)| {
        let (mut fields, code) = body.unwrap_or_default();
        // One field can serve twice in a method (`#[prefork(threads, nice)]`); bind it once.
        let mut seen = std::collections::BTreeSet::new();
        fields.retain(|f| seen.insert(f.binding.to_string()));
        let self_path = &shape.self_path;
        let members = fields.iter().map(|f| &f.member);
        let bindings = fields.iter().map(|f| &f.binding);
        let pattern = quote!(#self_path { #(#members: #bindings,)* .. });
        (pattern, code)
    });
    if is_enum {
        let arms = arms.map(|(pattern, code)| quote!(#pattern => { #code }));
        Some(quote! {
            match self {
                #(#arms)*
            }
        })
    } else {
        let arms: Vec<_> = arms
            .map(|(pattern, code)| quote!(let #pattern = self; #code))
            .collect();
        Some(quote!(#(#arms)*))
    }
}
