//! Decoding, defaulting and validation of request bodies, following kube-apiserver:
//!
//! 1. Decoding (400 BadRequest): the body is decoded into the k8s-openapi type; a type error is
//!    reported as `Job in version "v1" cannot be handled as a Job: ...`, and with
//!    `fieldValidation=Strict` every field the type does not have is a `strict decoding error`.
//!    k8s-openapi skips unknown fields, so they are found by comparing the body with the typed
//!    value serialized again.
//! 2. Defaulting (pkg/apis/*/v1/defaults.go, the admission plugins every cluster runs).
//! 3. Validation (422 Invalid): the rules of pkg/apis/core/validation and
//!    pkg/apis/batch/validation that matter for Jobs, Pods and their inputs, with the real
//!    field paths, cause types and messages.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::resources::Res;
use crate::status::{ApiError, FieldError};
use crate::util::go_quote;

// ---------------------------------------------------------------------------------------------
// Name and label formats (k8s.io/apimachinery/pkg/api/validate/content).

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";
const DNS1123_SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const LABEL_KEY_FMT: &str = "([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]";
const LABEL_KEY_MSG: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const LABEL_VALUE_FMT: &str = "(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?";
const LABEL_VALUE_MSG: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character";
const CONFIG_KEY_FMT: &str = "[-._a-zA-Z0-9]+";
const CONFIG_KEY_MSG: &str =
    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'";
const TOTAL_ANNOTATION_SIZE: usize = 256 * 1024;
const MAX_SECRET_SIZE: usize = 1024 * 1024;

fn regex_error(msg: &str, fmt: &str, examples: &[&str]) -> String {
    if examples.is_empty() {
        return format!("{msg} (regex used for validation is '{fmt}')");
    }
    let mut s = format!("{msg} (e.g. ");
    for (i, e) in examples.iter().enumerate() {
        if i > 0 {
            s.push_str(" or ");
        }
        s.push_str(&format!("'{e}', "));
    }
    s.push_str(&format!("regex used for validation is '{fmt}')"));
    s
}

fn max_len_error(n: usize) -> String {
    format!("must be no more than {n} characters")
}

fn is_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

fn matches_dns_label(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && is_alnum(b[0])
        && is_alnum(b[b.len() - 1])
        && b.iter().all(|&c| is_alnum(c) || c == b'-')
}

fn matches_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(matches_dns_label)
}

pub fn dns1123_label_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !matches_dns_label(s) {
        if matches_dns_subdomain(s) {
            errs.push("must not contain dots".into());
        } else {
            errs.push(regex_error(
                DNS1123_LABEL_MSG,
                DNS1123_LABEL_FMT,
                &["my-name", "123-abc"],
            ));
        }
    }
    errs
}

pub fn dns1123_subdomain_errors(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push(max_len_error(253));
    }
    if !matches_dns_subdomain(s) {
        errs.push(regex_error(
            DNS1123_SUBDOMAIN_MSG,
            DNS1123_SUBDOMAIN_FMT,
            &["example.com"],
        ));
    }
    errs
}

fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    let ok = |c: u8| c.is_ascii_alphanumeric();
    !b.is_empty()
        && ok(b[0])
        && ok(b[b.len() - 1])
        && b.iter()
            .all(|&c| ok(c) || c == b'-' || c == b'_' || c == b'.')
}

/// `content.IsLabelKey` (also IsQualifiedName).
pub fn label_key_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    let name = match value.split_once('/') {
        None => value,
        Some((_, suffix)) if suffix.contains('/') => {
            return vec![format!(
                "a valid label key {} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')",
                regex_error(LABEL_KEY_MSG, LABEL_KEY_FMT, &["MyName", "my.name", "123-abc"])
            )];
        }
        Some((prefix, suffix)) => {
            if prefix.is_empty() {
                errs.push("prefix part must be non-empty".to_string());
            } else {
                errs.extend(
                    dns1123_subdomain_errors(prefix)
                        .into_iter()
                        .map(|m| format!("prefix part {m}")),
                );
            }
            suffix
        }
    };
    if name.is_empty() {
        errs.push("name part must be non-empty".into());
    } else if name.len() > 63 {
        errs.push(format!("name part {}", max_len_error(63)));
    }
    if !is_label_name(name) {
        errs.push(format!(
            "name part {}",
            regex_error(
                LABEL_KEY_MSG,
                LABEL_KEY_FMT,
                &["MyName", "my.name", "123-abc"]
            )
        ));
    }
    errs
}

/// `content.IsLabelValue`.
pub fn label_value_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 63 {
        errs.push(max_len_error(63));
    }
    if !value.is_empty() && !is_label_name(value) {
        errs.push(regex_error(
            LABEL_VALUE_MSG,
            LABEL_VALUE_FMT,
            &["MyValue", "my_value", "12345"],
        ));
    }
    errs
}

fn config_key_errors(value: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if value.len() > 253 {
        errs.push(max_len_error(253));
    }
    if value.is_empty()
        || !value
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_' || c == b'.')
    {
        errs.push(regex_error(
            CONFIG_KEY_MSG,
            CONFIG_KEY_FMT,
            &["key.name", "KEY_NAME", "key-name"],
        ));
    }
    match value {
        "." => errs.push("must not be '.'".into()),
        ".." => errs.push("must not be '..'".into()),
        v if v.starts_with("..") => errs.push("must not start with '..'".into()),
        _ => {}
    }
    errs
}

/// `IsRelaxedEnvVarName` (RelaxedEnvironmentVariableValidation is GA).
fn env_name_errors(value: &str) -> Vec<String> {
    if value.chars().any(|c| !(' '..='~').contains(&c) || c == '=') {
        vec!["a valid environment variable name must consist only of printable ASCII characters other than '='".into()]
    } else {
        Vec::new()
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding.

/// How to treat fields the type does not have (`?fieldValidation=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    Strict,
    Warn,
    Ignore,
}

impl FieldValidation {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        match s {
            "Strict" => Ok(FieldValidation::Strict),
            "Warn" => Ok(FieldValidation::Warn),
            "Ignore" => Ok(FieldValidation::Ignore),
            other => Err(ApiError::bad_request(format!(
                "fieldValidation must be one of \"Ignore\", \"Warn\", or \"Strict\", got {other:?}"
            ))),
        }
    }
}

/// Quantities may be JSON numbers (Go's Quantity.UnmarshalJSON accepts them); k8s-openapi
/// wants strings.
fn normalize_quantities(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, child) in m.iter_mut() {
                if matches!(
                    k.as_str(),
                    "limits" | "requests" | "capacity" | "allocatable"
                ) {
                    if let Value::Object(q) = child {
                        for qv in q.values_mut() {
                            if let Value::Number(n) = qv {
                                *qv = Value::String(n.to_string());
                            }
                        }
                    }
                } else if k == "sizeLimit" {
                    if let Value::Number(n) = child {
                        *child = Value::String(n.to_string());
                    }
                }
                normalize_quantities(child);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize_quantities),
        _ => {}
    }
}

fn unknown_fields(input: &Value, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (input, typed) {
        (Value::Object(i), Value::Object(t)) => {
            for (k, v) in i {
                if v.is_null() {
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match t.get(k) {
                    Some(tv) => unknown_fields(v, tv, &p, out),
                    None => out.push(p),
                }
            }
        }
        (Value::Array(i), Value::Array(t)) => {
            for (n, v) in i.iter().enumerate() {
                if let Some(tv) = t.get(n) {
                    unknown_fields(v, tv, &format!("{path}[{n}]"), out);
                }
            }
        }
        _ => {}
    }
}

fn decode_as<T: DeserializeOwned + Serialize>(
    body: &Value,
    kind: &str,
) -> Result<Value, (String, String)> {
    let typed: T = serde_path_to_error::deserialize(body.clone()).map_err(|e| {
        let path = e.path().to_string();
        (path, e.into_inner().to_string())
    })?;
    serde_json::to_value(&typed).map_err(|e| (String::new(), format!("{kind}: {e}")))
}

/// The outcome of decoding: the body to store (quantities normalized) and warnings.
pub struct Decoded {
    pub body: Value,
    pub warnings: Vec<String>,
}

/// Decodes `body` as `res` the way the create handler does.
pub fn decode(res: Res, body: Value, fv: FieldValidation) -> Result<Decoded, ApiError> {
    decode_raw(res, body, None, fv)
}

/// The body as written: object keys in document order, duplicates kept (serde_json's Value
/// sorts keys and keeps the last duplicate; the real decoder reports in document order).
#[derive(Debug)]
enum Node {
    Obj(Vec<(String, Node)>),
    Arr(Vec<Node>),
    Null,
    Scalar,
}

impl<'de> serde::Deserialize<'de> for Node {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Node;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("JSON")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Node, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, Node>()? {
                    out.push((k, v));
                }
                Ok(Node::Obj(out))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut a: A) -> Result<Node, A::Error> {
                let mut out = Vec::new();
                while let Some(v) = a.next_element::<Node>()? {
                    out.push(v);
                }
                Ok(Node::Arr(out))
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Null)
            }
            fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_i64<E>(self, _: i64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_u64<E>(self, _: u64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
            fn visit_str<E>(self, _: &str) -> Result<Node, E> {
                Ok(Node::Scalar)
            }
        }
        d.deserialize_any(V)
    }
}

/// Unknown and duplicate fields, in document order, as the strict decoder lists them.
fn strict_issues(input: &Node, typed: &Value, path: &str, out: &mut Vec<String>) {
    match (input, typed) {
        (Node::Obj(entries), Value::Object(t)) => {
            let mut seen: Vec<&str> = Vec::new();
            for (k, v) in entries {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                let known = t.contains_key(k);
                if seen.contains(&k.as_str()) {
                    if known {
                        out.push(format!("duplicate field {}", go_quote(&p)));
                    }
                    continue;
                }
                seen.push(k);
                if matches!(v, Node::Null) {
                    continue;
                }
                match t.get(k) {
                    Some(tv) => strict_issues(v, tv, &p, out),
                    None => out.push(format!("unknown field {}", go_quote(&p))),
                }
            }
        }
        (Node::Arr(items), Value::Array(t)) => {
            for (n, v) in items.iter().enumerate() {
                if let Some(tv) = t.get(n) {
                    strict_issues(v, tv, &format!("{path}[{n}]"), out);
                }
            }
        }
        _ => {}
    }
}

/// Decodes a request body (its raw bytes, for document order and duplicates).
pub fn decode_bytes(res: Res, raw: &[u8], fv: FieldValidation) -> Result<Decoded, ApiError> {
    let body: Value = serde_json::from_slice(raw).map_err(|e| {
        ApiError::bad_request(format!(
            "the object provided is unrecognized (must be of type {}): couldn't get version/kind; json parse error: {e}",
            res.kind()
        ))
    })?;
    let node: Option<Node> = serde_json::from_slice(raw).ok();
    decode_raw(res, body, node.as_ref(), fv)
}

fn decode_raw(
    res: Res,
    body: Value,
    node: Option<&Node>,
    fv: FieldValidation,
) -> Result<Decoded, ApiError> {
    let kind = res.kind();
    let gvk_kind = body_kind(&body).unwrap_or(kind).to_string();
    let cannot = |msg: String| {
        ApiError::bad_request(format!(
            "{gvk_kind} in version {} cannot be handled as a {kind}: {msg}",
            go_quote(res.version())
        ))
    };
    if !body.is_object() {
        return Err(ApiError::bad_request(format!(
            "the object provided is unrecognized (must be of type {kind}): couldn't get version/kind; json parse error: expected an object"
        )));
    }
    // apiVersion/kind default from the URL; when given they must match it.
    if let Some(av) = body.get("apiVersion").and_then(Value::as_str) {
        if av != res.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                res.api_version()
            )));
        }
    }
    if let Some(k) = body_kind(&body) {
        if k != kind {
            return Err(ApiError::bad_request(format!(
                "no kind {} is registered for version {} in scheme \"pkg/api/legacyscheme/scheme.go:30\"",
                go_quote(k),
                go_quote(res.api_version())
            )));
        }
    }
    let mut body = body;
    normalize_quantities(&mut body);
    use k8s_openapi::api::{batch::v1 as batch, core::v1 as core};
    let typed = match res {
        Res::Job => decode_as::<batch::Job>(&body, kind),
        Res::Pod => decode_as::<core::Pod>(&body, kind),
        Res::Namespace => decode_as::<core::Namespace>(&body, kind),
        Res::Secret => decode_as::<core::Secret>(&body, kind),
        Res::ConfigMap => decode_as::<core::ConfigMap>(&body, kind),
        Res::PersistentVolumeClaim => decode_as::<core::PersistentVolumeClaim>(&body, kind),
        Res::Event => decode_as::<core::Event>(&body, kind),
        Res::ServiceAccount => decode_as::<core::ServiceAccount>(&body, kind),
        Res::PriorityClass => {
            decode_as::<k8s_openapi::api::scheduling::v1::PriorityClass>(&body, kind)
        }
    };
    let typed = match typed {
        Ok(t) => t,
        Err((path, msg)) => {
            let msg = if path.is_empty() || path == "." {
                msg
            } else {
                format!("{path}: {msg}")
            };
            return Err(cannot(msg));
        }
    };
    if let Some(q) = bad_quantity(&body) {
        return Err(cannot(format!("quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$' (got {})", go_quote(&q))));
    }
    let list: Vec<String> = match node {
        Some(n) => {
            let mut out = Vec::new();
            strict_issues(n, &typed, "", &mut out);
            out
        }
        None => {
            let mut unknown = Vec::new();
            unknown_fields(&body, &typed, "", &mut unknown);
            unknown
                .iter()
                .map(|p| format!("unknown field {}", go_quote(p)))
                .collect()
        }
    };
    let mut warnings = Vec::new();
    if !list.is_empty() {
        match fv {
            FieldValidation::Strict => {
                return Err(cannot(format!(
                    "strict decoding error: {}",
                    list.join(", ")
                )))
            }
            FieldValidation::Warn => warnings = list,
            FieldValidation::Ignore => {}
        }
        // The stored object never has fields its type lacks.
        body = strip_to(&body, &typed);
    }
    Ok(Decoded { body, warnings })
}

fn body_kind(body: &Value) -> Option<&str> {
    body.get("kind").and_then(Value::as_str)
}

/// `input` without the fields `typed` lacks.
fn strip_to(input: &Value, typed: &Value) -> Value {
    match (input, typed) {
        (Value::Object(i), Value::Object(t)) => Value::Object(
            i.iter()
                .filter(|(k, v)| v.is_null() || t.contains_key(*k))
                .map(|(k, v)| {
                    let tv = t.get(k).unwrap_or(&Value::Null);
                    (k.clone(), strip_to(v, tv))
                })
                .collect(),
        ),
        (Value::Array(i), Value::Array(t)) => Value::Array(
            i.iter()
                .enumerate()
                .map(|(n, v)| strip_to(v, t.get(n).unwrap_or(&Value::Null)))
                .collect(),
        ),
        (v, _) => v.clone(),
    }
}

/// The first quantity string that does not parse.
fn bad_quantity(v: &Value) -> Option<String> {
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                if matches!(k.as_str(), "limits" | "requests") {
                    if let Some(q) = child.as_object() {
                        for qv in q.values() {
                            if let Some(s) = qv.as_str() {
                                if parse_quantity(s).is_none() {
                                    return Some(s.to_string());
                                }
                            }
                        }
                    }
                }
                if k == "sizeLimit" {
                    if let Some(s) = child.as_str() {
                        if parse_quantity(s).is_none() {
                            return Some(s.to_string());
                        }
                    }
                }
                if let Some(q) = bad_quantity(child) {
                    return Some(q);
                }
            }
            None
        }
        Value::Array(a) => a.iter().find_map(bad_quantity),
        _ => None,
    }
}

/// A quantity's value (resource.ParseQuantity's grammar), as f64 — precise enough to compare
/// requests with limits.
pub fn parse_quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let bytes = s.as_bytes();
    let mut i = 0;
    if i < bytes.len() && (bytes[i] == b'+' || bytes[i] == b'-') {
        i += 1;
    }
    let num_start = i;
    while i < bytes.len() && (bytes[i].is_ascii_digit() || bytes[i] == b'.') {
        i += 1;
    }
    let num = &s[..i];
    if i == num_start || num[num_start..].matches('.').count() > 1 || &num[num_start..] == "." {
        return None;
    }
    let base: f64 = num.parse().ok()?;
    let suffix = &s[i..];
    let mult = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024f64,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with('e') || e.starts_with('E') => {
            let exp: i32 = e[1..].parse().ok()?;
            10f64.powi(exp)
        }
        _ => return None,
    };
    Some(base * mult)
}

/// A quantity in apimachinery's canonical form (`Quantity.String()`), as validation messages
/// print it: "0.5" → "500m", "1000" → "1k", "1024Mi" → "1Gi", "1.5Gi" → "1536Mi".
pub fn canonical_quantity(s: &str) -> Option<String> {
    parse_quantity(s)?;
    let s = s.trim();
    let (sign, rest) = match s.strip_prefix('-') {
        Some(r) => (-1i128, r),
        None => (1i128, s.strip_prefix('+').unwrap_or(s)),
    };
    let split = rest
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(rest.len());
    let (digits, suffix) = rest.split_at(split);
    let (int_part, frac_part) = digits.split_once('.').unwrap_or((digits, ""));
    let mut num: i128 = format!("{int_part}{frac_part}").parse().ok()?;
    let mut exp10: i32 = -(frac_part.len() as i32);
    let (binary, exponent_format) = match suffix {
        "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei" => {
            let k = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]
                .iter()
                .position(|x| *x == suffix)
                .unwrap_or(0) as u32
                + 1;
            num = num.checked_mul(1024i128.checked_pow(k)?)?;
            (true, false)
        }
        "" => (false, false),
        e if e.starts_with('e') || e.starts_with('E') => {
            exp10 += e[1..].parse::<i32>().ok()?;
            (false, true)
        }
        si => {
            exp10 += match si {
                "n" => -9,
                "u" => -6,
                "m" => -3,
                "k" => 3,
                "M" => 6,
                "G" => 9,
                "T" => 12,
                "P" => 15,
                "E" => 18,
                _ => return None,
            };
            (false, false)
        }
    };
    if num == 0 {
        return Some("0".into());
    }
    while num % 10 == 0 {
        num /= 10;
        exp10 += 1;
    }
    // Below a nano the real type rounds up to 1n.
    if exp10 < -9 {
        let scale = 10i128.checked_pow((-9 - exp10) as u32)?;
        num = (num + scale - 1) / scale;
        exp10 = -9;
    }
    let value_int = (exp10 >= 0)
        .then(|| {
            10i128
                .checked_pow(exp10 as u32)
                .and_then(|p| num.checked_mul(p))
        })
        .flatten();
    if binary {
        if let Some(v) = value_int.filter(|v| v.abs() >= 1024) {
            let mut k = 0;
            let mut m = v;
            while k < 6 && m % 1024 == 0 {
                m /= 1024;
                k += 1;
            }
            let suffix = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][k];
            return Some(format!("{}{suffix}", sign * m));
        }
    }
    let e3 = exp10.div_euclid(3) * 3;
    let mantissa = num.checked_mul(10i128.checked_pow((exp10 - e3) as u32)?)? * sign;
    let suffix = if exponent_format {
        if e3 == 0 {
            String::new()
        } else {
            format!("e{e3}")
        }
    } else {
        match e3 {
            -9 => "n",
            -6 => "u",
            -3 => "m",
            0 => "",
            3 => "k",
            6 => "M",
            9 => "G",
            12 => "T",
            15 => "P",
            18 => "E",
            _ => return Some(format!("{mantissa}e{e3}")),
        }
        .to_string()
    };
    Some(format!("{mantissa}{suffix}"))
}

// ---------------------------------------------------------------------------------------------
// Defaulting.

fn obj(v: &mut Value) -> &mut Map<String, Value> {
    if !v.is_object() {
        *v = Value::Object(Map::new());
    }
    v.as_object_mut().expect("object")
}

fn default_key(m: &mut Map<String, Value>, k: &str, v: Value) {
    if m.get(k).is_none_or(Value::is_null) {
        m.insert(k.into(), v);
    }
}

fn default_container(c: &mut Value) {
    let m = obj(c);
    default_key(m, "terminationMessagePath", json!("/dev/termination-log"));
    default_key(m, "terminationMessagePolicy", json!("File"));
    default_key(m, "resources", json!({}));
    let image = m.get("image").and_then(Value::as_str).unwrap_or("");
    let policy = if image_uses_latest(image) {
        "Always"
    } else {
        "IfNotPresent"
    };
    default_key(m, "imagePullPolicy", json!(policy));
    if let Some(Value::Array(ports)) = m.get_mut("ports") {
        for p in ports {
            default_key(obj(p), "protocol", json!("TCP"));
        }
    }
    if let Some(Value::Array(env)) = m.get_mut("env") {
        for e in env {
            if let Some(fr) = e.pointer_mut("/valueFrom/fieldRef") {
                default_key(obj(fr), "apiVersion", json!("v1"));
            }
        }
    }
}

/// `:latest` or no tag (and no digest) pulls Always.
fn image_uses_latest(image: &str) -> bool {
    if image.contains('@') {
        return false;
    }
    let last = image.rsplit('/').next().unwrap_or(image);
    match last.rsplit_once(':') {
        Some((_, tag)) => tag == "latest",
        None => true,
    }
}

/// SetDefaults_PodSpec and friends; `is_pod` adds what only Pods get (admission plugins).
pub fn default_pod_spec(spec: &mut Value, is_pod: bool) {
    let m = obj(spec);
    default_key(m, "dnsPolicy", json!("ClusterFirst"));
    default_key(m, "restartPolicy", json!("Always"));
    default_key(m, "terminationGracePeriodSeconds", json!(30));
    default_key(m, "securityContext", json!({}));
    default_key(m, "schedulerName", json!("default-scheduler"));
    for list in ["containers", "initContainers"] {
        if let Some(Value::Array(cs)) = m.get_mut(list) {
            cs.iter_mut().for_each(default_container);
        }
    }
    if let Some(Value::Array(vols)) = m.get_mut("volumes") {
        for v in vols {
            let vm = obj(v);
            let has_source = vm.iter().any(|(k, v)| k != "name" && !v.is_null());
            if !has_source {
                vm.insert("emptyDir".into(), json!({}));
            }
            for src in ["secret", "configMap"] {
                if let Some(s) = vm.get_mut(src) {
                    default_key(obj(s), "defaultMode", json!(420));
                }
            }
        }
    }
    if is_pod {
        default_key(m, "enableServiceLinks", json!(true));
        default_key(m, "serviceAccountName", json!("default"));
        default_key(m, "serviceAccount", json!("default"));
        default_key(m, "priority", json!(0));
        default_key(m, "preemptionPolicy", json!("PreemptLowerPriority"));
        // DefaultTolerationSeconds admission.
        let tolerations = m
            .entry("tolerations")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(ts) = tolerations {
            for key in [
                "node.kubernetes.io/not-ready",
                "node.kubernetes.io/unreachable",
            ] {
                if !ts
                    .iter()
                    .any(|t| t.get("key").and_then(Value::as_str) == Some(key))
                {
                    ts.push(json!({"key": key, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300}));
                }
            }
        }
    }
}

/// SetDefaults_Job, plus what the Job strategy adds on create (generated selector and labels).
pub fn default_job(job: &mut Value, uid: &str, name: &str) {
    let template_labels = job.pointer("/spec/template/metadata/labels").cloned();
    let m = obj(job);
    let spec = obj(m.entry("spec").or_insert_with(|| json!({})));
    if spec.get("completions").is_none_or(Value::is_null)
        && spec.get("parallelism").is_none_or(Value::is_null)
    {
        spec.insert("completions".into(), json!(1));
        spec.insert("parallelism".into(), json!(1));
    }
    default_key(spec, "parallelism", json!(1));
    default_key(spec, "backoffLimit", json!(6));
    default_key(spec, "completionMode", json!("NonIndexed"));
    default_key(spec, "suspend", json!(false));
    default_key(spec, "manualSelector", json!(false));
    let replacement = if spec.get("podFailurePolicy").is_some_and(|p| !p.is_null()) {
        "Failed"
    } else {
        "TerminatingOrFailed"
    };
    default_key(spec, "podReplacementPolicy", json!(replacement));
    let manual = spec.get("manualSelector").and_then(Value::as_bool) == Some(true);
    let template = obj(spec.entry("template").or_insert_with(|| json!({})));
    let tmeta = obj(template.entry("metadata").or_insert_with(|| json!({})));
    if !manual {
        let labels = obj(tmeta.entry("labels").or_insert_with(|| json!({})));
        for k in ["job-name", "batch.kubernetes.io/job-name"] {
            default_key(labels, k, json!(name));
        }
        for k in ["controller-uid", "batch.kubernetes.io/controller-uid"] {
            default_key(labels, k, json!(uid));
        }
    }
    default_pod_spec(template.entry("spec").or_insert_with(|| json!({})), false);
    if !manual && spec.get("selector").is_none_or(Value::is_null) {
        spec.insert(
            "selector".into(),
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
        );
    }
    // Job labels default to the template's (as written by the user).
    let meta = obj(m.entry("metadata").or_insert_with(|| json!({})));
    let has_labels = meta
        .get("labels")
        .and_then(Value::as_object)
        .is_some_and(|l| !l.is_empty());
    if !has_labels {
        if let Some(l) = template_labels.filter(|l| l.as_object().is_some_and(|o| !o.is_empty())) {
            meta.insert("labels".into(), l);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Validation.

type Errs = Vec<FieldError>;

fn s<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

fn arr<'a>(v: &'a Value, k: &str) -> &'a [Value] {
    v.get(k)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn map_of<'a>(v: &'a Value, k: &str) -> BTreeMap<&'a str, &'a Value> {
    v.get(k)
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.as_str(), v)).collect())
        .unwrap_or_default()
}

fn int(v: &Value, k: &str) -> Option<i64> {
    v.get(k).and_then(Value::as_i64)
}

pub fn validate_labels(labels: Option<&Value>, path: &str, errs: &mut Errs) {
    let Some(labels) = labels.and_then(Value::as_object) else {
        return;
    };
    let sorted: BTreeMap<&String, &Value> = labels.iter().collect();
    for (k, v) in sorted {
        for m in label_key_errors(k) {
            errs.push(FieldError::invalid(path, k.as_str(), m));
        }
        let v = v.as_str().unwrap_or("");
        for m in label_value_errors(v) {
            errs.push(FieldError::invalid(path, v, m));
        }
    }
}

pub fn validate_annotations(ann: Option<&Value>, path: &str, errs: &mut Errs) {
    let Some(ann) = ann.and_then(Value::as_object) else {
        return;
    };
    let mut total = 0;
    let sorted: BTreeMap<&String, &Value> = ann.iter().collect();
    for (k, v) in sorted {
        for m in label_key_errors(&k.to_lowercase()) {
            errs.push(FieldError::invalid(path, k.as_str(), m));
        }
        total += k.len() + v.as_str().map_or(0, str::len);
    }
    if total > TOTAL_ANNOTATION_SIZE {
        errs.push(FieldError::too_long(path, TOTAL_ANNOTATION_SIZE));
    }
}

#[derive(Clone, Copy)]
enum NameRule {
    Subdomain,
    Label,
}

fn validate_meta(meta: &Value, rule: NameRule, errs: &mut Errs) {
    let check = |v: &str| match rule {
        NameRule::Subdomain => dns1123_subdomain_errors(v),
        NameRule::Label => dns1123_label_errors(v),
    };
    if let Some(g) = s(meta, "generateName").filter(|g| !g.is_empty()) {
        // Validated as a prefix: a trailing dash is fine (maskTrailingDash).
        let masked = if g.len() > 1 && g.ends_with('-') {
            format!("{}a", &g[..g.len() - 2])
        } else {
            g.to_string()
        };
        for m in check(&masked) {
            errs.push(FieldError::invalid("metadata.generateName", g, m));
        }
    }
    let name = s(meta, "name").unwrap_or("");
    if name.is_empty() {
        errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        ));
    } else {
        for m in check(name) {
            errs.push(FieldError::invalid("metadata.name", name, m));
        }
    }
    validate_labels(meta.get("labels"), "metadata.labels", errs);
    validate_annotations(meta.get("annotations"), "metadata.annotations", errs);
    validate_owner_references(meta, errs);
}

/// apimachinery's ValidateOwnerReferences: apiVersion (its version), kind, name and uid
/// present, and at most one controller.
fn validate_owner_references(meta: &Value, errs: &mut Errs) {
    const PATH: &str = "metadata.ownerReferences";
    let mut controller: Option<String> = None;
    for r in arr(meta, "ownerReferences") {
        let field = |k: &str| s(r, k).unwrap_or("");
        let version = field("apiVersion").rsplit('/').next().unwrap_or("");
        if version.is_empty() {
            errs.push(FieldError::invalid(
                format!("{PATH}.apiVersion"),
                field("apiVersion"),
                "version must not be empty",
            ));
        }
        for k in ["kind", "name", "uid"] {
            if field(k).is_empty() {
                errs.push(FieldError::invalid(
                    format!("{PATH}.{k}"),
                    "",
                    "must not be empty",
                ));
            }
        }
        if r["controller"] == true {
            let this = format!("{}/{}", field("kind"), field("name"));
            match &controller {
                Some(first) => errs.push(FieldError::invalid(
                    PATH,
                    this.as_str(),
                    format!(
                        "Only one reference can have Controller set to true. Found \"true\" in references for {first} and {this}"
                    ),
                )),
                None => controller = Some(this),
            }
        }
    }
}

fn validate_dns_label(value: &str, path: &str, errs: &mut Errs) {
    for m in dns1123_label_errors(value) {
        errs.push(FieldError::invalid(path, value, m));
    }
}

fn nonneg(v: &Value, k: &str, path: &str, errs: &mut Errs) {
    if let Some(n) = int(v, k) {
        if n < 0 {
            errs.push(FieldError::invalid(
                format!("{path}.{k}"),
                &n,
                "must be greater than or equal to 0",
            ));
        }
    }
}

fn validate_local_descending_path(p: &str, path: &str, errs: &mut Errs) {
    if p.starts_with('/') {
        errs.push(FieldError::invalid(path, p, "must be a relative path"));
    }
    if p.split('/').any(|part| part == "..") {
        errs.push(FieldError::invalid(path, p, "must not contain '..'"));
    }
}

fn validate_key_to_paths(items: &[Value], path: &str, errs: &mut Errs) {
    for (i, it) in items.iter().enumerate() {
        let ip = format!("{path}[{i}]");
        match s(it, "key") {
            Some(k) if !k.is_empty() => {}
            _ => errs.push(FieldError::required(format!("{ip}.key"), "")),
        }
        let p = s(it, "path").unwrap_or("");
        if p.is_empty() {
            errs.push(FieldError::required(format!("{ip}.path"), ""));
        } else {
            validate_local_descending_path(p, &format!("{ip}.path"), errs);
            if p.split('/').next().is_some_and(|f| f.starts_with("..")) {
                errs.push(FieldError::invalid(
                    format!("{ip}.path"),
                    p,
                    "must not start with '..'",
                ));
            }
        }
        if let Some(mode) = int(it, "mode") {
            if !(0..=0o777).contains(&mode) {
                errs.push(FieldError::invalid(
                    format!("{ip}.mode"),
                    &mode,
                    "must be a number between 0 and 0777 (octal), both inclusive",
                ));
            }
        }
    }
}

const VOLUME_SOURCES: &[&str] = &[
    "emptyDir",
    "hostPath",
    "secret",
    "configMap",
    "persistentVolumeClaim",
    "projected",
    "downwardAPI",
    "ephemeral",
    "csi",
    "nfs",
    "image",
    "gitRepo",
    "iscsi",
    "glusterfs",
    "rbd",
    "flexVolume",
    "cinder",
    "cephfs",
    "flocker",
    "fc",
    "azureFile",
    "azureDisk",
    "vsphereVolume",
    "quobyte",
    "photonPersistentDisk",
    "portworxVolume",
    "scaleIO",
    "storageos",
    "gcePersistentDisk",
    "awsElasticBlockStore",
];

fn validate_volume_source(vol: &Value, path: &str, errs: &mut Errs) {
    let mut count = 0;
    for src in VOLUME_SOURCES {
        let Some(v) = vol.get(*src).filter(|v| !v.is_null()) else {
            continue;
        };
        count += 1;
        if count > 1 {
            errs.push(FieldError::forbidden(
                format!("{path}.{src}"),
                "may not specify more than 1 volume type",
            ));
            continue;
        }
        let sp = format!("{path}.{src}");
        match *src {
            "secret" => {
                if s(v, "secretName").unwrap_or("").is_empty() {
                    errs.push(FieldError::required(format!("{sp}.secretName"), ""));
                }
                default_mode(v, &sp, errs);
                validate_key_to_paths(arr(v, "items"), &format!("{sp}.items"), errs);
            }
            "configMap" => {
                match s(v, "name") {
                    Some(n) if !n.is_empty() => {
                        for m in dns1123_subdomain_errors(n) {
                            errs.push(FieldError::invalid(format!("{sp}.name"), n, m));
                        }
                    }
                    _ => errs.push(FieldError::required(format!("{sp}.name"), "")),
                }
                default_mode(v, &sp, errs);
                validate_key_to_paths(arr(v, "items"), &format!("{sp}.items"), errs);
            }
            "persistentVolumeClaim" if s(v, "claimName").unwrap_or("").is_empty() => {
                errs.push(FieldError::required(format!("{sp}.claimName"), ""));
            }
            "hostPath" => {
                if s(v, "path").unwrap_or("").is_empty() {
                    errs.push(FieldError::required(format!("{sp}.path"), ""));
                }
                if let Some(t) = s(v, "type") {
                    const TYPES: &[&str] = &[
                        "",
                        "DirectoryOrCreate",
                        "Directory",
                        "FileOrCreate",
                        "File",
                        "Socket",
                        "CharDevice",
                        "BlockDevice",
                    ];
                    if !TYPES.contains(&t) {
                        errs.push(FieldError::not_supported(format!("{sp}.type"), t, TYPES));
                    }
                }
            }
            "emptyDir" => {
                if let Some(m) = s(v, "medium") {
                    if !["", "Memory", "HugePages"].contains(&m) && !m.starts_with("HugePages-") {
                        errs.push(FieldError::not_supported(
                            format!("{sp}.medium"),
                            m,
                            &["", "Memory", "HugePages"],
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    if count == 0 {
        errs.push(FieldError::required(path, "must specify a volume type"));
    }
}

fn default_mode(v: &Value, path: &str, errs: &mut Errs) {
    if let Some(mode) = int(v, "defaultMode") {
        if !(0..=0o777).contains(&mode) {
            errs.push(FieldError::invalid(
                format!("{path}.defaultMode"),
                &mode,
                "must be a number between 0 and 0777 (octal), both inclusive",
            ));
        }
    }
}

fn id_range(v: &Value, k: &str, path: &str, errs: &mut Errs) {
    if let Some(n) = int(v, k) {
        if !(0..=i64::from(i32::MAX)).contains(&n) {
            errs.push(FieldError::invalid(
                format!("{path}.{k}"),
                &n,
                "must be between 0 and 2147483647, inclusive",
            ));
        }
    }
}

fn validate_seccomp(sc: &Value, path: &str, errs: &mut Errs) {
    let Some(p) = sc.get("seccompProfile").filter(|p| !p.is_null()) else {
        return;
    };
    let pp = format!("{path}.seccompProfile");
    match s(p, "type") {
        Some("Localhost") => {
            if s(p, "localhostProfile").unwrap_or("").is_empty() {
                errs.push(FieldError::required(
                    format!("{pp}.localhostProfile"),
                    "must be set when seccomp type is Localhost",
                ));
            }
        }
        Some("RuntimeDefault" | "Unconfined") => {
            if p.get("localhostProfile").is_some_and(|l| !l.is_null()) {
                errs.push(FieldError::invalid(
                    format!("{pp}.localhostProfile"),
                    s(p, "localhostProfile").unwrap_or(""),
                    "can only be set when seccomp type is Localhost",
                ));
            }
        }
        Some(t) => errs.push(FieldError::not_supported(
            format!("{pp}.type"),
            t,
            &["Localhost", "RuntimeDefault", "Unconfined"],
        )),
        None => errs.push(FieldError::required(format!("{pp}.type"), "")),
    }
}

fn validate_container_security_context(sc: &Value, path: &str, errs: &mut Errs) {
    id_range(sc, "runAsUser", path, errs);
    id_range(sc, "runAsGroup", path, errs);
    if sc.get("privileged").and_then(Value::as_bool) == Some(true)
        && sc.get("allowPrivilegeEscalation").and_then(Value::as_bool) == Some(false)
    {
        errs.push(FieldError::invalid(
            path,
            "",
            "cannot set `allowPrivilegeEscalation` to false and `privileged` to true",
        ));
    }
    if let Some(pm) = s(sc, "procMount") {
        if !["Default", "Unmasked"].contains(&pm) {
            errs.push(FieldError::not_supported(
                format!("{path}.procMount"),
                pm,
                &["Default", "Unmasked"],
            ));
        }
    }
    validate_seccomp(sc, path, errs);
}

fn resource_name_ok(name: &str) -> bool {
    if ["cpu", "memory", "ephemeral-storage"].contains(&name) || name.starts_with("hugepages-") {
        return true;
    }
    // Extended resources: fully qualified, outside kubernetes.io (except requests.* forms).
    name.contains('/') && label_key_errors(name).is_empty()
}

fn overcommit_allowed(name: &str) -> bool {
    let native = !name.contains('/') || name.starts_with("kubernetes.io/");
    native && !name.starts_with("hugepages-")
}

fn validate_resources(res: &Value, path: &str, errs: &mut Errs) {
    let limits = map_of(res, "limits");
    let requests = map_of(res, "requests");
    for (which, m) in [("limits", &limits), ("requests", &requests)] {
        for (name, q) in m.iter() {
            let fp = format!("{path}.{which}[{name}]");
            if !resource_name_ok(name) {
                errs.push(FieldError::invalid(
                    fp.clone(),
                    *name,
                    "must be a standard resource type or fully qualified",
                ));
            }
            let qs = q.as_str().unwrap_or("");
            if let Some(val) = parse_quantity(qs) {
                if val < 0.0 {
                    errs.push(FieldError::invalid(
                        fp.clone(),
                        canonical_quantity(qs).as_deref().unwrap_or(qs),
                        "must be greater than or equal to 0",
                    ));
                }
                let integer_only = !overcommit_allowed(name) && !name.starts_with("hugepages-");
                if integer_only && val.fract() != 0.0 {
                    errs.push(FieldError::invalid(fp.clone(), qs, "must be an integer"));
                }
            }
            if which == "requests" {
                if let Some(limit) = limits.get(name).and_then(|l| l.as_str()) {
                    let (Some(r), Some(l)) = (parse_quantity(qs), parse_quantity(limit)) else {
                        continue;
                    };
                    let qs = canonical_quantity(qs).unwrap_or_else(|| qs.to_string());
                    let qs = qs.as_str();
                    let limit = canonical_quantity(limit).unwrap_or_else(|| limit.to_string());
                    let rp = format!("{path}.requests");
                    if !overcommit_allowed(name) && r != l {
                        errs.push(FieldError::invalid(
                            rp,
                            qs,
                            format!("must be equal to {name} limit of {limit}"),
                        ));
                    } else if r > l {
                        errs.push(FieldError::invalid(
                            rp,
                            qs,
                            format!("must be less than or equal to {name} limit of {limit}"),
                        ));
                    }
                }
            }
        }
    }
}

fn validate_env(c: &Value, path: &str, errs: &mut Errs) {
    for (i, e) in arr(c, "env").iter().enumerate() {
        let ip = format!("{path}.env[{i}]");
        let name = s(e, "name").unwrap_or("");
        if name.is_empty() {
            errs.push(FieldError::required(format!("{ip}.name"), ""));
        } else {
            for m in env_name_errors(name) {
                errs.push(FieldError::invalid(format!("{ip}.name"), name, m));
            }
        }
        let Some(vf) = e.get("valueFrom").filter(|v| !v.is_null()) else {
            continue;
        };
        let vp = format!("{ip}.valueFrom");
        let mut n = 0;
        if let Some(fr) = vf.get("fieldRef").filter(|v| !v.is_null()) {
            n += 1;
            let fp = s(fr, "fieldPath").unwrap_or("");
            const SUPPORTED: &[&str] = &[
                "metadata.annotations",
                "metadata.labels",
                "metadata.name",
                "metadata.namespace",
                "metadata.uid",
                "spec.nodeName",
                "spec.serviceAccountName",
                "status.hostIP",
                "status.hostIPs",
                "status.podIP",
                "status.podIPs",
            ];
            let subscripted = (fp.starts_with("metadata.labels['")
                || fp.starts_with("metadata.annotations['"))
                && fp.ends_with("']");
            if fp.is_empty() {
                errs.push(FieldError::required(format!("{vp}.fieldRef.fieldPath"), ""));
            } else if !subscripted
                && (!SUPPORTED.contains(&fp)
                    || fp == "metadata.labels"
                    || fp == "metadata.annotations")
            {
                errs.push(FieldError::not_supported(
                    format!("{vp}.fieldRef.fieldPath"),
                    fp,
                    SUPPORTED,
                ));
            }
        }
        if vf.get("resourceFieldRef").is_some_and(|v| !v.is_null()) {
            n += 1;
        }
        for (src, label) in [("configMapKeyRef", "configMap"), ("secretKeyRef", "secret")] {
            let Some(r) = vf.get(src).filter(|v| !v.is_null()) else {
                continue;
            };
            let _ = label;
            n += 1;
            let rp = format!("{vp}.{src}");
            let rn = s(r, "name").unwrap_or("");
            for m in dns1123_subdomain_errors(rn) {
                errs.push(FieldError::invalid(format!("{rp}.name"), rn, m));
            }
            match s(r, "key") {
                Some(k) if !k.is_empty() => {
                    for m in config_key_errors(k) {
                        errs.push(FieldError::invalid(format!("{rp}.key"), k, m));
                    }
                }
                _ => errs.push(FieldError::required(format!("{rp}.key"), "")),
            }
        }
        if vf.get("fileKeyRef").is_some_and(|v| !v.is_null()) {
            n += 1;
        }
        let has_value = s(e, "value").is_some_and(|v| !v.is_empty());
        if n == 0 {
            errs.push(FieldError::invalid(
                vp,
                "",
                "must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
            ));
        } else if has_value {
            errs.push(FieldError::invalid(
                vp,
                "",
                "may not be specified when `value` is not empty",
            ));
        } else if n > 1 {
            errs.push(FieldError::invalid(
                vp,
                "",
                "may not have more than one field specified at a time",
            ));
        }
    }
    for (i, e) in arr(c, "envFrom").iter().enumerate() {
        let ip = format!("{path}.envFrom[{i}]");
        let mut n = 0;
        for src in ["configMapRef", "secretRef"] {
            if let Some(r) = e.get(src).filter(|v| !v.is_null()) {
                n += 1;
                let rn = s(r, "name").unwrap_or("");
                for m in dns1123_subdomain_errors(rn) {
                    errs.push(FieldError::invalid(format!("{ip}.{src}.name"), rn, m));
                }
            }
        }
        if let Some(p) = s(e, "prefix") {
            for m in env_name_errors(p) {
                errs.push(FieldError::invalid(format!("{ip}.prefix"), p, m));
            }
        }
        if n == 0 {
            errs.push(FieldError::invalid(
                ip,
                "",
                "must specify one of: `configMapRef` or `secretRef`",
            ));
        } else if n > 1 {
            errs.push(FieldError::invalid(
                ip,
                "",
                "may not have more than one field specified at a time",
            ));
        }
    }
}

fn validate_container_common(
    c: &Value,
    path: &str,
    volumes: &BTreeMap<String, ()>,
    errs: &mut Errs,
) {
    let name = s(c, "name").unwrap_or("");
    if name.is_empty() {
        errs.push(FieldError::required(format!("{path}.name"), ""));
    } else {
        validate_dns_label(name, &format!("{path}.name"), errs);
    }
    if s(c, "image").unwrap_or("").is_empty() {
        errs.push(FieldError::required(format!("{path}.image"), ""));
    } else if let Some(img) = s(c, "image") {
        if img.trim() != img {
            errs.push(FieldError::invalid(
                format!("{path}.image"),
                img,
                "must not have leading or trailing whitespace",
            ));
        }
    }
    match s(c, "terminationMessagePolicy").unwrap_or("") {
        "File" | "FallbackToLogsOnError" => {}
        "" => errs.push(FieldError::required(
            format!("{path}.terminationMessagePolicy"),
            "must be 'File' or 'FallbackToLogsOnError'",
        )),
        other => errs.push(FieldError::not_supported(
            format!("{path}.terminationMessagePolicy"),
            other,
            &["File", "FallbackToLogsOnError"],
        )),
    }
    for (i, p) in arr(c, "ports").iter().enumerate() {
        let pp = format!("{path}.ports[{i}]");
        match int(p, "containerPort") {
            Some(n) if (1..=65535).contains(&n) => {}
            Some(n) => errs.push(FieldError::invalid(
                format!("{pp}.containerPort"),
                &n,
                "must be between 1 and 65535, inclusive",
            )),
            None => errs.push(FieldError::required(format!("{pp}.containerPort"), "")),
        }
        if let Some(proto) = s(p, "protocol") {
            if !["TCP", "UDP", "SCTP"].contains(&proto) {
                errs.push(FieldError::not_supported(
                    format!("{pp}.protocol"),
                    proto,
                    &["SCTP", "TCP", "UDP"],
                ));
            }
        }
    }
    validate_env(c, path, errs);
    let mut mount_points: Vec<&str> = Vec::new();
    for (i, m) in arr(c, "volumeMounts").iter().enumerate() {
        let mp = format!("{path}.volumeMounts[{i}]");
        let vname = s(m, "name").unwrap_or("");
        if vname.is_empty() {
            errs.push(FieldError::required(format!("{mp}.name"), ""));
        }
        if !volumes.contains_key(vname) {
            errs.push(FieldError::not_found(format!("{mp}.name"), vname));
        }
        let mount_path = s(m, "mountPath").unwrap_or("");
        if mount_path.is_empty() {
            errs.push(FieldError::required(format!("{mp}.mountPath"), ""));
        }
        if mount_points.contains(&mount_path) {
            errs.push(FieldError::invalid(
                format!("{mp}.mountPath"),
                mount_path,
                "must be unique",
            ));
        }
        mount_points.push(mount_path);
        // The real validator reports subPath errors at volumeMounts.subPath (no index).
        if let Some(sp) = s(m, "subPath").filter(|p| !p.is_empty()) {
            validate_local_descending_path(sp, &format!("{path}.volumeMounts.subPath"), errs);
        }
        if s(m, "subPath").is_some_and(|p| !p.is_empty())
            && s(m, "subPathExpr").is_some_and(|p| !p.is_empty())
        {
            errs.push(FieldError::invalid(
                format!("{mp}.subPathExpr"),
                s(m, "subPathExpr").unwrap_or(""),
                "subPathExpr and subPath are mutually exclusive",
            ));
        }
        if let Some(prop) = s(m, "mountPropagation") {
            if !["None", "HostToContainer", "Bidirectional"].contains(&prop) {
                errs.push(FieldError::not_supported(
                    format!("{mp}.mountPropagation"),
                    prop,
                    &["Bidirectional", "HostToContainer", "None"],
                ));
            }
        }
    }
    match s(c, "imagePullPolicy").unwrap_or("") {
        "Always" | "IfNotPresent" | "Never" => {}
        "" => errs.push(FieldError::required(format!("{path}.imagePullPolicy"), "")),
        other => errs.push(FieldError::not_supported(
            format!("{path}.imagePullPolicy"),
            other,
            &["Always", "IfNotPresent", "Never"],
        )),
    }
    if let Some(r) = c.get("resources").filter(|r| !r.is_null()) {
        validate_resources(r, &format!("{path}.resources"), errs);
    }
    if let Some(sc) = c.get("securityContext").filter(|r| !r.is_null()) {
        validate_container_security_context(sc, &format!("{path}.securityContext"), errs);
    }
}

fn validate_tolerations(ts: &[Value], path: &str, errs: &mut Errs) {
    for (i, t) in ts.iter().enumerate() {
        let ip = format!("{path}[{i}]");
        let key = s(t, "key").unwrap_or("");
        if !key.is_empty() {
            for m in label_key_errors(key) {
                errs.push(FieldError::invalid(format!("{ip}.key"), key, m));
            }
        }
        let op = s(t, "operator").unwrap_or("");
        if key.is_empty() && op != "Exists" {
            errs.push(FieldError::invalid(
                format!("{ip}.operator"),
                op,
                "operator must be Exists when `key` is empty, which means \"match all values and all keys\"",
            ));
        }
        let effect = s(t, "effect").unwrap_or("");
        if t.get("tolerationSeconds").is_some_and(|v| !v.is_null()) && effect != "NoExecute" {
            errs.push(FieldError::invalid(
                format!("{ip}.effect"),
                effect,
                "effect must be 'NoExecute' when `tolerationSeconds` is set",
            ));
        }
        match op {
            "" | "Equal" => {
                let v = s(t, "value").unwrap_or("");
                for m in label_value_errors(v) {
                    errs.push(FieldError::invalid(format!("{ip}.operator"), v, m));
                }
            }
            "Exists" => {
                if s(t, "value").is_some_and(|v| !v.is_empty()) {
                    errs.push(FieldError::invalid(
                        format!("{ip}.operator"),
                        s(t, "value").unwrap_or(""),
                        "value must be empty when `operator` is 'Exists'",
                    ));
                }
            }
            other => errs.push(FieldError::not_supported(
                format!("{ip}.operator"),
                other,
                &["Equal", "Exists"],
            )),
        }
        if !effect.is_empty() && !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect)
        {
            errs.push(FieldError::not_supported(
                format!("{ip}.effect"),
                effect,
                &["NoSchedule", "PreferNoSchedule", "NoExecute"],
            ));
        }
    }
}

fn validate_node_affinity(spec: &Value, path: &str, errs: &mut Errs) {
    let Some(terms) = spec
        .pointer("/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
        .and_then(Value::as_array)
    else {
        return;
    };
    let tp = format!(
        "{path}.affinity.nodeAffinity.requiredDuringSchedulingIgnoredDuringExecution.nodeSelectorTerms"
    );
    if terms.is_empty() {
        errs.push(FieldError::required(
            tp.clone(),
            "must have at least one node selector term",
        ));
    }
    for (i, term) in terms.iter().enumerate() {
        for (j, e) in arr(term, "matchExpressions").iter().enumerate() {
            let ep = format!("{tp}[{i}].matchExpressions[{j}]");
            let key = s(e, "key").unwrap_or("");
            for m in label_key_errors(key) {
                errs.push(FieldError::invalid(format!("{ep}.key"), key, m));
            }
            let values = arr(e, "values");
            match s(e, "operator").unwrap_or("") {
                "In" | "NotIn" => {
                    if values.is_empty() {
                        errs.push(FieldError::required(
                            format!("{ep}.values"),
                            "must be specified when `operator` is 'In' or 'NotIn'",
                        ));
                    }
                }
                "Exists" | "DoesNotExist" => {
                    if !values.is_empty() {
                        errs.push(FieldError::forbidden(
                            format!("{ep}.values"),
                            "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
                        ));
                    }
                }
                "Gt" | "Lt" => {
                    if values.len() != 1 {
                        errs.push(FieldError::required(
                            format!("{ep}.values"),
                            "must be specified single value when `operator` is 'Lt' or 'Gt'",
                        ));
                    }
                }
                other => errs.push(FieldError::invalid(
                    format!("{ep}.operator"),
                    other,
                    "not a valid selector operator",
                )),
            }
        }
    }
}

/// ValidatePodSpec (the parts this server implements).
pub fn validate_pod_spec(spec: &Value, path: &str, errs: &mut Errs) {
    // Volumes: only valid ones can be mounted.
    let mut vols: BTreeMap<String, ()> = BTreeMap::new();
    for (i, v) in arr(spec, "volumes").iter().enumerate() {
        let ip = format!("{path}.volumes[{i}]");
        let mut el = Vec::new();
        validate_volume_source(v, &ip, &mut el);
        let name = s(v, "name").unwrap_or("");
        if name.is_empty() {
            el.push(FieldError::required(format!("{ip}.name"), ""));
        } else {
            validate_dns_label(name, &format!("{ip}.name"), &mut el);
        }
        if vols.contains_key(name) {
            el.push(FieldError::duplicate(format!("{ip}.name"), name));
        }
        if el.is_empty() {
            vols.insert(name.to_string(), ());
        } else {
            errs.extend(el);
        }
    }
    let containers = arr(spec, "containers");
    if containers.is_empty() {
        errs.push(FieldError::required(format!("{path}.containers"), ""));
    }
    let mut names: Vec<&str> = Vec::new();
    for (i, c) in containers.iter().enumerate() {
        let cp = format!("{path}.containers[{i}]");
        validate_container_common(c, &cp, &vols, errs);
        let name = s(c, "name").unwrap_or("");
        if names.contains(&name) {
            errs.push(FieldError::duplicate(format!("{cp}.name"), name));
        } else {
            names.push(name);
        }
        if c.get("restartPolicy").is_some_and(|v| !v.is_null()) {
            errs.push(FieldError::forbidden(
                format!("{cp}.restartPolicy"),
                "may not be set for non-init containers",
            ));
        }
    }
    for (i, c) in arr(spec, "initContainers").iter().enumerate() {
        let cp = format!("{path}.initContainers[{i}]");
        validate_container_common(c, &cp, &vols, errs);
        if let Some(rp) = s(c, "restartPolicy") {
            if rp != "Always" {
                errs.push(FieldError::not_supported(
                    format!("{cp}.restartPolicy"),
                    rp,
                    &["Always"],
                ));
            }
        }
        let name = s(c, "name").unwrap_or("");
        if names.contains(&name) {
            errs.push(FieldError::duplicate(format!("{cp}.name"), name));
        } else if !name.is_empty() {
            names.push(name);
        }
    }
    match s(spec, "restartPolicy").unwrap_or("") {
        "Always" | "OnFailure" | "Never" => {}
        "" => errs.push(FieldError::required(format!("{path}.restartPolicy"), "")),
        other => errs.push(FieldError::not_supported(
            format!("{path}.restartPolicy"),
            other,
            &["Always", "OnFailure", "Never"],
        )),
    }
    match s(spec, "dnsPolicy").unwrap_or("") {
        "ClusterFirstWithHostNet" | "ClusterFirst" | "Default" => {}
        "None" => {
            if spec.get("dnsConfig").is_none_or(Value::is_null) {
                errs.push(FieldError::required(
                    format!("{path}.dnsConfig"),
                    "must provide `dnsConfig` when `dnsPolicy` is None",
                ));
            }
        }
        "" => errs.push(FieldError::required(format!("{path}.dnsPolicy"), "")),
        other => errs.push(FieldError::not_supported(
            format!("{path}.dnsPolicy"),
            other,
            &["ClusterFirst", "ClusterFirstWithHostNet", "Default", "None"],
        )),
    }
    validate_labels(
        spec.get("nodeSelector"),
        &format!("{path}.nodeSelector"),
        errs,
    );
    if let Some(sc) = spec.get("securityContext").filter(|v| !v.is_null()) {
        let sp = format!("{path}.securityContext");
        id_range(sc, "runAsUser", &sp, errs);
        id_range(sc, "runAsGroup", &sp, errs);
        id_range(sc, "fsGroup", &sp, errs);
        for (i, g) in arr(sc, "supplementalGroups").iter().enumerate() {
            if let Some(g) = g.as_i64() {
                if !(0..=i64::from(i32::MAX)).contains(&g) {
                    errs.push(FieldError::invalid(
                        format!("{sp}.supplementalGroups[{i}]"),
                        &g,
                        "must be between 0 and 2147483647, inclusive",
                    ));
                }
            }
        }
        if let Some(p) = s(sc, "fsGroupChangePolicy") {
            if !["OnRootMismatch", "Always"].contains(&p) {
                errs.push(FieldError::not_supported(
                    format!("{sp}.fsGroupChangePolicy"),
                    p,
                    &["OnRootMismatch", "Always"],
                ));
            }
        }
        validate_seccomp(sc, &sp, errs);
    }
    validate_node_affinity(spec, path, errs);
    if let Some(sa) = s(spec, "serviceAccountName").filter(|s| !s.is_empty()) {
        for m in dns1123_subdomain_errors(sa) {
            errs.push(FieldError::invalid(
                format!("{path}.serviceAccountName"),
                sa,
                m,
            ));
        }
    }
    if let Some(n) = int(spec, "activeDeadlineSeconds") {
        if !(1..=i64::from(i32::MAX)).contains(&n) {
            errs.push(FieldError::invalid(
                format!("{path}.activeDeadlineSeconds"),
                &n,
                "must be between 1 and 2147483647, inclusive",
            ));
        }
    }
    if let Some(h) = s(spec, "hostname").filter(|s| !s.is_empty()) {
        validate_dns_label(h, &format!("{path}.hostname"), errs);
    }
    if let Some(h) = s(spec, "subdomain").filter(|s| !s.is_empty()) {
        validate_dns_label(h, &format!("{path}.subdomain"), errs);
    }
    // As the apiserver: each alias an IP address, each of its hostnames a DNS-1123 subdomain.
    for (i, alias) in arr(spec, "hostAliases").iter().enumerate() {
        let at = format!("{path}.hostAliases[{i}]");
        let ip = s(alias, "ip").unwrap_or("");
        if ip.parse::<std::net::IpAddr>().is_err() {
            errs.push(FieldError::invalid(
                format!("{at}.ip"),
                ip,
                "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
            ));
        }
        for (j, h) in arr(alias, "hostnames").iter().enumerate() {
            let h = h.as_str().unwrap_or("");
            for m in dns1123_subdomain_errors(h) {
                errs.push(FieldError::invalid(format!("{at}.hostnames[{j}]"), h, &m));
            }
        }
    }
    validate_tolerations(
        arr(spec, "tolerations"),
        &format!("{path}.tolerations"),
        errs,
    );
    nonneg(spec, "terminationGracePeriodSeconds", path, errs);
}

fn validate_job(job: &Value, errs: &mut Errs) {
    let meta = job.get("metadata").unwrap_or(&Value::Null);
    validate_meta(meta, NameRule::Subdomain, errs);
    let spec = job.get("spec").unwrap_or(&Value::Null);
    let name = s(meta, "name").unwrap_or("");
    let uid = s(meta, "uid").unwrap_or("");
    let manual = spec.get("manualSelector").and_then(Value::as_bool) == Some(true);
    let tlabels = spec.pointer("/template/metadata/labels");
    let tl = |k: &str| tlabels.and_then(|l| l.get(k)).and_then(Value::as_str);
    if !manual {
        // validateGeneratedSelector: user labels that conflict with the generated ones.
        for (k, want) in [
            ("controller-uid", uid),
            ("job-name", name),
            ("batch.kubernetes.io/controller-uid", uid),
            ("batch.kubernetes.io/job-name", name),
        ] {
            match tl(k) {
                Some(v) if v == want => {}
                Some(v) => errs.push(FieldError::invalid(
                    format!("spec.template.metadata.labels[{k}]"),
                    v,
                    format!("must be '{want}'"),
                )),
                None => errs.push(FieldError::required(
                    format!("spec.template.metadata.labels[{k}]"),
                    want,
                )),
            }
        }
    }
    let sp = "spec";
    nonneg(spec, "parallelism", sp, errs);
    nonneg(spec, "completions", sp, errs);
    nonneg(spec, "activeDeadlineSeconds", sp, errs);
    nonneg(spec, "backoffLimit", sp, errs);
    nonneg(spec, "ttlSecondsAfterFinished", sp, errs);
    nonneg(spec, "backoffLimitPerIndex", sp, errs);
    nonneg(spec, "maxFailedIndexes", sp, errs);
    let mode = s(spec, "completionMode").unwrap_or("NonIndexed");
    match mode {
        "NonIndexed" => {
            if let Some(b) = int(spec, "backoffLimitPerIndex") {
                errs.push(FieldError::invalid(
                    "spec.backoffLimitPerIndex",
                    &b,
                    "requires indexed completion mode",
                ));
            }
        }
        "Indexed" => {
            if int(spec, "completions").is_none() {
                errs.push(FieldError::required(
                    "spec.completions",
                    "when completion mode is Indexed",
                ));
            }
        }
        other => errs.push(FieldError::not_supported(
            "spec.completionMode",
            other,
            &["NonIndexed", "Indexed"],
        )),
    }
    if let Some(p) = s(spec, "podReplacementPolicy") {
        if !["Failed", "TerminatingOrFailed"].contains(&p) {
            errs.push(FieldError::not_supported(
                "spec.podReplacementPolicy",
                p,
                &["Failed", "TerminatingOrFailed"],
            ));
        }
    }
    let template = spec.get("template").unwrap_or(&Value::Null);
    validate_labels(tlabels, "spec.template.labels", errs);
    validate_annotations(
        template.pointer("/metadata/annotations"),
        "spec.template.annotations",
        errs,
    );
    let pod_spec = template.get("spec").unwrap_or(&Value::Null);
    validate_pod_spec(pod_spec, "spec.template.spec", errs);
    match s(pod_spec, "restartPolicy").unwrap_or("") {
        "" | "Always" => errs.push(FieldError::required(
            "spec.template.spec.restartPolicy",
            "valid values: \"OnFailure\", \"Never\"",
        )),
        "OnFailure" | "Never" => {
            if spec.get("podFailurePolicy").is_some_and(|p| !p.is_null())
                && s(pod_spec, "restartPolicy") != Some("Never")
            {
                errs.push(FieldError::invalid(
                    "spec.template.spec.restartPolicy",
                    s(pod_spec, "restartPolicy").unwrap_or(""),
                    "only \"Never\" is supported when podFailurePolicy is specified",
                ));
            }
        }
        other => errs.push(FieldError::not_supported(
            "spec.template.spec.restartPolicy",
            other,
            &["OnFailure", "Never"],
        )),
    }
    // The Job name is a label value on every pod (job-name); the selector's labels above
    // report it as spec.template.labels when too long.
}

fn validate_data_keys(obj: &Value, field: &str, errs: &mut Errs) {
    for k in map_of(obj, field).keys() {
        for m in config_key_errors(k) {
            errs.push(FieldError::invalid(format!("{field}[{k}]"), *k, m));
        }
    }
}

/// Validates an object about to be created (defaults applied). `Ok` or a 422.
pub fn validate_create(res: Res, object: &Value) -> Result<(), ApiError> {
    let mut errs = Vec::new();
    let meta = object.get("metadata").unwrap_or(&Value::Null);
    match res {
        Res::Job => validate_job(object, &mut errs),
        Res::Pod => {
            validate_meta(meta, NameRule::Subdomain, &mut errs);
            validate_pod_spec(
                object.get("spec").unwrap_or(&Value::Null),
                "spec",
                &mut errs,
            );
        }
        Res::Namespace => validate_meta(meta, NameRule::Label, &mut errs),
        Res::Secret => {
            validate_meta(meta, NameRule::Subdomain, &mut errs);
            validate_data_keys(object, "data", &mut errs);
            let size: usize = map_of(object, "data")
                .values()
                .map(|v| v.as_str().map_or(0, |s| s.len() * 3 / 4))
                .sum();
            if size > MAX_SECRET_SIZE {
                errs.push(FieldError::too_long("data", MAX_SECRET_SIZE));
            }
        }
        Res::ConfigMap => {
            validate_meta(meta, NameRule::Subdomain, &mut errs);
            validate_data_keys(object, "data", &mut errs);
            validate_data_keys(object, "binaryData", &mut errs);
            let data = map_of(object, "data");
            for k in map_of(object, "binaryData").keys() {
                if data.contains_key(k) {
                    errs.push(FieldError::invalid(
                        format!("data[{k}]"),
                        *k,
                        "duplicate of key present in binaryData",
                    ));
                }
            }
        }
        Res::PersistentVolumeClaim => {
            validate_meta(meta, NameRule::Subdomain, &mut errs);
            let spec = object.get("spec").unwrap_or(&Value::Null);
            let modes = arr(spec, "accessModes");
            if modes.is_empty() {
                errs.push(FieldError::required(
                    "spec.accessModes",
                    "at least 1 access mode is required",
                ));
            }
            for m in modes {
                let m = m.as_str().unwrap_or("");
                const MODES: &[&str] = &[
                    "ReadOnlyMany",
                    "ReadWriteMany",
                    "ReadWriteOnce",
                    "ReadWriteOncePod",
                ];
                if !MODES.contains(&m) {
                    errs.push(FieldError::not_supported("spec.accessModes", m, MODES));
                }
            }
            if modes.len() > 1 && modes.iter().any(|m| m == "ReadWriteOncePod") {
                errs.push(FieldError::forbidden(
                    "spec.accessModes",
                    "may not use ReadWriteOncePod with other access modes",
                ));
            }
            match spec
                .pointer("/resources/requests/storage")
                .and_then(Value::as_str)
            {
                None => errs.push(FieldError::required("spec.resources[storage]", "")),
                Some(q) => {
                    if parse_quantity(q).is_some_and(|v| v <= 0.0) {
                        errs.push(FieldError::invalid(
                            "spec.resources[storage]",
                            q,
                            "must be greater than zero",
                        ));
                    }
                }
            }
        }
        Res::Event | Res::ServiceAccount => validate_meta(meta, NameRule::Subdomain, &mut errs),
        Res::PriorityClass => {
            validate_meta(meta, NameRule::Subdomain, &mut errs);
            let name = s(meta, "name").unwrap_or("");
            let value = int(object, "value").unwrap_or(0);
            if name.starts_with("system-") {
                errs.push(FieldError::forbidden(
                    "metadata.name",
                    format!("priority class names with 'system-' prefix are reserved for system use only. error: {name:?} is not a known system priority class"),
                ));
            } else if value > 1_000_000_000 {
                errs.push(FieldError::forbidden(
                    "value",
                    "maximum allowed value of a user defined priority is 1000000000",
                ));
            }
            if let Some(p) = s(object, "preemptionPolicy") {
                if !["PreemptLowerPriority", "Never"].contains(&p) {
                    errs.push(FieldError::not_supported(
                        "preemptionPolicy",
                        p,
                        &["Never", "PreemptLowerPriority"],
                    ));
                }
            }
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::invalid(
            res.group(),
            res.kind(),
            s(meta, "name").unwrap_or(""),
            &errs,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_aliases_need_an_ip_and_subdomain_hostnames() {
        let spec = json!({"hostAliases": [
            {"ip": "127.0.0.1", "hostnames": ["cache", "db.internal"]},
            {"ip": "localhost", "hostnames": ["My DB"]}
        ]});
        let mut errs = Vec::new();
        validate_pod_spec(&spec, "spec", &mut errs);
        let fields: Vec<&str> = errs
            .iter()
            .map(|e| e.field.as_str())
            .filter(|f| f.contains("hostAliases"))
            .collect();
        assert_eq!(
            fields,
            ["spec.hostAliases[1].ip", "spec.hostAliases[1].hostnames[0]"]
        );
    }

    #[test]
    fn label_messages_match_apimachinery() {
        assert_eq!(
            dns1123_label_errors("Foo"),
            vec!["a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"]
        );
        assert_eq!(dns1123_label_errors("a.b"), vec!["must not contain dots"]);
        assert!(label_key_errors("example.com/x").is_empty());
        assert_eq!(
            label_key_errors("/x"),
            vec!["prefix part must be non-empty"]
        );
        assert!(label_value_errors(&"x".repeat(64))[0].contains("63"));
    }

    #[test]
    fn quantities_print_canonically() {
        for (q, want) in [
            ("2", "2"),
            ("2000m", "2"),
            ("0.5", "500m"),
            ("1.5", "1500m"),
            ("1000", "1k"),
            ("1500", "1500"),
            ("1024Mi", "1Gi"),
            ("1.5Gi", "1536Mi"),
            ("100Mi", "100Mi"),
            ("512Ki", "512Ki"),
            ("0.5Ki", "512"),
            ("1e3", "1e3"),
            ("0", "0"),
            ("-1", "-1"),
            ("128974848", "128974848"),
            ("129e6", "129e6"),
            ("129M", "129M"),
        ] {
            assert_eq!(canonical_quantity(q).as_deref(), Some(want), "{q}");
        }
    }

    #[test]
    fn quantities_parse() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("1Gi"), Some(1073741824.0));
        assert_eq!(parse_quantity("1e3"), Some(1000.0));
        assert_eq!(parse_quantity("abc"), None);
        assert_eq!(parse_quantity("1.2.3"), None);
    }

    #[test]
    fn strict_decoding_lists_fields_in_document_order_with_duplicates() {
        let raw = br#"{"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "name": "b", "zzz": 1},
            "dta": {}, "data": {"k": "v"}}"#;
        let e = decode_bytes(Res::ConfigMap, raw, FieldValidation::Strict)
            .err()
            .unwrap();
        assert_eq!(
            e.message,
            "ConfigMap in version \"v1\" cannot be handled as a ConfigMap: strict decoding error: duplicate field \"metadata.name\", unknown field \"metadata.zzz\", unknown field \"dta\""
        );
        let ok = decode_bytes(Res::ConfigMap, raw, FieldValidation::Warn).unwrap();
        assert_eq!(ok.warnings.len(), 3);
        assert_eq!(ok.body["metadata"]["name"], "b");
    }

    #[test]
    fn strict_decoding_finds_nested_unknown_fields() {
        let body = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"},
            "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "b", "foo": 1}]}}}});
        let e = decode(Res::Job, body, FieldValidation::Strict)
            .err()
            .unwrap();
        assert_eq!(e.code, 400);
        assert_eq!(
            e.message,
            "Job in version \"v1\" cannot be handled as a Job: strict decoding error: unknown field \"spec.template.spec.containers[0].foo\""
        );
    }
}
