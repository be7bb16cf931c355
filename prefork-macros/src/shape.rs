//! What the derive needs to know about the type: one [`Shape`] for a struct, one per variant
//! for an enum, each listing the fields that the generated methods read.
//!
//! The rules that span fields are checked here: exactly one `id` per shape, at most one field
//! each for `threads`, `cpus` and `nice`, a name for every `arg`, and no unit struct, unit
//! variant, union or enum without variants. As in `attr`, every broken rule is pushed to
//! [`Errors`] and the analysis goes on.
//!
//! A derive sees tokens, not types: a field is taken for an inherited listener by the last
//! segment of its type's path (`InheritedListener`, `Option<..>` or `Vec<..>` of it), whatever
//! path leads there.

use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{
    Data, DeriveInput, Error, Fields, GenericArgument, Ident, Index, Member, PathArguments, Type,
};

use crate::Errors;
use crate::attr::parse_field_attrs;

/// A field that some generated method reads.
#[derive(Clone)]
pub(crate) struct FieldRef {
    /// `name` or `0`, as written in a pattern.
    pub(crate) member: Member,
    /// The local it is bound to in the generated pattern.
    pub(crate) binding: Ident,
    pub(crate) ty: Type,
    /// The field as messages name it.
    pub(crate) display_name: String,
}

impl FieldRef {
    /// A span that points at the field's type but resolves like the rest of the generated
    /// code (so type errors land on the field, and lints see macro-generated code).
    pub(crate) fn code_span(&self) -> Span {
        Span::call_site().located_at(self.ty.span())
    }
}

/// What the derive needs to know about one struct or one variant.
pub(crate) struct Shape {
    /// `Self` or `Self::Variant`: what the generated patterns destructure.
    pub(crate) self_path: TokenStream2,
    pub(crate) id: Option<FieldRef>,
    /// The `arg` fields in declaration order, each with the name it is shown under.
    pub(crate) args: Vec<(String, FieldRef)>,
    pub(crate) threads: Option<FieldRef>,
    pub(crate) cpus: Option<FieldRef>,
    pub(crate) nice: Option<FieldRef>,
    /// The fields visited for inherited fds, in declaration order.
    pub(crate) fds: Vec<FieldRef>,
}

/// The shapes of `input` (one for a struct, one per variant for an enum) and whether it is an
/// enum. What cannot be derived for (a unit struct or variant, a union) gets an error and no
/// shape.
pub(crate) fn analyze(input: &DeriveInput, errors: &mut Errors) -> (Vec<Shape>, bool) {
    let type_name = &input.ident;
    match &input.data {
        Data::Struct(data) => {
            if matches!(data.fields, Fields::Unit) {
                errors.push(Error::new_spanned(
                    type_name,
                    "#[derive(WorkerContext)] cannot be derived for a unit struct: \
                     it needs a field marked #[prefork(id)]",
                ));
                (Vec::new(), false)
            } else {
                let shape = analyze_fields(quote!(Self), type_name, false, &data.fields, errors);
                (vec![shape], false)
            }
        }
        Data::Enum(data) => {
            if data.variants.is_empty() {
                errors.push(Error::new_spanned(
                    type_name,
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
                    errors,
                ));
            }
            (shapes, true)
        }
        Data::Union(data) => {
            let union_token = &data.union_token;
            errors.push(Error::new_spanned(
                quote!(#union_token #type_name),
                "#[derive(WorkerContext)] cannot be derived for a union; use a struct or an enum",
            ));
            (Vec::new(), false)
        }
    }
}

/// Reads the attributes of one struct's or variant's fields. `owner` is the type or variant
/// name, where a missing id is reported.
fn analyze_fields(
    self_path: TokenStream2,
    owner: &Ident,
    in_variant: bool,
    fields: &Fields,
    errors: &mut Errors,
) -> Shape {
    let mut shape = Shape {
        self_path,
        id: None,
        args: Vec::new(),
        threads: None,
        cpus: None,
        nice: None,
        fds: Vec::new(),
    };
    for (index, field) in fields.iter().enumerate() {
        let attrs = parse_field_attrs(&field.attrs, errors);
        let (member, display_name) = match &field.ident {
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
            display_name,
        };

        if let Some(span) = attrs.id {
            match &shape.id {
                Some(first) => errors.push(Error::new(
                    span,
                    format!(
                        "duplicate #[prefork(id)]: the id is already `{}`",
                        first.display_name
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
                        arg.key_span,
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
                first.display_name
            ),
        )),
        None => *slot = Some(field.clone()),
    }
}

/// `InheritedListener`, `Option<InheritedListener>` or `Vec<InheritedListener>` (any path
/// prefix): a field visited for fds without `#[prefork(fd)]`.
fn is_listener_type(ty: &Type) -> bool {
    let Some(segment) = last_segment(ty) else {
        return false;
    };
    if segment.ident == "InheritedListener" {
        return matches!(segment.arguments, PathArguments::None);
    }
    if segment.ident != "Option" && segment.ident != "Vec" {
        return false;
    }
    let PathArguments::AngleBracketed(generic_args) = &segment.arguments else {
        return false;
    };
    if generic_args.args.len() != 1 {
        return false;
    }
    match generic_args.args.first() {
        Some(GenericArgument::Type(inner)) => last_segment(inner)
            .is_some_and(|s| s.ident == "InheritedListener" && s.arguments.is_none()),
        _ => false,
    }
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
