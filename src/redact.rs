//! A string that must never be shown: API keys, IAM tokens, ingestion keys.

use std::fmt;

use sha2::{Digest, Sha256};

/// Holds a secret value. `Debug` and `Display` print `<redacted>`, so the value cannot reach a log
/// line, an event or an error message by accident; [`SecretString::expose`] is the one way out.
#[derive(Clone, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(transparent)]
pub struct SecretString(String);

impl SecretString {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The raw value, for the few places that must send or store it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `sha256:` and the first 12 hex digits of the SHA-256 of the value: enough to tell two values
    /// apart in status, far too little to recover anything.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }

    /// Full SHA-256 hex digest, used as a cache key in place of the value itself.
    pub fn digest_hex(&self) -> String {
        Sha256::digest(self.0.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for SecretString {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for SecretString {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let secret = SecretString::new("s3cr3t-api-key");
        assert!(!format!("{secret:?}").contains("s3cr3t"));
        assert!(!format!("{secret}").contains("s3cr3t"));
        assert!(!format!("{:?}", Some(&secret)).contains("s3cr3t"));
        assert_eq!(secret.expose(), "s3cr3t-api-key");
    }

    #[test]
    fn fingerprint_is_short_stable_and_distinct() {
        let a = SecretString::new("a");
        assert_eq!(a.fingerprint(), SecretString::new("a").fingerprint());
        assert_ne!(a.fingerprint(), SecretString::new("b").fingerprint());
        assert_eq!(a.fingerprint().len(), "sha256:".len() + 12);
    }
}
