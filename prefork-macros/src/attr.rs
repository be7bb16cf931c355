//! `#[prefork(...)]` attributes, read into plain data: [`ContainerAttrs`] for the struct or
//! enum, [`FieldAttrs`] for each field.
//!
//! Parsing never stops at a mistake. An unknown key, a value where none is taken or a key
//! given twice is pushed to [`Errors`] and parsing goes on with the next key (a rejected
//! key's value is skipped first), so one build shows every mistake. Only a value that cannot
//! be read (or a missing `= function`) ends the attribute it is in.
//!
//! Each flag keeps the span of its key, so that the rules checked later (in `shape`) point at
//! the key the user wrote.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::spanned::Spanned;
use syn::{Attribute, Error, ExprPath, LitStr, Path, Token};

use crate::Errors;

/// The keys a field attribute takes, for messages.
const FIELD_KEYS: &str = "id, arg, fd, threads, cpus, nice";
/// The keys a container attribute takes, for messages.
const CONTAINER_KEYS: &str = "args, runtime_options";

/// `#[prefork(...)]` on the struct or enum.
#[derive(Default)]
pub(crate) struct ContainerAttrs {
    pub(crate) args: Option<ExprPath>,
    pub(crate) runtime_options: Option<ExprPath>,
}

/// Reads every `#[prefork(...)]` on the struct or enum.
pub(crate) fn parse_container_attrs(attrs: &[Attribute], errors: &mut Errors) -> ContainerAttrs {
    let mut parsed = ContainerAttrs::default();
    for attr in attrs.iter().filter(|a| a.path().is_ident("prefork")) {
        let result = attr.parse_nested_meta(|meta| {
            let key = path_name(&meta.path);
            let slot = match key.as_str() {
                "args" => &mut parsed.args,
                "runtime_options" => &mut parsed.runtime_options,
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
    parsed
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

/// `arg` or `arg = "name"` on a field.
pub(crate) struct ArgAttr {
    /// The span of the `arg` key.
    pub(crate) key_span: Span,
    pub(crate) name: Option<LitStr>,
}

/// `#[prefork(...)]` on a field. Each flag keeps the span of its key, for messages.
#[derive(Default)]
pub(crate) struct FieldAttrs {
    pub(crate) id: Option<Span>,
    pub(crate) arg: Option<ArgAttr>,
    pub(crate) fd: Option<Span>,
    pub(crate) threads: Option<Span>,
    pub(crate) cpus: Option<Span>,
    pub(crate) nice: Option<Span>,
}

/// Reads every `#[prefork(...)]` on one field.
pub(crate) fn parse_field_attrs(attrs: &[Attribute], errors: &mut Errors) -> FieldAttrs {
    let mut parsed = FieldAttrs::default();
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
                if parsed.arg.is_some() {
                    errors.push(Error::new(span, "`arg` is given twice for this field"));
                } else {
                    parsed.arg = Some(ArgAttr {
                        key_span: span,
                        name,
                    });
                }
                return Ok(());
            }
            let slot = match key.as_str() {
                "id" => &mut parsed.id,
                "fd" => &mut parsed.fd,
                "threads" => &mut parsed.threads,
                "cpus" => &mut parsed.cpus,
                "nice" => &mut parsed.nice,
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
    parsed
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
