//! A string that must never be shown: API keys, IAM tokens, ingestion keys.

use std::fmt;

use sha2::{Digest, Sha256};

/// Holds a secret value. `Debug` and `Display` print `<redacted>`; [`SimSecret::expose`] is the
/// one way out.
#[derive(Clone, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(transparent)]
pub struct SimSecret(String);

impl SimSecret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The raw value.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The operator's fingerprint format (`sha256:` and 12 hex digits), so that both sides' logs
    /// and status can be compared.
    pub fn fingerprint(&self) -> String {
        let hex: String = Sha256::digest(self.0.as_bytes())[..6]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("sha256:{hex}")
    }
}

// One writer for both: the simulator's logs and panics must not show a secret either way.
impl fmt::Debug for SimSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SimSecret({self})")
    }
}

impl fmt::Display for SimSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
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
