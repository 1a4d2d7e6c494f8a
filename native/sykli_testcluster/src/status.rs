//! Errors as the API server reports them: `Status` objects (k8s.io/apimachinery
//! pkg/api/errors), and validation errors as `field.Error`s.

use serde_json::{json, Map, Value};

use crate::util::go_quote;

/// One `field.Error`: its type decides the cause's `reason` and the message's first words.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub kind: FieldErrorKind,
    pub field: String,
    /// The bad value as Go would print it (already quoted for strings); None: not shown.
    pub value: Option<String>,
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldErrorKind {
    Required,
    Invalid,
    Duplicate,
    NotSupported,
    NotFound,
    Forbidden,
    TooLong,
    TooMany,
}

impl FieldErrorKind {
    /// `metav1.CauseType`.
    pub fn cause(self) -> &'static str {
        match self {
            FieldErrorKind::Required => "FieldValueRequired",
            FieldErrorKind::Invalid => "FieldValueInvalid",
            FieldErrorKind::Duplicate => "FieldValueDuplicate",
            FieldErrorKind::NotSupported => "FieldValueNotSupported",
            FieldErrorKind::NotFound => "FieldValueNotFound",
            FieldErrorKind::Forbidden => "FieldValueForbidden",
            FieldErrorKind::TooLong => "FieldValueTooLong",
            FieldErrorKind::TooMany => "FieldValueTooMany",
        }
    }

    /// `field.ErrorType.String()`.
    pub fn text(self) -> &'static str {
        match self {
            FieldErrorKind::Required => "Required value",
            FieldErrorKind::Invalid => "Invalid value",
            FieldErrorKind::Duplicate => "Duplicate value",
            FieldErrorKind::NotSupported => "Unsupported value",
            FieldErrorKind::NotFound => "Not found",
            FieldErrorKind::Forbidden => "Forbidden",
            FieldErrorKind::TooLong => "Too long",
            FieldErrorKind::TooMany => "Too many",
        }
    }
}

/// A value rendered as field.Error renders it.
pub trait GoValue {
    fn go(&self) -> String;
}

impl GoValue for str {
    fn go(&self) -> String {
        go_quote(self)
    }
}
impl GoValue for String {
    fn go(&self) -> String {
        go_quote(self)
    }
}
impl GoValue for i64 {
    fn go(&self) -> String {
        self.to_string()
    }
}
impl GoValue for i32 {
    fn go(&self) -> String {
        self.to_string()
    }
}

impl FieldError {
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError {
            kind: FieldErrorKind::Required,
            field: field.into(),
            value: None,
            detail: detail.into(),
        }
    }

    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        FieldError {
            kind: FieldErrorKind::Forbidden,
            field: field.into(),
            value: None,
            detail: detail.into(),
        }
    }

    pub fn invalid<V: GoValue + ?Sized>(
        field: impl Into<String>,
        value: &V,
        detail: impl Into<String>,
    ) -> Self {
        FieldError {
            kind: FieldErrorKind::Invalid,
            field: field.into(),
            value: Some(value.go()),
            detail: detail.into(),
        }
    }

    pub fn duplicate<V: GoValue + ?Sized>(field: impl Into<String>, value: &V) -> Self {
        FieldError {
            kind: FieldErrorKind::Duplicate,
            field: field.into(),
            value: Some(value.go()),
            detail: String::new(),
        }
    }

    pub fn not_found<V: GoValue + ?Sized>(field: impl Into<String>, value: &V) -> Self {
        FieldError {
            kind: FieldErrorKind::NotFound,
            field: field.into(),
            value: Some(value.go()),
            detail: String::new(),
        }
    }

    /// `field.NotSupported`: the detail lists the supported values, quoted.
    pub fn not_supported(field: impl Into<String>, value: &str, supported: &[&str]) -> Self {
        let list: Vec<String> = supported.iter().map(|s| go_quote(s)).collect();
        FieldError {
            kind: FieldErrorKind::NotSupported,
            field: field.into(),
            value: Some(go_quote(value)),
            detail: format!("supported values: {}", list.join(", ")),
        }
    }

    /// `field.TooLong` with a maximum length in bytes.
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        FieldError {
            kind: FieldErrorKind::TooLong,
            field: field.into(),
            value: None,
            detail: format!(
                "may not be more than {max} {}",
                if max == 1 { "byte" } else { "bytes" }
            ),
        }
    }

    /// `field.Error.ErrorBody()`: the cause's message.
    pub fn body(&self) -> String {
        let mut s = match (&self.kind, &self.value) {
            (
                FieldErrorKind::Required
                | FieldErrorKind::Forbidden
                | FieldErrorKind::TooLong
                | FieldErrorKind::TooMany,
                _,
            )
            | (_, None) => self.kind.text().to_string(),
            (_, Some(v)) => format!("{}: {v}", self.kind.text()),
        };
        if !self.detail.is_empty() {
            s.push_str(": ");
            s.push_str(&self.detail);
        }
        s
    }

    /// `field.Error.Error()`.
    pub fn full(&self) -> String {
        format!("{}: {}", self.field, self.body())
    }
}

/// An error response: HTTP code plus the Status object.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
    /// Extra response headers (Retry-After for 429).
    pub headers: Vec<(&'static str, String)>,
}

/// What a resource is called in error messages and details: `jobs.batch`, `pods`.
#[derive(Debug, Clone, Copy)]
pub struct Qualified<'a> {
    pub group: &'a str,
    pub plural: &'a str,
}

impl Qualified<'_> {
    pub fn resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.to_string()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: None,
            headers: Vec::new(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }

    pub fn unauthorized() -> Self {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    /// RBAC's denial, worded as the authorizer words it.
    pub fn forbidden(
        user: &str,
        verb: &str,
        q: Qualified<'_>,
        subresource: Option<&str>,
        name: Option<&str>,
        namespace: Option<&str>,
    ) -> Self {
        let resource = match subresource {
            Some(s) => format!("{}/{s}", q.plural),
            None => q.plural.to_string(),
        };
        let mut message = match name {
            Some(n) => format!("{} {} is forbidden: ", q.resource(), go_quote(n)),
            None => format!("{} is forbidden: ", q.resource()),
        };
        message.push_str(&format!(
            "User {} cannot {verb} resource {} in API group {}",
            go_quote(user),
            go_quote(&resource),
            go_quote(q.group)
        ));
        match namespace {
            Some(ns) => message.push_str(&format!(" in the namespace {}", go_quote(ns))),
            None => message.push_str(" at the cluster scope"),
        }
        let mut e = ApiError::new(403, "Forbidden", message);
        e.details = Some(details(name, q));
        e
    }

    pub fn not_found(q: Qualified<'_>, name: &str) -> Self {
        let mut e = ApiError::new(
            404,
            "NotFound",
            format!("{} {} not found", q.resource(), go_quote(name)),
        );
        e.details = Some(details(Some(name), q));
        e
    }

    /// A path the server does not serve.
    pub fn no_route() -> Self {
        let mut e = ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
        e.details = Some(json!({}));
        e
    }

    pub fn method_not_allowed() -> Self {
        let mut e = ApiError::new(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        );
        e.details = Some(json!({}));
        e
    }

    pub fn already_exists(q: Qualified<'_>, name: &str) -> Self {
        let mut e = ApiError::new(
            409,
            "AlreadyExists",
            format!("{} {} already exists", q.resource(), go_quote(name)),
        );
        e.details = Some(details(Some(name), q));
        e
    }

    pub fn conflict(q: Qualified<'_>, name: &str, why: &str) -> Self {
        let mut e = ApiError::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {}: {why}",
                q.resource(),
                go_quote(name)
            ),
        );
        e.details = Some(details(Some(name), q));
        e
    }

    /// 422 with the causes; `kind` is the qualified kind (`Job.batch`, `Pod`).
    pub fn invalid(group: &str, kind: &str, name: &str, errs: &[FieldError]) -> Self {
        let qualified = if group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{group}")
        };
        // errs.ToAggregate(): duplicate messages are dropped, one error stands alone.
        let mut seen = Vec::<String>::new();
        for e in errs {
            let m = e.full();
            if !seen.contains(&m) {
                seen.push(m);
            }
        }
        let message = match seen.len() {
            0 => format!("{qualified} {} is invalid", go_quote(name)),
            1 => format!("{qualified} {} is invalid: {}", go_quote(name), seen[0]),
            _ => format!(
                "{qualified} {} is invalid: [{}]",
                go_quote(name),
                seen.join(", ")
            ),
        };
        let causes: Vec<Value> = errs
            .iter()
            .map(|e| json!({"reason": e.kind.cause(), "message": e.body(), "field": e.field}))
            .collect();
        let mut d = Map::new();
        d.insert("name".into(), json!(name));
        if !group.is_empty() {
            d.insert("group".into(), json!(group));
        }
        d.insert("kind".into(), json!(kind));
        d.insert("causes".into(), Value::Array(causes));
        let mut e = ApiError::new(422, "Invalid", message);
        e.details = Some(Value::Object(d));
        e
    }

    /// The watch cache's answer to a resourceVersion it no longer has.
    pub fn expired(message: impl Into<String>) -> Self {
        ApiError::new(410, "Expired", message)
    }

    /// The watch cache's answer to a resourceVersion it has not reached (504 Timeout).
    pub fn too_large_resource_version(requested: u64, current: u64) -> Self {
        let mut e = ApiError::new(
            504,
            "Timeout",
            format!("Timeout: Too large resource version: {requested}, current: {current}"),
        );
        e.details = Some(json!({
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
            "retryAfterSeconds": 1
        }));
        e
    }

    pub fn gone(message: impl Into<String>) -> Self {
        ApiError::new(410, "Gone", message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        let mut e = ApiError::new(
            500,
            "InternalError",
            format!("Internal error occurred: {message}"),
        );
        e.details = Some(json!({"causes": [{"message": message}]}));
        e
    }

    pub fn service_unavailable() -> Self {
        ApiError::new(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request",
        )
    }

    pub fn too_many_requests() -> Self {
        let mut e = ApiError::new(
            429,
            "TooManyRequests",
            "the server has received too many requests and has asked us to try again later",
        );
        e.details = Some(json!({"retryAfterSeconds": 1}));
        e.headers.push(("Retry-After", "1".into()));
        e
    }

    pub fn unsupported_media_type(content_type: &str) -> Self {
        ApiError::new(
            415,
            "UnsupportedMediaType",
            format!("the body of the request was in an unknown format - accepted media types include: application/json (got {content_type})"),
        )
    }

    pub fn forbidden_message(message: impl Into<String>) -> Self {
        ApiError::new(403, "Forbidden", message)
    }

    /// The `Status` object.
    pub fn to_status(&self) -> Value {
        let mut m = Map::new();
        m.insert("kind".into(), json!("Status"));
        m.insert("apiVersion".into(), json!("v1"));
        m.insert("metadata".into(), json!({}));
        m.insert("status".into(), json!("Failure"));
        m.insert("message".into(), json!(self.message));
        m.insert("reason".into(), json!(self.reason));
        if let Some(d) = &self.details {
            m.insert("details".into(), d.clone());
        }
        m.insert("code".into(), json!(self.code));
        Value::Object(m)
    }
}

fn details(name: Option<&str>, q: Qualified<'_>) -> Value {
    let mut d = Map::new();
    if let Some(n) = name {
        d.insert("name".into(), json!(n));
    }
    if !q.group.is_empty() {
        d.insert("group".into(), json!(q.group));
    }
    d.insert("kind".into(), json!(q.plural));
    Value::Object(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_errors_read_like_apimachinery() {
        let e = FieldError::invalid(
            "spec.backoffLimit",
            &-1i64,
            "must be greater than or equal to 0",
        );
        assert_eq!(
            e.full(),
            "spec.backoffLimit: Invalid value: -1: must be greater than or equal to 0"
        );
        let e = FieldError::required("spec.template.spec.containers[0].image", "");
        assert_eq!(e.body(), "Required value");
        let e = FieldError::not_supported("x", "Always", &["OnFailure", "Never"]);
        assert_eq!(
            e.body(),
            "Unsupported value: \"Always\": supported values: \"OnFailure\", \"Never\""
        );
        let st = ApiError::invalid("batch", "Job", "j", &[e.clone(), e]).to_status();
        assert_eq!(st["code"], 422);
        assert_eq!(st["details"]["causes"].as_array().unwrap().len(), 2);
        assert!(!st["message"].as_str().unwrap().contains('['));
    }
}
