//! The SQL/JSON path subset `JSON_VALUE` accepts: `$`, member steps
//! (`.name`, `['name']`, `["name"]`, Flink's `.["name"]`) and array indexes
//! (`[0]`), in lax mode (an optional `lax ` prefix). Everything else
//! (wildcards, filters, recursive descent, `last`, slices, strict mode) is
//! rejected when the job is planned, so the runtime only walks plain steps.
//! Parsed here so that planning and the runtime agree on one grammar.

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathStep {
    Member(String),
    Index(usize),
}

/// Parses a path; `Err` says which part is not supported or malformed.
pub fn parse_json_path(path: &str) -> Result<Vec<PathStep>, String> {
    let trimmed = path.trim();
    let body = match trimmed.split_once(char::is_whitespace) {
        Some((mode, rest)) if mode.eq_ignore_ascii_case("lax") => rest.trim_start(),
        Some((mode, _)) if mode.eq_ignore_ascii_case("strict") => {
            return Err("strict mode JSON paths are not supported (lax is the default)".into());
        }
        _ => trimmed,
    };
    let chars: Vec<char> = body.chars().collect();
    if chars.first() != Some(&'$') {
        return Err(format!("a JSON path starts with '$', found '{body}'"));
    }
    let mut steps = Vec::new();
    let mut i = 1;
    while i < chars.len() {
        match chars[i] {
            '.' => {
                i += 1;
                match chars.get(i) {
                    Some('.') => return Err("recursive descent '..' is not supported".into()),
                    Some('*') => return Err("wildcard '.*' is not supported".into()),
                    // Flink's documentation writes `$.["a.b"]`.
                    Some('[') => {}
                    Some(_) => {
                        let start = i;
                        while i < chars.len() && chars[i] != '.' && chars[i] != '[' {
                            i += 1;
                        }
                        let name: String = chars[start..i].iter().collect();
                        let name = name.trim();
                        if name.is_empty()
                            || name.contains(|c: char| c.is_whitespace() || "()?@*'\"".contains(c))
                        {
                            return Err(format!("'{name}' is not a plain member name"));
                        }
                        steps.push(PathStep::Member(name.to_string()));
                    }
                    None => return Err("the path ends with '.'".into()),
                }
            }
            '[' => {
                i += 1;
                let close = chars[i..]
                    .iter()
                    .position(|c| *c == ']')
                    .map(|p| p + i)
                    .ok_or("unclosed '['")?;
                let inner: String = chars[i..close].iter().collect();
                let inner = inner.trim();
                let quoted =
                    |q: char| inner.len() >= 2 && inner.starts_with(q) && inner.ends_with(q);
                if quoted('\'') || quoted('"') {
                    let name = &inner[1..inner.len() - 1];
                    if name.contains(['\'', '"']) {
                        return Err(format!("[{inner}]: several member names are not supported"));
                    }
                    steps.push(PathStep::Member(name.to_string()));
                } else if let Ok(idx) = inner.parse::<usize>() {
                    steps.push(PathStep::Index(idx));
                } else if inner == "*" {
                    return Err("wildcard '[*]' is not supported".into());
                } else if inner.starts_with('?') {
                    return Err("filter expressions '[?(…)]' are not supported".into());
                } else {
                    return Err(format!(
                        "[{inner}] is not supported: use a member name in quotes or a non-negative array index"
                    ));
                }
                i = close + 1;
            }
            c if c.is_whitespace() => i += 1,
            c => return Err(format!("unexpected '{c}' in the JSON path")),
        }
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::{PathStep::*, parse_json_path};

    #[test]
    fn plain_steps_parse() {
        assert_eq!(parse_json_path("$"), Ok(vec![]));
        assert_eq!(
            parse_json_path("lax $.a.b[2]['c d'][\"e.f\"].[\"g\"]"),
            Ok(vec![
                Member("a".into()),
                Member("b".into()),
                Index(2),
                Member("c d".into()),
                Member("e.f".into()),
                Member("g".into())
            ])
        );
    }

    #[test]
    fn everything_else_is_rejected() {
        for bad in [
            "a.b",
            "$..a",
            "$.*",
            "$[*]",
            "$[-1]",
            "$[0:2]",
            "$[?(@.a)]",
            "strict $.a",
            "$.a.",
            "$[0",
            "$[last]",
        ] {
            assert!(parse_json_path(bad).is_err(), "{bad} should be rejected");
        }
    }
}
