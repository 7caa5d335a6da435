//! A string that must never be shown: API keys, IAM tokens, ingestion keys.

use std::fmt;

use sha2::{Digest, Sha256};

/// Holds a secret value. `Debug` and `Display` print `<redacted>`; [`SimSecret::expose`] is the
/// one way out.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SimSecret(String);

impl SimSecret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The raw value.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `sha256:` and the first 12 hex digits of the SHA-256 of the value (the operator's
    /// fingerprint format, so both sides' logs can be compared).
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        let hex: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();
        format!("sha256:{hex}")
    }
}

impl fmt::Debug for SimSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SimSecret(<redacted>)")
    }
}

impl fmt::Display for SimSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl From<String> for SimSecret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for SimSecret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl<'de> serde::Deserialize<'de> for SimSecret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_shown() {
        let secret = SimSecret::new("s3cr3t-api-key");
        assert!(!format!("{secret:?}").contains("s3cr3t"));
        assert_eq!(secret.to_string(), "<redacted>");
        assert_eq!(secret.expose(), "s3cr3t-api-key");
        assert_eq!(secret.fingerprint().len(), "sha256:".len() + 12);
    }
}
