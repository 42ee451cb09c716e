//! Trade code lists: ISO 3166-1 alpha-2 countries, UN/LOCODE ports, Incoterms 2020, HS codes.

/// ISO 3166-1 alpha-2 officially assigned codes (249).
const COUNTRIES: &str = "AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL BM BN BO BQ BR BS BT BV BW BY BZ \
CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR \
GA GB GD GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM IN IO IQ IR IS IT JE JM JO JP \
KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW MX MY MZ \
NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR PS PT PW PY QA RE RO RS RU RW \
SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ \
UA UG UM US UY UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW";

/// The Incoterms 2020 rules.
pub const INCOTERMS: [&str; 11] = [
    "EXW", "FCA", "CPT", "CIP", "DAP", "DPU", "DDP", "FAS", "FOB", "CFR", "CIF",
];

/// A country code, case-insensitive input, normalised to upper case.
pub fn country(raw: &str) -> Option<String> {
    let code = raw.trim().to_ascii_uppercase();
    (code.len() == 2 && COUNTRIES.split_ascii_whitespace().any(|c| c == code)).then_some(code)
}

/// A UN/LOCODE (a port or other trade location): an ISO 3166-1 alpha-2 country and three
/// letters or digits for the place, `INNSA` (Nhava Sheva), `DEHAM` (Hamburg). Case-insensitive
/// input, normalised to upper case; the space UN/LOCODE lists print between the two parts
/// (`IN NSA`) is accepted and dropped. Only the shape and the country are checked, not that
/// the place is in the UN list.
pub fn locode(raw: &str) -> Option<String> {
    let t = raw.trim().to_ascii_uppercase();
    let code = match t.len() {
        5 => t,
        6 if t.as_bytes()[2] == b' ' => t.replacen(' ', "", 1),
        _ => return None,
    };
    let (country_part, place) = code.split_at_checked(2)?;
    (country(country_part).is_some()
        && place.len() == 3
        && place
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()))
    .then_some(code)
}

/// An Incoterms 2020 rule, case-insensitive input.
pub fn incoterm(raw: &str) -> Option<&'static str> {
    let code = raw.trim().to_ascii_uppercase();
    INCOTERMS.iter().copied().find(|c| *c == code)
}

/// An HS code: 6 to 8 digits (dots and spaces as written on invoices are dropped).
pub fn hs_code(raw: &str) -> Option<String> {
    let digits: String = raw.chars().filter(|c| !matches!(c, '.' | ' ')).collect();
    ((6..=8).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()))
        .then_some(digits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_country_list_is_complete_and_sorted() {
        let codes: Vec<&str> = COUNTRIES.split_ascii_whitespace().collect();
        assert_eq!(codes.len(), 249);
        assert!(
            codes.windows(2).all(|w| w[0] < w[1]),
            "sorted, no duplicates"
        );
        assert_eq!(country(" de "), Some("DE".into()));
        assert_eq!(country("XX"), None);
        assert_eq!(country("DEU"), None);
    }

    #[test]
    fn locodes_are_a_country_and_three_letters_or_digits() {
        assert_eq!(locode("innsa"), Some("INNSA".into()));
        assert_eq!(locode(" DE HAM "), Some("DEHAM".into()));
        assert_eq!(locode("USNYC"), Some("USNYC".into()));
        assert_eq!(locode("GB2QX"), Some("GB2QX".into()));
        for bad in [
            "", "INNS", "INNSAA", "XXHAM", "IN-NSA", "DEHA M", "DEHÄM", "12345", "D HAM",
        ] {
            assert_eq!(locode(bad), None, "{bad}");
        }
    }

    #[test]
    fn incoterms_and_hs_codes() {
        assert_eq!(incoterm("fob"), Some("FOB"));
        assert_eq!(incoterm("DAT"), None, "DAT was replaced by DPU in 2020");
        assert_eq!(hs_code("8504.40"), Some("850440".into()));
        assert_eq!(hs_code("85044010"), Some("85044010".into()));
        assert_eq!(hs_code("85044"), None);
        assert_eq!(hs_code("850440101"), None);
        assert_eq!(hs_code("85a440"), None);
    }
}
