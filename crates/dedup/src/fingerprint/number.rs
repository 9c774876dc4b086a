//! The exact value of a JSON number token.
//!
//! A number denotes the decimal ±0.D × 10^E, where the digit string D has no leading or trailing
//! zeros. Two tokens denote the same number exactly when their sign, D and E agree, whatever the
//! spelling (`1`, `1.0`, `1e0`, `10e-1`, `0.10e1`), so no rounding to a double ever merges two
//! numbers; every zero (`0`, `-0`, `0.0e7`) is the integer 0.

/// The value of a number token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Exact {
    /// An integer within `i64`, however it is written.
    Int(i64),
    /// Any other number: not an integer, or out of `i64`'s range.
    Decimal(Decimal),
}

/// ±0.D × 10^`exponent`, D being `len` digits of the token, the first and last not zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Decimal {
    pub(super) negative: bool,
    pub(super) len: u64,
    pub(super) exponent: i64,
    /// Where D's first and last digits are in the source; a decimal point between them is
    /// skipped.
    first: usize,
    last: usize,
}

/// Exponents written with more digits than this (leading zeros aside) are not read: the
/// document is hashed as bytes.
const EXPONENT_DIGITS: usize = 18;

/// Reads the number token at `src[start]`: its value and the index past it, or `None` if it is
/// not a JSON number or its exponent has more than [`EXPONENT_DIGITS`] digits.
pub(super) fn read(src: &[u8], start: usize) -> Option<(Exact, usize)> {
    let negative = src.get(start) == Some(&b'-');
    let int_start = start + usize::from(negative);
    let int_end = match src.get(int_start) {
        Some(b'0') => int_start + 1,
        Some(b'1'..=b'9') => digits_end(src, int_start),
        _ => return None,
    };
    let mut end = int_end;
    if src.get(end) == Some(&b'.') {
        end = digits_end(src, int_end + 1);
        if end == int_end + 1 {
            return None;
        }
    }
    let mantissa_end = end;
    let mut exponent = 0i64;
    if let Some(b'e' | b'E') = src.get(end) {
        end += 1;
        let negative_exponent = src.get(end) == Some(&b'-');
        if let Some(b'+' | b'-') = src.get(end) {
            end += 1;
        }
        let digits_start = end;
        end = digits_end(src, end);
        let digits = &src[digits_start..end];
        let significant = &digits[digits.iter().take_while(|&&d| d == b'0').count()..];
        if digits.is_empty() || significant.len() > EXPONENT_DIGITS {
            return None;
        }
        let e = significant
            .iter()
            .fold(0i64, |e, d| e * 10 + i64::from(d - b'0'));
        exponent = if negative_exponent { -e } else { e };
    }
    // The mantissa's digits (a point aside) are M, and the value is ±0.M × 10^(point + exponent).
    let mantissa = &src[int_start..mantissa_end];
    let Some(first) = mantissa.iter().position(|d| matches!(d, b'1'..=b'9')) else {
        return Some((Exact::Int(0), end));
    };
    let last = mantissa.iter().rposition(|d| matches!(d, b'1'..=b'9'))?;
    let point = int_end - int_start;
    // A digit's index in M: past the point, one less than in the text.
    let index = |i: usize| if i > point { i - 1 } else { i };
    let len = index(last) - index(first) + 1;
    // Dropping M's leading zeros moves the point left.
    let exponent = i64::try_from(point)
        .ok()?
        .checked_sub(i64::try_from(index(first)).ok()?)?
        .checked_add(exponent)?;
    let d = Decimal {
        negative,
        len: u64::try_from(len).ok()?,
        exponent,
        first: int_start + first,
        last: int_start + last,
    };
    Some((d.as_int(src).map_or(Exact::Decimal(d), Exact::Int), end))
}

fn digits_end(src: &[u8], mut at: usize) -> usize {
    while let Some(b'0'..=b'9') = src.get(at) {
        at += 1;
    }
    at
}

impl Decimal {
    /// D's digits, each `0..=9`.
    fn digits<'s>(&self, src: &'s [u8]) -> impl Iterator<Item = u8> + 's {
        src[self.first..=self.last]
            .iter()
            .filter(|&&b| b != b'.')
            .map(|b| b - b'0')
    }

    /// The value if it is an integer within `i64`.
    fn as_int(&self, src: &[u8]) -> Option<i64> {
        let len = i64::try_from(self.len).ok()?;
        if !(len..=19).contains(&self.exponent) {
            return None;
        }
        let zeros = (self.exponent - len) as u32;
        let v = self.mantissa(src)? * 10u128.pow(zeros);
        let v = i128::try_from(v).ok()?;
        i64::try_from(if self.negative { -v } else { v }).ok()
    }

    /// D as an integer, if it has at most 38 digits.
    pub(super) fn mantissa(&self, src: &[u8]) -> Option<u128> {
        (self.len <= 38).then(|| self.digits(src).fold(0u128, |m, d| m * 10 + u128::from(d)))
    }

    /// D as words of 19 digits each (the last one fewer), in order.
    pub(super) fn chunks(&self, src: &[u8], mut word: impl FnMut(u64)) {
        let (mut chunk, mut n) = (0u64, 0);
        for d in self.digits(src) {
            chunk = chunk * 10 + u64::from(d);
            n += 1;
            if n == 19 {
                word(chunk);
                (chunk, n) = (0, 0);
            }
        }
        if n > 0 {
            word(chunk);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The canonical form of a whole token: an integer, or sign, digits and exponent.
    #[derive(Debug, PartialEq, Eq)]
    enum Canon {
        Int(i64),
        Decimal(bool, String, i64),
    }

    fn canon(text: &str) -> Option<Canon> {
        let src = text.as_bytes();
        let (exact, end) = read(src, 0)?;
        assert_eq!(end, src.len(), "{text}");
        Some(match exact {
            Exact::Int(v) => Canon::Int(v),
            Exact::Decimal(d) => {
                let digits: String = d.digits(src).map(|d| char::from(b'0' + d)).collect();
                assert_eq!(digits.len() as u64, d.len);
                Canon::Decimal(d.negative, digits, d.exponent)
            }
        })
    }

    fn decimal(negative: bool, digits: &str, exponent: i64) -> Option<Canon> {
        Some(Canon::Decimal(negative, digits.to_owned(), exponent))
    }

    #[test]
    fn spellings_of_one_value_agree() {
        for one in [
            "1",
            "1.0",
            "1e0",
            "10e-1",
            "0.10e1",
            "1E+0",
            "1.000e00000",
            "100e-2",
        ] {
            assert_eq!(canon(one), Some(Canon::Int(1)), "{one}");
        }
        for zero in [
            "0",
            "-0",
            "0.000",
            "-0e5",
            "0e-999999999999999999",
            "-0.0E+7",
        ] {
            assert_eq!(canon(zero), Some(Canon::Int(0)), "{zero}");
        }
        assert_eq!(
            canon("1e000000000000000000000005"),
            Some(Canon::Int(100_000))
        );
        assert_eq!(canon("-12.5e1"), Some(Canon::Int(-125)));
        assert_eq!(canon("0.5"), decimal(false, "5", 0));
        assert_eq!(canon("-0.00123"), decimal(true, "123", -2));
        assert_eq!(canon("1230.0045e-3"), decimal(false, "12300045", 1));
    }

    #[test]
    fn integers_stay_integers_only_within_i64() {
        assert_eq!(canon("9223372036854775807"), Some(Canon::Int(i64::MAX)));
        assert_eq!(canon("922337203685477580.7e1"), Some(Canon::Int(i64::MAX)));
        assert_eq!(canon("-9223372036854775808"), Some(Canon::Int(i64::MIN)));
        assert_eq!(
            canon("9223372036854775808"),
            decimal(false, "9223372036854775808", 19)
        );
        assert_eq!(
            canon("-9223372036854775809"),
            decimal(true, "9223372036854775809", 19)
        );
        assert_eq!(canon("1e19"), decimal(false, "1", 20));
        assert_eq!(canon("1e18"), Some(Canon::Int(1_000_000_000_000_000_000)));
    }

    #[test]
    fn no_value_is_rounded() {
        // 2^53 + 1, which no double holds.
        assert_eq!(
            canon("9007199254740993.0"),
            Some(Canon::Int(9_007_199_254_740_993))
        );
        assert_eq!(
            canon("12345678901234568"),
            Some(Canon::Int(12_345_678_901_234_568))
        );
        assert_eq!(
            canon("12345678901234567.5"),
            decimal(false, "123456789012345675", 17)
        );
        assert_eq!(canon("1e400"), decimal(false, "1", 401));
        assert_eq!(canon("1e500"), decimal(false, "1", 501));
        assert_eq!(canon("1e-400"), decimal(false, "1", -399));
        assert_eq!(canon("2e-400"), decimal(false, "2", -399));
        assert_eq!(
            canon("999999999999999999e999999999999999999"),
            decimal(false, "999999999999999999", 999_999_999_999_999_999 + 18)
        );
    }

    #[test]
    fn long_exponents_and_bad_grammar_are_not_read() {
        for text in [
            "1e1000000000000000000",
            "1e-1000000000000000000",
            "-",
            "1.",
            ".5",
            "1e",
            "1e+",
            "-x",
            "+1",
            "1.e5",
        ] {
            assert_eq!(read(text.as_bytes(), 0), None, "{text}");
        }
        // A token ends where the grammar does; the caller judges what follows.
        assert_eq!(read(b"01", 0), Some((Exact::Int(0), 1)));
        assert_eq!(read(b"[-2.50,", 1).map(|(_, end)| end), Some(6));
    }

    #[test]
    fn digits_come_as_words_of_nineteen() {
        let text = "123456789012345678901234567890123456789012345.6e-10";
        let Some((Exact::Decimal(d), _)) = read(text.as_bytes(), 0) else {
            panic!("a decimal")
        };
        assert_eq!((d.len, d.exponent), (46, 35));
        assert_eq!(d.mantissa(text.as_bytes()), None);
        let mut words = Vec::new();
        d.chunks(text.as_bytes(), |w| words.push(w));
        assert_eq!(words, [1234567890123456789, 123456789012345678, 90123456]);
    }
}
