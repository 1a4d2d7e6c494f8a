//! Kubernetes dependent-variable expansion, as applied to `env[].value`, `command`, `args` and
//! `subPathExpr`:
//!
//! * `$(NAME)` becomes the value of `NAME` when it is defined, and stays `$(NAME)` otherwise;
//! * `$$` is an escape for a single `$`, so `$$(NAME)` becomes the literal `$(NAME)`;
//! * any other `$` (including an unterminated `$(`) is kept as it is.
//!
//! Values are bytes because secret data need not be UTF-8.

/// Expands `input` with `lookup`, which returns the value of a variable if it is defined.
pub(crate) fn expand<'a>(input: &[u8], lookup: impl Fn(&[u8]) -> Option<&'a [u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        let b = input[i];
        if b != b'$' || i + 1 >= input.len() {
            out.push(b);
            i += 1;
            continue;
        }
        match input[i + 1] {
            b'$' => {
                out.push(b'$');
                i += 2;
            }
            b'(' => {
                let rest = &input[i + 2..];
                match rest.iter().position(|&c| c == b')') {
                    Some(end) => {
                        let name = &rest[..end];
                        match lookup(name) {
                            Some(value) if !name.is_empty() => out.extend_from_slice(value),
                            _ => out.extend_from_slice(&input[i..i + 2 + end + 1]),
                        }
                        i += 2 + end + 1;
                    }
                    None => {
                        // Unterminated reference: the rest of the input is literal.
                        out.extend_from_slice(&input[i..]);
                        i = input.len();
                    }
                }
            }
            other => {
                out.push(b'$');
                out.push(other);
                i += 2;
            }
        }
    }
    out
}

/// An ordered set of environment variables in which a later definition replaces an earlier one
/// (in place, as the kubelet does).
#[derive(Debug, Default, Clone)]
pub(crate) struct EnvList {
    vars: Vec<(String, Vec<u8>)>,
}

impl EnvList {
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.vars
            .iter()
            .find(|(n, _)| n.as_bytes() == name)
            .map(|(_, v)| v.as_slice())
    }

    pub fn set(&mut self, name: &str, value: Vec<u8>) {
        match self.vars.iter_mut().find(|(n, _)| n == name) {
            Some(slot) => slot.1 = value,
            None => self.vars.push((name.to_string(), value)),
        }
    }

    pub fn expand(&self, input: &[u8]) -> Vec<u8> {
        expand(input, |name| self.get(name))
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.vars.iter().map(|(n, v)| (n.as_str(), v.as_slice()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> EnvList {
        let mut e = EnvList::default();
        for (n, v) in pairs {
            e.set(n, v.as_bytes().to_vec());
        }
        e
    }

    fn x(e: &EnvList, s: &str) -> String {
        String::from_utf8(e.expand(s.as_bytes())).expect("utf8")
    }

    #[test]
    fn expands_defined_references() {
        let e = env(&[("A", "1"), ("B", "two")]);
        assert_eq!(x(&e, "$(A)-$(B)"), "1-two");
        assert_eq!(x(&e, "pre$(A)post"), "pre1post");
    }

    #[test]
    fn keeps_undefined_references() {
        let e = env(&[("A", "1")]);
        assert_eq!(x(&e, "$(NOPE) $(A)"), "$(NOPE) 1");
        assert_eq!(x(&e, "$()"), "$()");
    }

    #[test]
    fn escapes() {
        let e = env(&[("A", "1")]);
        assert_eq!(x(&e, "$$(A)"), "$(A)");
        assert_eq!(x(&e, "$$$(A)"), "$1");
        assert_eq!(x(&e, "$$"), "$");
        assert_eq!(x(&e, "a$b"), "a$b");
        assert_eq!(x(&e, "cost: 5$"), "cost: 5$");
        assert_eq!(x(&e, "$(A"), "$(A");
        assert_eq!(x(&e, "x$(A$(A)"), "x$(A$(A)");
    }

    #[test]
    fn later_definitions_replace_earlier_ones_in_place() {
        let mut e = env(&[("A", "1"), ("B", "2")]);
        e.set("A", b"3".to_vec());
        let all: Vec<_> = e.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect();
        assert_eq!(
            all,
            vec![("A".into(), b"3".to_vec()), ("B".into(), b"2".to_vec())]
        );
    }
}
