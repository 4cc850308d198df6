//! `--auth-token`: etcd's token provider spec, `type[,key=value...]`.

/// Why `--auth-token` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenSpecError {
    /// etcd's `ErrInvalidAuthOpts`: an unknown type, or an option that is not `key=value`.
    #[error("auth: invalid auth options ({0})")]
    Invalid(String),
    #[error("--auth-token {0}: only simple tokens are supported by ringkv (jwt is not)")]
    Unsupported(String),
}

/// Checks `--auth-token` with etcd's syntax, `type[,key=value...]`: `simple` is accepted (its
/// options are ignored, as etcd ignores them), `jwt` is refused.
pub fn parse_spec(spec: &str) -> Result<(), TokenSpecError> {
    let mut parts = spec.split(',');
    let kind = parts.next().unwrap_or_default();
    let mut keys = Vec::new();
    for option in parts {
        let Some((key, _)) = option.split_once('=') else {
            return Err(TokenSpecError::Invalid(format!(
                "invalid token specific option: {spec}"
            )));
        };
        if keys.contains(&key) {
            return Err(TokenSpecError::Invalid(format!(
                "{key} option is duplicated in {spec}"
            )));
        }
        keys.push(key);
    }
    match kind {
        "simple" => Ok(()),
        "jwt" => Err(TokenSpecError::Unsupported(spec.to_owned())),
        other => Err(TokenSpecError::Invalid(format!(
            "unknown token type: {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_specs_follow_etcds_syntax() {
        assert_eq!(parse_spec("simple"), Ok(()));
        assert_eq!(parse_spec("simple,ttl=5"), Ok(()));
        assert!(matches!(
            parse_spec("simple,x"),
            Err(TokenSpecError::Invalid(_))
        ));
        assert!(matches!(
            parse_spec("simple,a=1,a=2"),
            Err(TokenSpecError::Invalid(_))
        ));
        assert!(matches!(parse_spec("foo"), Err(TokenSpecError::Invalid(_))));
        assert!(matches!(parse_spec(""), Err(TokenSpecError::Invalid(_))));
        assert!(matches!(
            parse_spec("jwt,sign-method=RS256"),
            Err(TokenSpecError::Unsupported(_))
        ));
    }
}
