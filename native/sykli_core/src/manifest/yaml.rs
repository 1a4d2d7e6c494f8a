//! A YAML emitter for JSON values, kubectl-ready: block style, strings double-quoted
//! (YAML's double-quoted scalars accept JSON's escapes), multi-line strings as literal
//! blocks so scripts stay readable. YAML is a superset of JSON, so nothing is lost.

use serde_json::Value;

pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    match value {
        Value::Object(map) if !map.is_empty() => emit_map(map, 0, &mut out),
        Value::Array(items) if !items.is_empty() => emit_seq(items, 0, &mut out),
        scalar => {
            out.push_str(&scalar_text(scalar, 0));
            out.push('\n');
        }
    }
    out
}

/// Several documents, as `kubectl apply -f` reads them.
pub fn to_multi_doc(values: &[Value]) -> String {
    values
        .iter()
        .map(|v| format!("---\n{}", to_yaml(v)))
        .collect()
}

fn emit_map(map: &serde_json::Map<String, Value>, indent: usize, out: &mut String) {
    for (i, (key, value)) in map.iter().enumerate() {
        // The first key of a sequence item goes on the dash's line, already indented.
        if !(i == 0 && out.ends_with("- ")) {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str(&key_text(key));
        out.push(':');
        emit_value(value, indent, out);
    }
}

fn emit_seq(items: &[Value], indent: usize, out: &mut String) {
    for item in items {
        out.push_str(&" ".repeat(indent));
        out.push_str("- ");
        match item {
            Value::Object(map) if !map.is_empty() => emit_map(map, indent + 2, out),
            Value::Array(inner) if !inner.is_empty() => {
                out.push('\n');
                emit_seq(inner, indent + 2, out);
            }
            scalar => {
                out.push_str(&scalar_text(scalar, indent + 2));
                out.push('\n');
            }
        }
    }
}

/// After `key:` — nested blocks on the next lines, scalars on the same line.
fn emit_value(value: &Value, indent: usize, out: &mut String) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            emit_map(map, indent + 2, out);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            emit_seq(items, indent, out);
        }
        scalar => {
            out.push(' ');
            out.push_str(&scalar_text(scalar, indent + 2));
            out.push('\n');
        }
    }
}

fn key_text(key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
        && key.as_bytes()[0].is_ascii_alphabetic();
    if plain {
        key.to_string()
    } else {
        quoted(key)
    }
}

fn scalar_text(value: &Value, indent: usize) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) if literal_block_ok(s) => literal_block(s, indent),
        Value::String(s) => quoted(s),
        Value::Array(_) => "[]".into(),
        Value::Object(_) => "{}".into(),
    }
}

/// Characters YAML 1.1 lets stand raw in a scalar without reading them as something else:
/// its printable set, less the Unicode line breaks (U+0085, U+2028, U+2029).
fn printable(c: char) -> bool {
    (matches!(c, '\t' | '\n' | '\r' | ' '..='~' | '\u{a0}'..='\u{d7ff}' | '\u{e000}'..='\u{fffd}')
        || c >= '\u{10000}')
        && !matches!(c, '\u{2028}' | '\u{2029}')
}

/// A double-quoted scalar: JSON-like escapes, plus escapes for what YAML cannot hold raw.
fn quoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if printable(c) => out.push(c),
            c if (c as u32) <= 0xff => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{:04x}", c as u32)),
        }
    }
    out.push('"');
    out
}

/// Literal blocks keep text byte for byte only when it has no characters YAML folds or
/// rejects there: no tabs or carriage returns, no trailing spaces on lines, no other
/// control characters.
fn literal_block_ok(s: &str) -> bool {
    s.contains('\n')
        && s.chars()
            .all(|c| c == '\n' || (printable(c) && !c.is_control()))
        && s.lines().all(|l| !l.ends_with(' '))
        && !s.starts_with('\n')
        && !s.starts_with(' ')
}

fn literal_block(s: &str, indent: usize) -> String {
    let body = s.trim_end_matches('\n');
    let trailing = s.len() - body.len();
    let chomp = match trailing {
        0 => "-",
        1 => "",
        _ => "+",
    };
    let pad = " ".repeat(indent);
    let mut out = format!("|{chomp}\n");
    for line in body.split('\n') {
        if !line.is_empty() {
            out.push_str(&pad);
            out.push_str(line);
        }
        out.push('\n');
    }
    for _ in 1..trailing {
        out.push('\n');
    }
    out.pop(); // the caller ends the line
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn block_style_with_quoted_strings_and_literal_scripts() {
        let v = json!({
            "apiVersion": "batch/v1",
            "metadata": {"name": "x", "labels": {"sykli.io/task": "build"}},
            "spec": {"containers": [{"name": "a", "command": ["sh", "-c", "echo 1\nset -eu\n"], "env": []}], "n": 3, "ok": true},
        });
        let y = to_yaml(&v);
        assert_eq!(
            y,
            "apiVersion: \"batch/v1\"\nmetadata:\n  labels:\n    sykli.io/task: \"build\"\n  name: \"x\"\nspec:\n  containers:\n  - command:\n    - \"sh\"\n    - \"-c\"\n    - |\n      echo 1\n      set -eu\n    env: []\n    name: \"a\"\n  n: 3\n  ok: true\n"
        );
    }

    #[test]
    fn tricky_strings_are_quoted() {
        for s in [
            "yes",
            "null",
            "0x1",
            "- a",
            "a: b",
            "#c",
            "tab\there",
            "trailing \nspace",
            "\u{7}",
        ] {
            let y = to_yaml(&json!({ "k": s }));
            assert!(y.starts_with("k: \""), "{s:?} → {y}");
        }
    }
}
