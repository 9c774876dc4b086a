//! Session tokens.

use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// A session's token: 128 random bits from the OS, written as 32 lowercase hex digits (URL-safe).
///
/// Stores look tokens up by map, so comparison need not be constant-time. `Debug` shows only
/// the first 6 digits, so logs do not leak a usable token; `Display` writes it whole (it is what
/// the client is sent).
///
/// ```
/// use wsguard_session::SessionToken;
///
/// let token = SessionToken::generate();
/// let text = token.to_string();
/// assert_eq!(text.len(), 32);
/// assert_eq!(text.parse::<SessionToken>(), Ok(token));
/// assert!(!format!("{token:?}").contains(&text));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionToken([u8; 16]);

impl SessionToken {
    /// A new token from the OS's random source.
    ///
    /// # Panics
    ///
    /// If the OS has no randomness to give: a guessable token would let anyone take over a
    /// session, so there is no fallback.
    pub fn generate() -> Self {
        use rand::TryRngCore;
        let mut bytes = [0u8; 16];
        rand::rngs::OsRng
            .try_fill_bytes(&mut bytes)
            .expect("the OS random source failed; session tokens need it");
        Self(bytes)
    }

    /// The token's 16 bytes (a store's key).
    pub fn as_bytes(&self) -> &[u8; 16] {
        &self.0
    }

    /// The token with these bytes (read back from a store).
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(bytes)
    }
}

/// The hasher of this crate's maps keyed by token.
///
/// A token is 128 random bits drawn by this server (a client's token is only ever looked up,
/// never inserted), so a multiply per word spreads it as well as a keyed hash would, at a
/// fraction of `SipHash`'s cost on every append and mark.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct TokenHash;

/// A map keyed by token.
pub(crate) type TokenMap<V> = HashMap<SessionToken, V, TokenHash>;

impl BuildHasher for TokenHash {
    type Hasher = TokenHasher;

    fn build_hasher(&self) -> TokenHasher {
        TokenHasher(0)
    }
}

/// See [`TokenHash`].
#[derive(Debug)]
pub(crate) struct TokenHasher(u64);

impl Hasher for TokenHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0.rotate_left(5) ^ u64::from_le_bytes(word))
                .wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl fmt::Display for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [0u8; 32];
        for (i, byte) in self.0.iter().enumerate() {
            text[2 * i] = HEX[usize::from(byte >> 4)];
            text[2 * i + 1] = HEX[usize::from(byte & 0xf)];
        }
        f.write_str(std::str::from_utf8(&text).expect("hex digits are ASCII"))
    }
}

impl fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.to_string();
        write!(f, "SessionToken({}…)", &text[..6])
    }
}

/// The text is not 32 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidToken(());

impl fmt::Display for InvalidToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a session token is 32 lowercase hex digits")
    }
}

impl std::error::Error for InvalidToken {}

impl FromStr for SessionToken {
    type Err = InvalidToken;

    fn from_str(text: &str) -> Result<Self, InvalidToken> {
        let text = text.as_bytes();
        if text.len() != 32 {
            return Err(InvalidToken(()));
        }
        let digit = |c: u8| match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            _ => Err(InvalidToken(())),
        };
        let mut bytes = [0u8; 16];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = digit(text[2 * i])? << 4 | digit(text[2 * i + 1])?;
        }
        Ok(Self(bytes))
    }
}

impl Serialize for SessionToken {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_differ_and_parse_back() {
        let a = SessionToken::generate();
        let b = SessionToken::generate();
        assert_ne!(a, b);
        assert_eq!(a.to_string().parse(), Ok(a));
        assert!(
            a.to_string()
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
        );
    }

    #[test]
    fn only_32_lowercase_hex_digits_parse() {
        let text = SessionToken::generate().to_string();
        assert!(text[..31].parse::<SessionToken>().is_err());
        assert!(format!("{text}0").parse::<SessionToken>().is_err());
        assert!(
            text.to_uppercase()
                .replace(char::is_numeric, "A")
                .parse::<SessionToken>()
                .is_err()
        );
        assert!("g".repeat(32).parse::<SessionToken>().is_err());
        assert!("é".repeat(16).parse::<SessionToken>().is_err());
    }
}
