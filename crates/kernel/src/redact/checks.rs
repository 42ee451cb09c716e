//! Check-digit algorithms for the identifiers the redactor looks for: Luhn (payment cards),
//! Verhoeff (Aadhaar), ISO 7064 mod 97-10 (IBAN) and the GSTIN mod-36 checksum.
//!
//! They exist so that only *plausible* identifiers are masked: a 16-digit order number or a
//! nanosecond timestamp fails Luhn nine times in ten, which keeps ordinary numbers readable
//! in logs. They are public because domain newtypes (a `Gstin`, an `Iban`) validate with the
//! same rules.

/// True if `number` passes the Luhn check. Spaces and dashes are ignored; anything else that
/// is not an ASCII digit makes it invalid, as does having fewer than two digits.
pub fn luhn_valid(number: &str) -> bool {
    let mut digits = [0u8; 64];
    match collect_digits(number, &mut digits) {
        Some(n) if n >= 2 => luhn_digits(&digits[..n]),
        _ => false,
    }
}

/// True if `number` passes the Verhoeff check (the check digit is the last digit). Spaces
/// and dashes are ignored.
pub fn verhoeff_valid(number: &str) -> bool {
    let mut digits = [0u8; 64];
    match collect_digits(number, &mut digits) {
        Some(n) if n >= 2 => verhoeff_digits(&digits[..n]),
        _ => false,
    }
}

/// The Verhoeff check digit to append to `number` (ASCII digits only), or `None` if
/// `number` holds anything else.
pub fn verhoeff_check_digit(number: &str) -> Option<u8> {
    let mut c = 0usize;
    for (i, b) in number.bytes().rev().enumerate() {
        if !b.is_ascii_digit() {
            return None;
        }
        c = VERHOEFF_D[c][VERHOEFF_P[(i + 1) % 8][usize::from(b - b'0')]];
    }
    // The table holds values below 10, so the conversion cannot fail.
    u8::try_from(VERHOEFF_INV[c]).ok()
}

/// True if `iban` is a structurally valid IBAN whose ISO 7064 mod 97-10 check holds: two
/// letters, two check digits, 11 to 30 letters or digits; spaces are ignored; letters must be
/// upper case (as IBANs are printed).
pub fn iban_valid(iban: &str) -> bool {
    let mut buf = [0u8; 34];
    let mut n = 0;
    for b in iban.bytes() {
        if b == b' ' {
            continue;
        }
        if n == buf.len() || !(b.is_ascii_uppercase() || b.is_ascii_digit()) {
            return false;
        }
        buf[n] = b;
        n += 1;
    }
    if n < 15
        || !buf[0].is_ascii_uppercase()
        || !buf[1].is_ascii_uppercase()
        || !buf[2].is_ascii_digit()
        || !buf[3].is_ascii_digit()
    {
        return false;
    }
    // Move the first four characters to the end; letters count as 10..=35.
    let mut remainder = 0u32;
    for &b in buf[4..n].iter().chain(&buf[..4]) {
        remainder = if b.is_ascii_digit() {
            (remainder * 10 + u32::from(b - b'0')) % 97
        } else {
            (remainder * 100 + u32::from(b - b'A') + 10) % 97
        };
    }
    remainder == 1
}

/// True if `gstin` is a valid Indian GSTIN: two digits (state), a PAN (five letters, four
/// digits, a letter), an entity number (1-9 or a letter), `Z`, and a mod-36 check character.
pub fn gstin_valid(gstin: &str) -> bool {
    let b = gstin.as_bytes();
    if b.len() != 15
        || !b[..2].iter().all(u8::is_ascii_digit)
        || !pan_shaped(&b[2..12])
        || !(matches!(b[12], b'1'..=b'9') || b[12].is_ascii_uppercase())
        || b[13] != b'Z'
    {
        return false;
    }
    let mut sum = 0u32;
    for (i, &c) in b[..14].iter().enumerate() {
        let Some(value) = base36(c) else {
            return false;
        };
        let product = value * if i % 2 == 0 { 1 } else { 2 };
        sum += product / 36 + product % 36;
    }
    let check = (36 - sum % 36) % 36;
    base36(b[14]) == Some(check)
}

/// True if `b` has the shape of an Indian PAN: five letters, four digits, a letter.
pub(crate) fn pan_shaped(b: &[u8]) -> bool {
    b.len() == 10
        && b[..5].iter().all(u8::is_ascii_uppercase)
        && b[5..9].iter().all(u8::is_ascii_digit)
        && b[9].is_ascii_uppercase()
}

fn base36(c: u8) -> Option<u32> {
    match c {
        b'0'..=b'9' => Some(u32::from(c - b'0')),
        b'A'..=b'Z' => Some(u32::from(c - b'A') + 10),
        _ => None,
    }
}

/// Luhn over ASCII digits.
pub(crate) fn luhn_digits(digits: &[u8]) -> bool {
    let mut sum = 0u32;
    for (i, &b) in digits.iter().rev().enumerate() {
        let mut d = u32::from(b.wrapping_sub(b'0'));
        if d > 9 {
            return false;
        }
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    sum.is_multiple_of(10)
}

/// Verhoeff over ASCII digits.
pub(crate) fn verhoeff_digits(digits: &[u8]) -> bool {
    let mut c = 0usize;
    for (i, &b) in digits.iter().rev().enumerate() {
        let d = usize::from(b.wrapping_sub(b'0'));
        if d > 9 {
            return false;
        }
        c = VERHOEFF_D[c][VERHOEFF_P[i % 8][d]];
    }
    c == 0
}

/// Copies the digits of `s` into `out`, skipping spaces and dashes. `None` if anything else
/// appears or `out` is too small.
fn collect_digits(s: &str, out: &mut [u8]) -> Option<usize> {
    let mut n = 0;
    for b in s.bytes() {
        match b {
            b'0'..=b'9' => {
                *out.get_mut(n)? = b;
                n += 1;
            }
            b' ' | b'-' => {}
            _ => return None,
        }
    }
    Some(n)
}

// The dihedral group D5 multiplication table, the position permutation and the inverse table
// of the Verhoeff scheme.
const VERHOEFF_D: [[usize; 10]; 10] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 2, 3, 4, 0, 6, 7, 8, 9, 5],
    [2, 3, 4, 0, 1, 7, 8, 9, 5, 6],
    [3, 4, 0, 1, 2, 8, 9, 5, 6, 7],
    [4, 0, 1, 2, 3, 9, 5, 6, 7, 8],
    [5, 9, 8, 7, 6, 0, 4, 3, 2, 1],
    [6, 5, 9, 8, 7, 1, 0, 4, 3, 2],
    [7, 6, 5, 9, 8, 2, 1, 0, 4, 3],
    [8, 7, 6, 5, 9, 3, 2, 1, 0, 4],
    [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],
];
const VERHOEFF_P: [[usize; 10]; 8] = [
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    [1, 5, 7, 6, 2, 8, 3, 0, 9, 4],
    [5, 8, 0, 3, 7, 9, 6, 1, 4, 2],
    [8, 9, 1, 6, 0, 4, 3, 5, 2, 7],
    [9, 4, 5, 3, 1, 2, 6, 8, 7, 0],
    [4, 2, 8, 6, 5, 7, 3, 9, 0, 1],
    [2, 7, 9, 3, 8, 0, 6, 4, 1, 5],
    [7, 0, 4, 6, 9, 1, 3, 2, 5, 8],
];
const VERHOEFF_INV: [usize; 10] = [0, 4, 3, 2, 1, 5, 6, 7, 8, 9];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn_accepts_known_card_numbers_and_rejects_a_changed_digit() {
        // Published test numbers (Visa, Mastercard, Amex) and the textbook example.
        for good in [
            "4111111111111111",
            "4539 1488 0343 6467",
            "5555-5555-5555-4444",
            "378282246310005",
            "79927398713",
        ] {
            assert!(luhn_valid(good), "{good}");
        }
        for bad in [
            "4111111111111112",
            "79927398710",
            "4111x11111111111",
            "7",
            "",
        ] {
            assert!(!luhn_valid(bad), "{bad}");
        }
    }

    #[test]
    fn verhoeff_matches_the_published_examples() {
        // Wikipedia's worked examples: 236 → 3, 12345 → 1.
        assert_eq!(verhoeff_check_digit("236"), Some(3));
        assert_eq!(verhoeff_check_digit("12345"), Some(1));
        assert!(verhoeff_valid("2363"));
        assert!(verhoeff_valid("123451"));
        assert!(!verhoeff_valid("2364"));
        assert!(!verhoeff_valid("123415"), "a transposition is caught");
        assert!(verhoeff_valid("2345 6789 0124"));
        assert!(!verhoeff_valid("2345 6789 0123"));
        assert_eq!(verhoeff_check_digit("12a"), None);
    }

    #[test]
    fn iban_mod_97_accepts_published_examples_and_rejects_typos() {
        for good in [
            "GB82WEST12345698765432",
            "GB82 WEST 1234 5698 7654 32",
            "DE89370400440532013000",
            "FR1420041010050500013M02606",
            "NL91ABNA0417164300",
        ] {
            assert!(iban_valid(good), "{good}");
        }
        for bad in [
            "GB82WEST12345698765433",
            "GB28WEST12345698765432",
            "gb82west12345698765432",
            "GB82WEST1234",
            "1282WEST12345698765432",
        ] {
            assert!(!iban_valid(bad), "{bad}");
        }
    }

    #[test]
    fn gstin_checksum_accepts_real_shapes_and_rejects_a_wrong_check_character() {
        assert!(gstin_valid("27AAPFU0939F1ZV"));
        assert!(gstin_valid("29AAGCB7383J1Z4"));
        assert!(!gstin_valid("27AAPFU0939F1ZW"), "wrong check character");
        assert!(!gstin_valid("27AAPFU0939F1YV"), "14th character must be Z");
        assert!(
            !gstin_valid("27AAPFU0939F0ZV"),
            "entity number 0 is not issued"
        );
        assert!(!gstin_valid("27AAPFU0939F1Z"), "too short");
    }
}
