//! JSON encoding of plain Elixir data (maps with atom or string keys, lists, strings,
//! numbers, booleans, nil, other atoms as strings). OTP 25 has no JSON module and hex is
//! out of reach, so the CLI's `--json` output goes through serde_json here.

use rustler::types::map::MapIterator;
use rustler::{Env, ListIterator, Term, TermType};
use serde_json::{Map, Number, Value};

const MAX_DEPTH: usize = 256;

#[rustler::nif(schedule = "DirtyCpu")]
fn json_encode<'a>(env: Env<'a>, term: Term<'a>, pretty: bool) -> Term<'a> {
    use rustler::Encoder;
    let encoded = to_value(term, 0).and_then(|v| {
        if pretty {
            serde_json::to_string_pretty(&v)
        } else {
            serde_json::to_string(&v)
        }
        .map_err(|e| e.to_string())
    });
    match encoded {
        Ok(json) => (rustler::types::atom::ok(), json).encode(env),
        Err(why) => (
            rustler::types::atom::error(),
            super::error_tuple(env, "invalid_json", &why),
        )
            .encode(env),
    }
}

fn to_value(term: Term, depth: usize) -> Result<Value, String> {
    if depth > MAX_DEPTH {
        return Err(format!("nested deeper than {MAX_DEPTH} levels"));
    }
    Ok(match term.get_type() {
        TermType::Atom => match term
            .atom_to_string()
            .map_err(|_| "unreadable atom")?
            .as_str()
        {
            "nil" => Value::Null,
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            other => Value::String(other.to_string()),
        },
        TermType::Binary => Value::String(
            term.decode::<String>()
                .map_err(|_| "a binary that is not UTF-8 text cannot be JSON".to_string())?,
        ),
        TermType::Integer => match term.decode::<i64>() {
            Ok(i) => Value::Number(i.into()),
            Err(_) => Value::Number(
                term.decode::<u64>()
                    .map_err(|_| "an integer beyond 64 bits cannot be JSON".to_string())?
                    .into(),
            ),
        },
        TermType::Float => Value::Number(
            Number::from_f64(term.decode::<f64>().map_err(|_| "unreadable float")?)
                .ok_or("a float that is not finite cannot be JSON")?,
        ),
        TermType::List => Value::Array(
            // Improper lists are refused before iterating: the iterator would panic at the tail.
            term.list_length()
                .and_then(|_| term.decode::<ListIterator>())
                .map_err(|_| "an improper list cannot be JSON".to_string())?
                .map(|t| to_value(t, depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        TermType::Map => {
            let mut map = Map::new();
            for (k, v) in MapIterator::new(term).ok_or("unreadable map")? {
                let key = match k.get_type() {
                    TermType::Atom => k.atom_to_string().map_err(|_| "unreadable atom")?,
                    TermType::Binary => k
                        .decode::<String>()
                        .map_err(|_| "a map key that is not UTF-8")?,
                    _ => return Err("map keys must be atoms or strings to become JSON".into()),
                };
                if key == "__struct__" {
                    continue;
                }
                map.insert(key, to_value(v, depth + 1)?);
            }
            Value::Object(map)
        }
        other => return Err(format!("a {other:?} cannot be JSON")),
    })
}

/// Decodes JSON text into plain Elixir data: objects become maps with string keys.
#[rustler::nif(schedule = "DirtyCpu")]
fn json_decode<'a>(env: Env<'a>, text: rustler::Binary<'a>) -> Term<'a> {
    use rustler::Encoder;
    match serde_json::from_slice::<Value>(text.as_slice()) {
        Ok(value) => (rustler::types::atom::ok(), from_value(env, &value)).encode(env),
        Err(e) => (
            rustler::types::atom::error(),
            super::error_tuple(env, "invalid_json", &format!("invalid JSON: {e}")),
        )
            .encode(env),
    }
}

fn from_value<'a>(env: Env<'a>, value: &Value) -> Term<'a> {
    use rustler::Encoder;
    match value {
        Value::Null => rustler::types::atom::nil().encode(env),
        Value::Bool(b) => b.encode(env),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => i.encode(env),
            (_, Some(u), _) => u.encode(env),
            (_, _, Some(f)) => f.encode(env),
            _ => rustler::types::atom::nil().encode(env),
        },
        Value::String(s) => s.encode(env),
        Value::Array(items) => items
            .iter()
            .map(|v| from_value(env, v))
            .collect::<Vec<_>>()
            .encode(env),
        Value::Object(map) => {
            let (keys, values): (Vec<Term>, Vec<Term>) = map
                .iter()
                .map(|(k, v)| (k.encode(env), from_value(env, v)))
                .unzip();
            Term::map_from_term_arrays(env, &keys, &values)
                .unwrap_or_else(|_| rustler::types::atom::nil().encode(env))
        }
    }
}
