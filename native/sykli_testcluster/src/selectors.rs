//! Label selectors (`labelSelector=`, apimachinery's labels.Parse grammar) and field
//! selectors (`fieldSelector=`, with the field labels the real server supports per type).

use serde_json::Value;

use crate::resources::Res;
use crate::status::ApiError;
use crate::validation::{label_key_errors, label_value_errors};

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Eq,
    NotEq,
    In,
    NotIn,
    Exists,
    DoesNotExist,
    Gt,
    Lt,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Requirement {
    pub key: String,
    pub op: Op,
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector {
    pub reqs: Vec<Requirement>,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Eq,
    DoubleEq,
    NotEq,
    Bang,
    Open,
    Close,
    Comma,
    Gt,
    Lt,
}

fn lex(s: &str) -> Result<Vec<Tok>, String> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        match c {
            ' ' | '\t' | '\n' | '\r' => i += 1,
            ',' => {
                out.push(Tok::Comma);
                i += 1;
            }
            '(' => {
                out.push(Tok::Open);
                i += 1;
            }
            ')' => {
                out.push(Tok::Close);
                i += 1;
            }
            '>' => {
                out.push(Tok::Gt);
                i += 1;
            }
            '<' => {
                out.push(Tok::Lt);
                i += 1;
            }
            '=' => {
                if chars.get(i + 1) == Some(&'=') {
                    out.push(Tok::DoubleEq);
                    i += 2;
                } else {
                    out.push(Tok::Eq);
                    i += 1;
                }
            }
            '!' => {
                if chars.get(i + 1) == Some(&'=') {
                    out.push(Tok::NotEq);
                    i += 2;
                } else {
                    out.push(Tok::Bang);
                    i += 1;
                }
            }
            _ => {
                let start = i;
                while i < chars.len() && !" \t\n\r,()<>=!".contains(chars[i]) {
                    i += 1;
                }
                out.push(Tok::Ident(chars[start..i].iter().collect()));
            }
        }
    }
    Ok(out)
}

fn parse_err(msg: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("unable to parse requirement: {msg}"))
}

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, ApiError> {
        let toks = lex(s).map_err(parse_err)?;
        let mut reqs = Vec::new();
        let mut i = 0;
        if toks.is_empty() {
            return Ok(LabelSelector::default());
        }
        loop {
            let mut negate = false;
            if toks.get(i) == Some(&Tok::Bang) {
                negate = true;
                i += 1;
            }
            let key = match toks.get(i) {
                Some(Tok::Ident(k)) => k.clone(),
                other => {
                    return Err(ApiError::bad_request(format!(
                        "found '{}', expected: identifier",
                        tok_text(other)
                    )))
                }
            };
            i += 1;
            check_key(&key)?;
            if negate {
                reqs.push(Requirement {
                    key,
                    op: Op::DoesNotExist,
                    values: vec![],
                });
            } else {
                match toks.get(i) {
                    None | Some(Tok::Comma) => reqs.push(Requirement {
                        key,
                        op: Op::Exists,
                        values: vec![],
                    }),
                    Some(Tok::Eq | Tok::DoubleEq | Tok::NotEq) => {
                        let op = if toks[i] == Tok::NotEq {
                            Op::NotEq
                        } else {
                            Op::Eq
                        };
                        i += 1;
                        let v = match toks.get(i) {
                            Some(Tok::Ident(v)) => {
                                i += 1;
                                v.clone()
                            }
                            // `key=` selects the empty value.
                            None | Some(Tok::Comma) => String::new(),
                            other => {
                                return Err(ApiError::bad_request(format!(
                                    "found '{}', expected: identifier",
                                    tok_text(other)
                                )))
                            }
                        };
                        check_value(&v)?;
                        reqs.push(Requirement {
                            key,
                            op,
                            values: vec![v],
                        });
                    }
                    Some(Tok::Gt | Tok::Lt) => {
                        let op = if toks[i] == Tok::Gt { Op::Gt } else { Op::Lt };
                        i += 1;
                        let v = match toks.get(i) {
                            Some(Tok::Ident(v)) => v.clone(),
                            other => {
                                return Err(ApiError::bad_request(format!(
                                    "found '{}', expected: integer",
                                    tok_text(other)
                                )))
                            }
                        };
                        i += 1;
                        if v.parse::<i64>().is_err() {
                            return Err(parse_err(format!(
                                "for 'Gt', 'Lt' operators, the value must be an integer: {v}"
                            )));
                        }
                        reqs.push(Requirement {
                            key,
                            op,
                            values: vec![v],
                        });
                    }
                    Some(Tok::Ident(w)) if w == "in" || w == "notin" => {
                        let op = if w == "in" { Op::In } else { Op::NotIn };
                        i += 1;
                        if toks.get(i) != Some(&Tok::Open) {
                            return Err(ApiError::bad_request(format!(
                                "found '{}', expected: '('",
                                tok_text(toks.get(i))
                            )));
                        }
                        i += 1;
                        let mut values = Vec::new();
                        loop {
                            match toks.get(i) {
                                Some(Tok::Ident(v)) => {
                                    check_value(v)?;
                                    values.push(v.clone());
                                    i += 1;
                                }
                                Some(Tok::Comma) | Some(Tok::Close) => values.push(String::new()),
                                other => {
                                    return Err(ApiError::bad_request(format!(
                                        "found '{}', expected: ',', ')' or identifier",
                                        tok_text(other)
                                    )))
                                }
                            }
                            match toks.get(i) {
                                Some(Tok::Comma) => i += 1,
                                Some(Tok::Close) => {
                                    i += 1;
                                    break;
                                }
                                other => {
                                    return Err(ApiError::bad_request(format!(
                                        "found '{}', expected: ',' or ')'",
                                        tok_text(other)
                                    )))
                                }
                            }
                        }
                        reqs.push(Requirement { key, op, values });
                    }
                    other => {
                        return Err(ApiError::bad_request(format!(
                            "found '{}', expected: in, notin, =, ==, !=, gt, lt",
                            tok_text(other)
                        )))
                    }
                }
            }
            match toks.get(i) {
                None => break,
                Some(Tok::Comma) => {
                    i += 1;
                    if i >= toks.len() {
                        return Err(ApiError::bad_request(
                            "found '', expected: identifier after ','",
                        ));
                    }
                }
                other => {
                    return Err(ApiError::bad_request(format!(
                        "found '{}', expected: ',' or 'end of string'",
                        tok_text(other)
                    )))
                }
            }
        }
        Ok(LabelSelector { reqs })
    }

    pub fn is_empty(&self) -> bool {
        self.reqs.is_empty()
    }

    /// Whether `labels` (a JSON object or null) satisfies every requirement.
    pub fn matches(&self, labels: Option<&Value>) -> bool {
        let get = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        self.reqs.iter().all(|r| {
            let v = get(&r.key);
            match r.op {
                Op::Eq => v == Some(r.values[0].as_str()),
                Op::NotEq => v != Some(r.values[0].as_str()),
                Op::In => v.is_some_and(|v| r.values.iter().any(|x| x == v)),
                Op::NotIn => v.is_none_or(|v| !r.values.iter().any(|x| x == v)),
                Op::Exists => v.is_some(),
                Op::DoesNotExist => v.is_none(),
                Op::Gt | Op::Lt => {
                    let (Some(v), Ok(bound)) = (
                        v.and_then(|v| v.parse::<i64>().ok()),
                        r.values[0].parse::<i64>(),
                    ) else {
                        return false;
                    };
                    if r.op == Op::Gt {
                        v > bound
                    } else {
                        v < bound
                    }
                }
            }
        })
    }
}

fn tok_text(t: Option<&Tok>) -> String {
    match t {
        None => String::new(),
        Some(Tok::Ident(s)) => s.clone(),
        Some(Tok::Eq) => "=".into(),
        Some(Tok::DoubleEq) => "==".into(),
        Some(Tok::NotEq) => "!=".into(),
        Some(Tok::Bang) => "!".into(),
        Some(Tok::Open) => "(".into(),
        Some(Tok::Close) => ")".into(),
        Some(Tok::Comma) => ",".into(),
        Some(Tok::Gt) => ">".into(),
        Some(Tok::Lt) => "<".into(),
    }
}

fn check_key(k: &str) -> Result<(), ApiError> {
    let errs = label_key_errors(k);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(parse_err(format!(
            "key: Invalid value: {}: {}",
            crate::util::go_quote(k),
            errs.join("; ")
        )))
    }
}

fn check_value(v: &str) -> Result<(), ApiError> {
    let errs = label_value_errors(v);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(parse_err(format!(
            "values[0]: Invalid value: {}: {}",
            crate::util::go_quote(v),
            errs.join("; ")
        )))
    }
}

/// One `field=value` / `field!=value` term.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldTerm {
    pub field: String,
    pub value: String,
    pub negate: bool,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector {
    pub terms: Vec<FieldTerm>,
}

impl FieldSelector {
    /// Parses and checks every field label against what `res` supports.
    pub fn parse(s: &str, res: Res) -> Result<Self, ApiError> {
        let mut terms = Vec::new();
        for part in split_unescaped(s, ',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (field, value, negate) = if let Some((f, v)) = part.split_once("!=") {
                (f, v, true)
            } else if let Some((f, v)) = part.split_once("==") {
                (f, v, false)
            } else if let Some((f, v)) = part.split_once('=') {
                (f, v, false)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            let field = field.trim().to_string();
            if field != "metadata.name"
                && field != "metadata.namespace"
                && !res.field_labels().contains(&field.as_str())
            {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
            terms.push(FieldTerm {
                field,
                value: unescape(value.trim()),
                negate,
            });
        }
        Ok(FieldSelector { terms })
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// The name a `metadata.name=` term pins, if any.
    pub fn name(&self) -> Option<&str> {
        self.terms
            .iter()
            .find(|t| t.field == "metadata.name" && !t.negate)
            .map(|t| t.value.as_str())
    }

    pub fn matches(&self, res: Res, obj: &Value) -> bool {
        self.terms.iter().all(|t| {
            let v = field_value(res, obj, &t.field);
            (v == t.value) != t.negate
        })
    }
}

fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            cur.push('\\');
            cur.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut escaped = false;
    for c in s.chars() {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else {
            out.push(c);
        }
    }
    out
}

/// The value a field label has on an object, as the registry's GetAttrs computes it.
pub fn field_value(res: Res, obj: &Value, field: &str) -> String {
    let s = |p: &str| {
        obj.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    match field {
        "metadata.name" => s("/metadata/name"),
        "metadata.namespace" => s("/metadata/namespace"),
        "spec.nodeName" => s("/spec/nodeName"),
        "spec.restartPolicy" => s("/spec/restartPolicy"),
        "spec.schedulerName" => s("/spec/schedulerName"),
        "spec.serviceAccountName" => s("/spec/serviceAccountName"),
        "spec.hostNetwork" => obj
            .pointer("/spec/hostNetwork")
            .and_then(Value::as_bool)
            .unwrap_or(false)
            .to_string(),
        "status.phase" => s("/status/phase"),
        "status.podIP" => s("/status/podIP"),
        "status.podIPs" => s("/status/podIPs/0/ip"),
        "status.nominatedNodeName" => s("/status/nominatedNodeName"),
        "type" => s("/type"),
        "status.successful" => obj
            .pointer("/status/succeeded")
            .and_then(Value::as_i64)
            .unwrap_or(0)
            .to_string(),
        "source" => s("/source/component"),
        f if res == Res::Event => {
            let p = format!("/{}", f.replace('.', "/"));
            s(&p)
        }
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_every_operator() {
        let sel = LabelSelector::parse("a=b,c==d,e!=f,g in (x, y),h notin (z),i,!j").unwrap();
        assert_eq!(sel.reqs.len(), 7);
        let labels = json!({"a": "b", "c": "d", "e": "q", "g": "y", "h": "w", "i": ""});
        assert!(sel.matches(Some(&labels)));
        let labels = json!({"a": "b", "c": "d", "g": "y", "i": "", "j": "1"});
        assert!(!sel.matches(Some(&labels)));
        assert!(LabelSelector::parse("a=b,").is_err());
        assert!(LabelSelector::parse("a in x").is_err());
        assert!(LabelSelector::parse("-bad=x").is_err());
    }

    #[test]
    fn field_selectors_are_checked_per_type() {
        assert!(FieldSelector::parse("status.phase=Running", Res::Pod).is_ok());
        let e = FieldSelector::parse("spec.foo=bar", Res::Pod).unwrap_err();
        assert_eq!(e.message, "field label not supported: spec.foo");
        assert_eq!(e.code, 400);
        let sel = FieldSelector::parse("metadata.name!=a", Res::Job).unwrap();
        assert!(sel.matches(Res::Job, &json!({"metadata": {"name": "b"}})));
    }
}
