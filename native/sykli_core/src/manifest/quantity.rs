//! Kubernetes resource quantities, checked as the API server would, with a hint for the
//! mistakes people make ("32gb" → "32Gi"; "512m" of memory is half a byte).

const SUFFIXES: &[&str] = &[
    "", "n", "u", "m", "k", "M", "G", "T", "P", "E", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei",
];

/// The quantity's value in base units (bytes, cores), or why it is not a quantity.
pub fn parse(q: &str) -> Result<f64, String> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let digits = number.trim_start_matches(['+', '-']);
    let valid_number = !digits.is_empty()
        && digits.chars().filter(|&c| c == '.').count() <= 1
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits != "."
        && number.len() - digits.len() <= 1;
    if !valid_number {
        return Err("is not a number with an optional unit".into());
    }
    let value: f64 = number.parse().map_err(|_| "is not a number".to_string())?;
    let scale = match suffix {
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
        s if (s.starts_with('e') || s.starts_with('E'))
            && s[1..]
                .trim_start_matches(['+', '-'])
                .chars()
                .all(|c| c.is_ascii_digit())
            && s.len() > 1 =>
        {
            10f64.powi(
                s[1..]
                    .parse::<i32>()
                    .map_err(|_| "has a bad exponent".to_string())?,
            )
        }
        _ => {
            return Err(format!(
                "has the unknown unit {suffix:?} (units: {})",
                SUFFIXES[1..].join(", ")
            ))
        }
    };
    Ok(value * scale)
}

/// Checks a memory or CPU quantity, with a "did you mean" for common mistakes.
pub fn check(kind: Kind, q: &str) -> Result<f64, String> {
    let value = parse(q).map_err(|why| {
        let mut msg = format!("{q:?} {why}");
        if let Some(hint) = hint(kind, q) {
            msg.push_str(&format!("; did you mean {hint:?}?"));
        }
        msg
    })?;
    if value < 0.0 {
        return Err(format!("{q:?} is negative"));
    }
    if kind == Kind::Memory && q.trim().ends_with('m') {
        let n = q.trim().trim_end_matches('m');
        return Err(format!(
            "{q:?} means {n} thousandths of a byte; did you mean \"{n}Mi\"?"
        ));
    }
    Ok(value)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Memory,
    Cpu,
    Other,
}

fn hint(kind: Kind, q: &str) -> Option<String> {
    let q = q.trim();
    let split = q.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    let (number, unit) = q.split_at(split);
    if number.is_empty() {
        return None;
    }
    let unit = unit.trim().to_ascii_lowercase();
    if kind == Kind::Cpu {
        return match unit.as_str() {
            "cores" | "core" | "cpu" | "cpus" | "c" => Some(number.to_string()),
            "mc" | "millicores" | "millicpu" => Some(format!("{number}m")),
            _ => None,
        };
    }
    let binary = match unit.trim_end_matches('b').trim_end_matches('i') {
        "k" => "Ki",
        "m" => "Mi",
        "g" => "Gi",
        "t" => "Ti",
        "p" => "Pi",
        "e" => "Ei",
        _ => return None,
    };
    Some(format!("{number}{binary}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_quantities() {
        for (q, v) in [
            ("4", 4.0),
            ("500m", 0.5),
            ("0.5", 0.5),
            ("32Gi", 32.0 * 1024f64.powi(3)),
            ("1G", 1e9),
            ("1e3", 1e3),
            ("128974848", 128974848.0),
        ] {
            assert_eq!(parse(q), Ok(v), "{q}");
        }
    }

    #[test]
    fn memory_mistakes_get_hints() {
        let cases = [
            ("32gb", "32Gi"),
            ("32GB", "32Gi"),
            ("32GiB", "32Gi"),
            ("512mb", "512Mi"),
            ("1kb", "1Ki"),
            ("8g", "8Gi"),
        ];
        for (q, hint) in cases {
            let err = check(Kind::Memory, q).unwrap_err();
            assert!(
                err.contains(&format!("did you mean \"{hint}\"")),
                "{q}: {err}"
            );
        }
        let err = check(Kind::Memory, "512m").unwrap_err();
        assert!(
            err.contains("thousandths of a byte") && err.contains("\"512Mi\""),
            "{err}"
        );
    }

    #[test]
    fn cpu_mistakes_get_hints() {
        assert!(check(Kind::Cpu, "2 cores")
            .unwrap_err()
            .contains("did you mean \"2\""));
        assert!(check(Kind::Cpu, "500mc")
            .unwrap_err()
            .contains("did you mean \"500m\""));
        assert_eq!(check(Kind::Cpu, "250m"), Ok(0.25));
    }

    #[test]
    fn garbage_is_refused() {
        for q in ["", "abc", "1.2.3", "--1", "Gi", ".", "1Gx", "1 Gi"] {
            assert!(parse(q).is_err(), "{q:?}");
        }
        assert!(check(Kind::Memory, "-1Gi").is_err());
    }
}
