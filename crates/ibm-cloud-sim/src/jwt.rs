//! IAM access tokens as IBM Cloud issues them: JSON Web Tokens,
//! `base64url(header).base64url(payload).base64url(signature)`, with header
//! `{"alg":"RS256","typ":"JWT","kid":"sim"}`. IBM's SDKs decode the payload (without checking the
//! signature) to learn `exp` and `iat` and schedule a refresh at 80 % of the lifetime.
//!
//! The signature is an HMAC-SHA256 of `header.payload` under a per-simulator random secret, not
//! an RSA signature: no client verifies it, and the simulator recognises its tokens by looking
//! them up in its table of issued tokens (so expiry and revocation work as before).

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Unpadded base64url (RFC 4648 §5), as JWTs use.
pub fn base64url_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize] as char);
        }
    }
    out
}

/// Decodes unpadded (or padded) base64url; `None` on any other character.
pub fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for c in text.bytes() {
        let v = ALPHABET.iter().position(|a| *a == c)? as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// HMAC-SHA256 (RFC 2104), enough for a signature nobody verifies but that only we can produce.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut inner = Sha256::new();
    inner.update(block.map(|b| b ^ 0x36));
    inner.update(message);
    let mut outer = Sha256::new();
    outer.update(block.map(|b| b ^ 0x5c));
    outer.update(inner.finalize());
    outer.finalize().into()
}

/// Who a token is for: a service ID in an account (API keys in the seed stand for service ID keys).
pub struct Subject<'a> {
    pub account_id: &'a str,
    /// `ServiceId-<uuid>`.
    pub service_id: &'a str,
    pub name: &'a str,
}

/// Claims of an IAM access token for the API-key grant, with the fields IBM's tokens carry.
pub fn claims(subject: &Subject<'_>, jti: &str, iat: u64, ttl: u64, scope: &str) -> Value {
    let iam_id = format!("iam-{}", subject.service_id);
    json!({
        "iam_id": iam_id,
        "id": iam_id,
        "realmid": "iam",
        "jti": jti,
        "identifier": subject.service_id,
        "name": subject.name,
        "sub": subject.service_id,
        "sub_type": "ServiceId",
        "authn": {
            "sub": subject.service_id,
            "iam_id": iam_id,
            "sub_type": "ServiceId",
            "name": subject.name
        },
        "account": {"valid": true, "bss": subject.account_id, "frozen": true},
        "iat": iat,
        "exp": iat + ttl,
        "iss": "https://iam.cloud.ibm.com/identity",
        "grant_type": "urn:ibm:params:oauth:grant-type:apikey",
        "scope": scope,
        "client_id": "default",
        "acr": 1,
        "amr": ["pwd"]
    })
}

/// `header.payload.signature` for `claims`, signed with `secret`.
pub fn encode(claims: &Value, secret: &[u8]) -> String {
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": "sim"});
    let signing_input = format!(
        "{}.{}",
        base64url_encode(header.to_string().as_bytes()),
        base64url_encode(claims.to_string().as_bytes())
    );
    let signature = hmac_sha256(secret, signing_input.as_bytes());
    format!("{signing_input}.{}", base64url_encode(&signature))
}

/// The claims of a token, without checking its signature (as the IBM SDKs read them).
pub fn decode_claims(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (_, payload, _) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    serde_json::from_slice(&base64url_decode(payload)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64url_matches_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url_encode(plain.as_bytes()), encoded);
            assert_eq!(base64url_decode(encoded).unwrap(), plain.as_bytes());
        }
        assert_eq!(base64url_encode(&[0xfb, 0xff]), "-_8");
        assert_eq!(base64url_decode("-_8").unwrap(), vec![0xfb, 0xff]);
        assert!(base64url_decode("a+b").is_none());
    }

    #[test]
    fn hmac_matches_rfc4231_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn tokens_are_jwts_with_ibm_claims() {
        let subject = Subject {
            account_id: "acc",
            service_id: "ServiceId-1",
            name: "k",
        };
        let token = encode(&claims(&subject, "j", 1000, 3600, "ibm openid"), b"s");
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let header: Value = serde_json::from_slice(&base64url_decode(parts[0]).unwrap()).unwrap();
        assert_eq!(header, json!({"alg": "RS256", "typ": "JWT", "kid": "sim"}));
        let c = decode_claims(&token).unwrap();
        assert_eq!(c["exp"], 4600);
        assert_eq!(c["iat"], 1000);
        assert_eq!(c["account"]["bss"], "acc");
        assert_eq!(c["sub"], "ServiceId-1");
        assert_eq!(c["iam_id"], "iam-ServiceId-1");
        assert_eq!(c["client_id"], "default");
        assert_ne!(
            token,
            encode(&claims(&subject, "j", 1000, 3600, "ibm openid"), b"t")
        );
    }
}
