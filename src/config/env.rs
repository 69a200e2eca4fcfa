//! `${VAR}` expansion in every string of the parsed YAML tree.
//!
//! Expansion happens on parsed values, never on the raw text, so a secret holding
//! `: ` or a newline cannot change the file's structure. The lookup is injected
//! (tests pass a map; `main` passes the process environment).

use serde_json::Value;

use super::Problem;

/// Expands `${VAR}` and `${VAR:-default}` in every string of `value`. `$$` is a literal `$`.
pub fn expand(value: &mut Value, path: &str, lookup: &dyn Fn(&str) -> Option<String>, problems: &mut Vec<Problem>) {
    match value {
        Value::String(s) if s.contains('$') => match expand_str(s, lookup) {
            Ok(out) => *s = out,
            Err(message) => problems.push(Problem::new(path, message)),
        },
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand(item, &format!("{path}[{i}]"), lookup, problems);
            }
        }
        Value::Object(map) => {
            for (key, item) in map.iter_mut() {
                let sub = if path.is_empty() { key.clone() } else { format!("{path}.{key}") };
                expand(item, &sub, lookup, problems);
            }
        }
        _ => {}
    }
}

fn expand_str(s: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body.find('}').ok_or("unclosed ${ in value")?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("bad environment variable name {name:?}"));
            }
            match (lookup(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => return Err(format!("environment variable {name} is not set")),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "SECRET").then(|| "s3: cr\net".to_owned())
    }

    #[test]
    fn expands() {
        assert_eq!(expand_str("${SECRET}", &env).unwrap(), "s3: cr\net");
        assert_eq!(expand_str("a-${SECRET}-b", &env).unwrap(), "a-s3: cr\net-b");
        assert_eq!(expand_str("${NOPE:-dflt}", &env).unwrap(), "dflt");
        assert_eq!(expand_str("$$5 and $x", &env).unwrap(), "$5 and $x");
        assert!(expand_str("${NOPE}", &env).unwrap_err().contains("NOPE is not set"));
        assert!(expand_str("${SECRET", &env).is_err());
    }
}
