//! Bootstrap tokens: `ID.SECRET`, the secret 160 random bits, stored as its SHA-256 and
//! compared in constant time.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Length of a token id, hex characters (48 bits: an id, not a secret).
pub const ID_LEN: usize = 12;
/// Length of a token secret, base32 characters (160 bits).
pub const SECRET_LEN: usize = 32;

const BASE32_LOWER: &[u8] = b"abcdefghijklmnopqrstuvwxyz234567";

/// A bootstrap token as presented by a node. `Debug` and `Display` hide the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct BootstrapToken {
    id: String,
    secret: String,
}

/// Why a presented token is not even well formed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed bootstrap token: expected ID.SECRET with a {ID_LEN}-character hex id and a {SECRET_LEN}-character base32 secret; copy it again from `opictl token create`")]
pub struct MalformedToken;

impl BootstrapToken {
    /// A fresh random token.
    pub fn generate() -> Self {
        let id_bytes: [u8; ID_LEN / 2] = rand::random();
        let secret_bytes: [u8; SECRET_LEN * 5 / 8] = rand::random();
        let encoding = base32_lower();
        Self {
            id: data_encoding::HEXLOWER.encode(&id_bytes),
            secret: encoding.encode(&secret_bytes),
        }
    }

    /// The public id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `ID.SECRET`, to show once to the operator who created it.
    pub fn expose(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// SHA-256 of the secret, hex: what the store keeps.
    pub fn secret_sha256(&self) -> String {
        data_encoding::HEXLOWER.encode(&Sha256::digest(self.secret.as_bytes()))
    }

    /// Whether the secret matches a stored hash, in constant time.
    pub fn matches(&self, stored_sha256: &str) -> bool {
        let ours = Sha256::digest(self.secret.as_bytes());
        match data_encoding::HEXLOWER.decode(stored_sha256.as_bytes()) {
            Ok(stored) if stored.len() == ours.len() => bool::from(ours.as_slice().ct_eq(&stored)),
            _ => false,
        }
    }
}

impl FromStr for BootstrapToken {
    type Err = MalformedToken;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, secret) = s.trim().split_once('.').ok_or(MalformedToken)?;
        let id_ok =
            id.len() == ID_LEN && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        let secret_ok =
            secret.len() == SECRET_LEN && secret.bytes().all(|b| BASE32_LOWER.contains(&b));
        if !id_ok || !secret_ok {
            return Err(MalformedToken);
        }
        Ok(Self {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BootstrapToken({}.<redacted>)", self.id)
    }
}

impl fmt::Display for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.<redacted>", self.id)
    }
}

fn base32_lower() -> data_encoding::Encoding {
    let mut spec = data_encoding::Specification::new();
    spec.symbols
        .push_str(std::str::from_utf8(BASE32_LOWER).expect("alphabet is ASCII"));
    spec.encoding()
        .expect("a 32-symbol alphabet is a valid base32 specification")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_parse_back() {
        let token = BootstrapToken::generate();
        let parsed: BootstrapToken = token.expose().parse().unwrap();
        assert_eq!(parsed, token);
        assert!(parsed.matches(&token.secret_sha256()));
    }

    #[test]
    fn wrong_secret_does_not_match() {
        let token = BootstrapToken::generate();
        let other = BootstrapToken::generate();
        assert!(!token.matches(&other.secret_sha256()));
        assert!(!token.matches("not-hex"));
    }

    #[test]
    fn rejects_malformed_tokens() {
        let good = BootstrapToken::generate().expose();
        for bad in [
            "",
            "abc",
            "abc.def",
            &good.replace('.', ""),
            &format!("{good}x"),
            &good.to_uppercase(),
        ] {
            assert_eq!(bad.parse::<BootstrapToken>(), Err(MalformedToken), "{bad}");
        }
    }

    #[test]
    fn debug_and_display_hide_the_secret() {
        let token = BootstrapToken::generate();
        let secret = token.expose().split_once('.').unwrap().1.to_string();
        for shown in [format!("{token:?}"), token.to_string()] {
            assert!(!shown.contains(&secret), "{shown}");
            assert!(shown.contains(token.id()));
        }
    }
}
