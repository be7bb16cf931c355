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

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{
    Attribute, Data, DeriveInput, Error, ExprPath, Fields, GenericArgument, Ident, Index, LitStr,
    Member, Path, PathArguments, Token, Type,
};

/// Derives `prefork_core::WorkerContext` from `#[prefork(...)]` attributes.
///
/// See the [crate documentation](crate) for the attributes.
#[proc_macro_derive(WorkerContext, attributes(prefork))]
pub fn derive_worker_context(input: TokenStream) -> TokenStream {
    let input = syn::parse_macro_input!(input as DeriveInput);
    match expand(&input) {
        Ok(tokens) => tokens.into(),
        Err(err) => err.to_compile_error().into(),
    }
}

const FIELD_KEYS: &str = "id, arg, fd, threads, cpus, nice";
const CONTAINER_KEYS: &str = "args, runtime_options";

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

/// `a::b` as written, for messages.
fn path_name(path: &Path) -> String {
    path.segments
        .iter()
        .map(|s| s.ident.unraw().to_string())
        .collect::<Vec<_>>()
        .join("::")
}

/// Skips the `= value` or `(...)` after a key that is being rejected, so that the keys after it
/// are still checked.
fn skip_value(meta: &ParseNestedMeta) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<syn::Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.input.parse::<proc_macro2::TokenTree>()?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Attributes
// ---------------------------------------------------------------------------------------------

/// `#[prefork(...)]` on the struct or enum.
#[derive(Default)]
struct ContainerAttrs {
    args: Option<ExprPath>,
    runtime_options: Option<ExprPath>,
}

/// The value of `args = ...` / `runtime_options = ...`: a path, or a string holding one.
fn parse_fn_path(meta: &ParseNestedMeta, key: &str) -> syn::Result<ExprPath> {
    if !meta.input.peek(Token![=]) {
        return Err(meta.error(format_args!(
            "`{key}` needs a function: #[prefork({key} = path::to::function)]"
        )));
    }
    let value = meta.value()?;
    if value.peek(LitStr) {
        let lit: LitStr = value.parse()?;
        lit.parse()
    } else {
        value.parse()
    }
}

fn parse_container_attrs(attrs: &[Attribute], errors: &mut Errors) -> ContainerAttrs {
    let mut out = ContainerAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("prefork")) {
        let result = attr.parse_nested_meta(|meta| {
            let key = path_name(&meta.path);
            let slot = match key.as_str() {
                "args" => &mut out.args,
                "runtime_options" => &mut out.runtime_options,
                _ => {
                    errors.push(Error::new_spanned(
                        &meta.path,
                        format!(
                            "unknown prefork attribute `{key}`; expected one of: {CONTAINER_KEYS}"
                        ),
                    ));
                    return skip_value(&meta);
                }
            };
            let path = parse_fn_path(&meta, &key)?;
            if slot.is_some() {
                errors.push(Error::new_spanned(
                    &meta.path,
                    format!("duplicate #[prefork({key})]"),
                ));
            } else {
                *slot = Some(path);
            }
            Ok(())
        });
        if let Err(err) = result {
            errors.push(err);
        }
    }
    out
}

/// `arg` or `arg = "name"` on a field.
struct ArgAttr {
    key: Span,
    name: Option<LitStr>,
}

/// `#[prefork(...)]` on a field. Each flag keeps the span of its key, for messages.
#[derive(Default)]
struct FieldAttrs {
    id: Option<Span>,
    arg: Option<ArgAttr>,
    fd: Option<Span>,
    threads: Option<Span>,
    cpus: Option<Span>,
    nice: Option<Span>,
}

fn parse_field_attrs(attrs: &[Attribute], errors: &mut Errors) -> FieldAttrs {
    let mut out = FieldAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("prefork")) {
        let result = attr.parse_nested_meta(|meta| {
            let key = path_name(&meta.path);
            let span = meta.path.span();
            if key == "arg" {
                let name = if meta.input.peek(Token![=]) {
                    let lit: LitStr = meta.value()?.parse()?;
                    if lit.value().is_empty() {
                        errors.push(Error::new_spanned(&lit, "the arg name must not be empty"));
                    }
                    Some(lit)
                } else {
                    None
                };
                if out.arg.is_some() {
                    errors.push(Error::new(span, "`arg` is given twice for this field"));
                } else {
                    out.arg = Some(ArgAttr { key: span, name });
                }
                return Ok(());
            }
            let slot = match key.as_str() {
                "id" => &mut out.id,
                "fd" => &mut out.fd,
                "threads" => &mut out.threads,
                "cpus" => &mut out.cpus,
                "nice" => &mut out.nice,
                _ => {
                    errors.push(Error::new(
                        span,
                        format!("unknown prefork attribute `{key}`; expected one of: {FIELD_KEYS}"),
                    ));
                    return skip_value(&meta);
                }
            };
            if meta.input.peek(Token![=]) || meta.input.peek(syn::token::Paren) {
                errors.push(Error::new(span, format!("`{key}` takes no value")));
                skip_value(&meta)?;
            }
            if slot.is_some() {
                errors.push(Error::new(
                    span,
                    format!("`{key}` is given twice for this field"),
                ));
            } else {
                *slot = Some(span);
            }
            Ok(())
        });
        if let Err(err) = result {
            errors.push(err);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Analysis
// ---------------------------------------------------------------------------------------------

/// A field that some generated method reads.
#[derive(Clone)]
struct FieldRef {
    /// `name` or `0`, as written in a pattern.
    member: Member,
    /// The local it is bound to in the generated pattern.
    binding: Ident,
    ty: Type,
    /// The field as messages name it.
    display: String,
}

impl FieldRef {
    /// A span that points at the field's type but resolves like the rest of the generated
    /// code (so type errors land on the field, and lints see macro-generated code).
    fn span(&self) -> Span {
        Span::call_site().located_at(self.ty.span())
    }
}

/// What the derive needs to know about one struct or one variant.
struct Shape {
    /// `Self` or `Self::Variant`.
    path: TokenStream2,
    id: Option<FieldRef>,
    args: Vec<(String, FieldRef)>,
    threads: Option<FieldRef>,
    cpus: Option<FieldRef>,
    nice: Option<FieldRef>,
    fds: Vec<FieldRef>,
}

/// The last path segment of a type, looking through parentheses and invisible groups.
fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
    match ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last(),
        Type::Group(g) => last_segment(&g.elem),
        Type::Paren(p) => last_segment(&p.elem),
        _ => None,
    }
}

/// `InheritedListener`, `Option<InheritedListener>` or `Vec<InheritedListener>` (any path
/// prefix): a field visited for fds without `#[prefork(fd)]`.
fn is_listener_type(ty: &Type) -> bool {
    let Some(seg) = last_segment(ty) else {
        return false;
    };
    if seg.ident == "InheritedListener" {
        return matches!(seg.arguments, PathArguments::None);
    }
    if seg.ident != "Option" && seg.ident != "Vec" {
        return false;
    }
    let PathArguments::AngleBracketed(args) = &seg.arguments else {
        return false;
    };
    if args.args.len() != 1 {
        return false;
    }
    match args.args.first() {
        Some(GenericArgument::Type(inner)) => last_segment(inner)
            .is_some_and(|s| s.ident == "InheritedListener" && s.arguments.is_none()),
        _ => false,
    }
}

/// Records `field` in a slot that at most one field may take (`threads`, `cpus`, `nice`).
fn set_once(
    slot: &mut Option<FieldRef>,
    field: &FieldRef,
    key_span: Option<Span>,
    key: &str,
    errors: &mut Errors,
) {
    let Some(span) = key_span else { return };
    match slot {
        Some(first) => errors.push(Error::new(
            span,
            format!(
                "duplicate #[prefork({key})]: it is already `{}`",
                first.display
            ),
        )),
        None => *slot = Some(field.clone()),
    }
}

/// Reads the attributes of one struct's or variant's fields. `owner` is the type or variant
/// name, where a missing id is reported.
fn analyze_fields(
    path: TokenStream2,
    owner: &Ident,
    in_variant: bool,
    fields: &Fields,
    errors: &mut Errors,
) -> Shape {
    let mut shape = Shape {
        path,
        id: None,
        args: Vec::new(),
        threads: None,
        cpus: None,
        nice: None,
        fds: Vec::new(),
    };
    for (index, field) in fields.iter().enumerate() {
        let attrs = parse_field_attrs(&field.attrs, errors);
        let (member, display) = match &field.ident {
            Some(ident) => (Member::Named(ident.clone()), ident.unraw().to_string()),
            None => {
                let index = u32::try_from(index).unwrap_or(u32::MAX);
                let member = Member::Unnamed(Index {
                    index,
                    span: Span::call_site(),
                });
                (member, index.to_string())
            }
        };
        let field_ref = FieldRef {
            member,
            // Located at the field's type, so that type errors in the generated code point
            // there; it still resolves like the rest of the generated code.
            binding: format_ident!(
                "__prefork_field_{}",
                index,
                span = Span::call_site().located_at(field.ty.span())
            ),
            ty: field.ty.clone(),
            display,
        };

        if let Some(span) = attrs.id {
            match &shape.id {
                Some(first) => errors.push(Error::new(
                    span,
                    format!(
                        "duplicate #[prefork(id)]: the id is already `{}`",
                        first.display
                    ),
                )),
                None => shape.id = Some(field_ref.clone()),
            }
        }
        if let Some(arg) = &attrs.arg {
            let name = match (&arg.name, &field.ident) {
                (Some(lit), _) => Some(lit.value()),
                (None, Some(ident)) => Some(ident.unraw().to_string()),
                (None, None) => {
                    errors.push(Error::new(
                        arg.key,
                        "a tuple field needs #[prefork(arg = \"name\")]",
                    ));
                    None
                }
            };
            if let Some(name) = name {
                shape.args.push((name, field_ref.clone()));
            }
        }
        set_once(
            &mut shape.threads,
            &field_ref,
            attrs.threads,
            "threads",
            errors,
        );
        set_once(&mut shape.cpus, &field_ref, attrs.cpus, "cpus", errors);
        set_once(&mut shape.nice, &field_ref, attrs.nice, "nice", errors);
        if attrs.fd.is_some() || is_listener_type(&field.ty) {
            shape.fds.push(field_ref);
        }
    }
    if shape.id.is_none() {
        let msg = if in_variant {
            "#[derive(WorkerContext)] needs exactly one field marked #[prefork(id)] in every variant"
        } else {
            "#[derive(WorkerContext)] needs exactly one field marked #[prefork(id)]"
        };
        errors.push(Error::new_spanned(owner, msg));
    }
    shape
}

// ---------------------------------------------------------------------------------------------
// Generation
// ---------------------------------------------------------------------------------------------

/// Dispatches `self` to per-shape code. `body` gives, for one shape, the fields it reads and
/// the code that uses their bindings (references to the fields); `None` when the shape has
/// nothing to do for this method.
fn dispatch(
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
        let path = &shape.path;
        let members = fields.iter().map(|f| &f.member);
        let bindings = fields.iter().map(|f| &f.binding);
        let pattern = quote!(#path { #(#members: #bindings,)* .. });
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

fn gen_id(shapes: &[Shape], is_enum: bool) -> TokenStream2 {
    let Some(id_ty) = shapes.first().and_then(|s| s.id.as_ref()).map(|f| &f.ty) else {
        return TokenStream2::new();
    };
    let body = dispatch(shapes, is_enum, |shape| {
        let field = shape.id.as_ref()?;
        let binding = &field.binding;
        let code = quote_spanned!(field.span()=> ::core::clone::Clone::clone(#binding));
        Some((vec![field.clone()], code))
    });
    quote! {
        type Id = #id_ty;

        fn id(&self) -> Self::Id {
            #body
        }
    }
}

fn gen_args(shapes: &[Shape], is_enum: bool, container: &ContainerAttrs) -> TokenStream2 {
    let fields = dispatch(shapes, is_enum, |shape| {
        if shape.args.is_empty() {
            return None;
        }
        let pushes = shape.args.iter().map(|(name, field)| {
            let format = LitStr::new(
                &format!("{}={{}}", name.replace('{', "{{").replace('}', "}}")),
                Span::call_site(),
            );
            let binding = &field.binding;
            quote_spanned! {field.span()=>
                __prefork_args.push(::std::format!(#format, #binding));
            }
        });
        let code = quote!(#(#pushes)*);
        Some((shape.args.iter().map(|(_, f)| f.clone()).collect(), code))
    });
    let extra = container.args.as_ref().map(|path| {
        quote_spanned! {Span::call_site().located_at(path.span())=>
            ::core::iter::Extend::extend(&mut __prefork_args, #path(self));
        }
    });
    if fields.is_none() && extra.is_none() {
        return TokenStream2::new();
    }
    quote! {
        fn args(&self) -> ::std::vec::Vec<::std::string::String> {
            let mut __prefork_args: ::std::vec::Vec<::std::string::String> =
                ::std::vec::Vec::new();
            #fields
            #extra
            __prefork_args
        }
    }
}

fn gen_runtime_options(
    shapes: &[Shape],
    is_enum: bool,
    container: &ContainerAttrs,
) -> TokenStream2 {
    let fields = dispatch(shapes, is_enum, |shape| {
        let mut used = Vec::new();
        let mut code = TokenStream2::new();
        if let Some(field) = &shape.threads {
            let b = &field.binding;
            code.extend(quote_spanned! {field.span()=>
                __prefork_options.threads = ::core::option::Option::Some((*#b) as usize);
            });
            used.push(field.clone());
        }
        if let Some(field) = &shape.cpus {
            let b = &field.binding;
            code.extend(quote_spanned! {field.span()=>
                __prefork_options.cpu_affinity = ::core::option::Option::Some(
                    ::core::iter::Iterator::collect(::core::iter::Iterator::copied(
                        ::core::iter::IntoIterator::into_iter(#b),
                    )),
                );
            });
            used.push(field.clone());
        }
        if let Some(field) = &shape.nice {
            let b = &field.binding;
            code.extend(quote_spanned! {field.span()=>
                __prefork_options.nice = ::core::option::Option::Some((*#b) as i32);
            });
            used.push(field.clone());
        }
        (!used.is_empty()).then_some((used, code))
    });
    let extra = container.runtime_options.as_ref().map(|path| {
        quote_spanned! {Span::call_site().located_at(path.span())=>
            __prefork_options = ::prefork_core::RuntimeOptions::merge(__prefork_options, #path(self));
        }
    });
    if fields.is_none() && extra.is_none() {
        return TokenStream2::new();
    }
    quote! {
        fn runtime_options(&self) -> ::prefork_core::RuntimeOptions {
            let mut __prefork_options = ::prefork_core::RuntimeOptions::default();
            #fields
            #extra
            __prefork_options
        }
    }
}

fn gen_visit_fds(shapes: &[Shape], is_enum: bool) -> TokenStream2 {
    let body = dispatch(shapes, is_enum, |shape| {
        if shape.fds.is_empty() {
            return None;
        }
        let visits = shape.fds.iter().map(|field| {
            let b = &field.binding;
            quote_spanned! {field.span()=>
                ::prefork_core::VisitFds::visit_fds(#b, __prefork_visit);
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

fn expand(input: &DeriveInput) -> syn::Result<TokenStream2> {
    let mut errors = Errors::default();
    let container = parse_container_attrs(&input.attrs, &mut errors);
    let name = &input.ident;

    let (shapes, is_enum) = match &input.data {
        Data::Struct(data) => {
            if matches!(data.fields, Fields::Unit) {
                errors.push(Error::new_spanned(
                    name,
                    "#[derive(WorkerContext)] cannot be derived for a unit struct: \
                     it needs a field marked #[prefork(id)]",
                ));
                (Vec::new(), false)
            } else {
                let shape = analyze_fields(quote!(Self), name, false, &data.fields, &mut errors);
                (vec![shape], false)
            }
        }
        Data::Enum(data) => {
            if data.variants.is_empty() {
                errors.push(Error::new_spanned(
                    name,
                    "#[derive(WorkerContext)] cannot be derived for an enum without variants",
                ));
            }
            let mut shapes = Vec::new();
            for variant in &data.variants {
                for attr in variant
                    .attrs
                    .iter()
                    .filter(|a| a.path().is_ident("prefork"))
                {
                    errors.push(Error::new_spanned(
                        attr,
                        "#[prefork(...)] goes on the variant's fields or on the enum, \
                         not on a variant",
                    ));
                }
                let ident = &variant.ident;
                if matches!(variant.fields, Fields::Unit) {
                    errors.push(Error::new_spanned(
                        ident,
                        format!(
                            "unit variant `{ident}` is not supported by #[derive(WorkerContext)]: \
                             every variant needs a field marked #[prefork(id)]"
                        ),
                    ));
                    continue;
                }
                shapes.push(analyze_fields(
                    quote!(Self::#ident),
                    ident,
                    true,
                    &variant.fields,
                    &mut errors,
                ));
            }
            (shapes, true)
        }
        Data::Union(data) => {
            let union_token = &data.union_token;
            errors.push(Error::new_spanned(
                quote!(#union_token #name),
                "#[derive(WorkerContext)] cannot be derived for a union; use a struct or an enum",
            ));
            (Vec::new(), false)
        }
    };
    errors.finish()?;

    let id = gen_id(&shapes, is_enum);
    let args = gen_args(&shapes, is_enum, &container);
    let runtime_options = gen_runtime_options(&shapes, is_enum, &container);
    let visit_fds = gen_visit_fds(&shapes, is_enum);
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    Ok(quote! {
        #[automatically_derived]
        impl #impl_generics ::prefork_core::WorkerContext for #name #ty_generics #where_clause {
            #id
            #args
            #runtime_options
            #visit_fds
        }
    })
}
