//! Small helpers over `scale_value::Value` for the dynamic API: building call arguments from
//! the runtime's metadata (so an argument a runtime dropped, like `register_network`'s `mechid`,
//! is simply not sent) and reading bytes and fields out of decoded values.

use apiary_chain::ChainError;
pub use subxt::ext::scale_value::Value;
use subxt::ext::scale_value::{Composite, Primitive, ValueDef};
use subxt::Metadata;

/// Builds the named argument list of `pallet.call` from `args`, in the runtime's order.
///
/// Arguments the runtime does not take are dropped; an argument the runtime needs that is not
/// in `args` is an error naming it (a runtime apiary does not support).
pub fn call_args(
    md: &Metadata,
    pallet: &str,
    call: &str,
    args: &[(&str, Value)],
) -> Result<Composite<()>, ChainError> {
    let p = md
        .pallet_by_name(pallet)
        .ok_or_else(|| ChainError::MissingCall(format!("pallet {pallet}")))?;
    let v = p
        .call_variant_by_name(call)
        .ok_or_else(|| ChainError::MissingCall(format!("call {pallet}.{call}")))?;
    let mut out = Vec::with_capacity(v.fields.len());
    for f in &v.fields {
        let name = f.name.as_deref().unwrap_or("");
        match args.iter().find(|(n, _)| *n == name) {
            Some((_, val)) => out.push((name.to_string(), val.clone())),
            None => {
                return Err(ChainError::MissingCall(format!(
                    "call {pallet}.{call} in the shape apiary knows (it needs an argument `{name}`)"
                )))
            }
        }
    }
    Ok(Composite::named(out))
}

/// A boolean argument.
pub fn bool_value(b: bool) -> Value {
    Value::bool(b)
}

/// Whether the runtime has a storage entry.
pub fn has_storage(md: &Metadata, pallet: &str, entry: &str) -> bool {
    md.pallet_by_name(pallet)
        .and_then(|p| p.storage())
        .and_then(|s| s.entry_by_name(entry))
        .is_some()
}

/// Whether the runtime has a call.
pub fn has_call(md: &Metadata, pallet: &str, call: &str) -> bool {
    md.pallet_by_name(pallet)
        .and_then(|p| p.call_variant_by_name(call))
        .is_some()
}

fn as_u8<T>(v: &Value<T>) -> Option<u8> {
    match &v.value {
        ValueDef::Primitive(Primitive::U128(n)) => u8::try_from(*n).ok(),
        _ => None,
    }
}

/// The bytes of a `[u8; N]`, `Vec<u8>` or a newtype around one.
pub fn bytes_of<T>(v: &Value<T>) -> Option<Vec<u8>> {
    match &v.value {
        ValueDef::Composite(c) => {
            let vals: Vec<&Value<T>> = c.values().collect();
            if let Some(bytes) = vals.iter().map(|x| as_u8(x)).collect::<Option<Vec<u8>>>() {
                return Some(bytes);
            }
            if vals.len() == 1 {
                return bytes_of(vals[0]);
            }
            None
        }
        _ => None,
    }
}

/// A named field of a composite (looking through single-field newtypes).
pub fn field<'a, T>(v: &'a Value<T>, name: &str) -> Option<&'a Value<T>> {
    match &v.value {
        ValueDef::Composite(Composite::Named(fs)) => fs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
            .or_else(|| {
                if fs.len() == 1 {
                    field(&fs[0].1, name)
                } else {
                    None
                }
            }),
        ValueDef::Composite(Composite::Unnamed(vs)) if vs.len() == 1 => field(&vs[0], name),
        _ => None,
    }
}

/// The elements of a sequence (looking through single-field newtypes such as `BoundedVec`).
pub fn elements<T>(v: &Value<T>) -> Vec<&Value<T>> {
    match &v.value {
        ValueDef::Composite(c) => {
            let vals: Vec<&Value<T>> = c.values().collect();
            if vals.len() == 1 && matches!(vals[0].value, ValueDef::Composite(_)) {
                return elements(vals[0]);
            }
            vals
        }
        _ => Vec::new(),
    }
}

/// An unsigned integer (looking through newtypes).
pub fn uint<T>(v: &Value<T>) -> Option<u128> {
    match &v.value {
        ValueDef::Primitive(Primitive::U128(n)) => Some(*n),
        ValueDef::Composite(c) => {
            let vals: Vec<&Value<T>> = c.values().collect();
            if vals.len() == 1 {
                uint(vals[0])
            } else {
                None
            }
        }
        _ => None,
    }
}

/// `Commitments.Data` values (`None | Raw0..Raw128 | hashes`): concatenated raw bytes.
pub fn commitment_bytes<T>(registration: &Value<T>) -> Option<Vec<u8>> {
    let info = field(registration, "info")?;
    let fields = field(info, "fields")?;
    let mut out = Vec::new();
    for d in elements(fields) {
        if let ValueDef::Variant(var) = &d.value {
            if var.name.starts_with("Raw") {
                let inner: Vec<&Value<T>> = var.values.values().collect();
                if let Some(x) = inner.first() {
                    out.extend(bytes_of(x)?);
                }
            }
        }
    }
    Some(out)
}

/// The block a `Commitments.CommitmentOf` registration was made at (its `block` field).
pub fn commitment_block<T>(registration: &Value<T>) -> Option<u64> {
    uint(field(registration, "block")?).and_then(|b| u64::try_from(b).ok())
}

/// The `info` argument of `Commitments.set_commitment`: `data` split into `Raw` fields of at
/// most `chunk` bytes.
pub fn commitment_info(data: &[u8], chunk: usize) -> Value {
    let fields: Vec<Value> = data
        .chunks(chunk.max(1))
        .map(|c| Value::unnamed_variant(format!("Raw{}", c.len()), [Value::from_bytes(c)]))
        .collect();
    Value::named_composite([("fields", Value::unnamed_composite(fields))])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commitment_roundtrip_through_values() {
        let data: Vec<u8> = (0..200u8).collect();
        let info = commitment_info(&data, 128);
        let reg = Value::named_composite([
            ("deposit", Value::u128(0)),
            ("block", Value::u128(5)),
            ("info", info),
        ]);
        assert_eq!(commitment_bytes(&reg).expect("bytes"), data);
        let wrapped = Value::unnamed_composite([Value::from_bytes([1u8, 2, 3])]);
        assert_eq!(bytes_of(&wrapped), Some(vec![1, 2, 3]));
        assert_eq!(uint(&Value::unnamed_composite([Value::u128(7)])), Some(7));
    }
}
