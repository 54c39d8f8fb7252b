//! Strict RFC 3339 timestamps, as section 3 of `docs/contracts.md` defines them:
//! `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, `T`/`Z` in either case, real
//! calendar dates (years 0001–9999), seconds 0–59, a fraction of 1–9 digits
//! truncated to milliseconds. ASCII digits only.

/// Epoch milliseconds of a strict RFC 3339 time, or `None` if `s` is not one.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let year = digits(b, 0, 4)?;
    let month = digits(b, 5, 2)?;
    let day = digits(b, 8, 2)?;
    let hour = digits(b, 11, 2)?;
    let minute = digits(b, 14, 2)?;
    let second = digits(b, 17, 2)?;
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') || b[13] != b':' || b[16] != b':' {
        return None;
    }
    if year == 0 || !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return None;
    }
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }

    let mut pos = 19;
    let mut millis = 0;
    if b[pos] == b'.' {
        let start = pos + 1;
        let mut end = start;
        while end < b.len() && b[end].is_ascii_digit() {
            end += 1;
        }
        let n = end - start;
        if !(1..=9).contains(&n) {
            return None;
        }
        // Truncate (not round) to milliseconds.
        for i in 0..3 {
            let d = if i < n { i64::from(b[start + i] - b'0') } else { 0 };
            millis = millis * 10 + d;
        }
        pos = end;
    }

    let offset_minutes = match b.get(pos..)? {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let oh = digits(b, pos + 1, 2)?;
            let om = digits(b, pos + 4, 2)?;
            if oh > 23 || om > 59 {
                return None;
            }
            let m = oh * 60 + om;
            if *sign == b'-' {
                -m
            } else {
                m
            }
        }
        _ => return None,
    };

    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_minutes * 60;
    Some(seconds * 1000 + millis)
}

/// The number of `len` ASCII digits at `b[at..]`.
fn digits(b: &[u8], at: usize, len: usize) -> Option<i64> {
    let slice = b.get(at..at + len)?;
    slice.iter().try_fold(0i64, |acc, &c| c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0')))
}

fn is_leap(year: i64) -> bool {
    (year % 4 == 0 && year % 100 != 0) || year % 400 == 0
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::parse_rfc3339_ms as p;

    #[test]
    fn accepts_the_contract_forms() {
        assert_eq!(p("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(p("2026-11-27T03:00:00Z"), Some(1_795_748_400_000));
        assert_eq!(p("2026-11-27t03:00:00z"), Some(1_795_748_400_000));
        assert_eq!(p("2026-11-27T04:30:00+01:30"), Some(1_795_748_400_000));
        assert_eq!(p("2026-11-26T23:00:00-04:00"), Some(1_795_748_400_000));
        assert_eq!(p("2026-11-27T03:00:00-00:00"), Some(1_795_748_400_000));
        assert_eq!(p("2026-11-27T03:00:00.1Z"), Some(1_795_748_400_100));
        assert_eq!(p("2026-11-27T03:00:00.123456789Z"), Some(1_795_748_400_123));
        assert_eq!(p("2026-11-27T03:00:00.999999999Z"), Some(1_795_748_400_999));
        assert_eq!(p("2028-02-29T00:00:00Z"), Some(1_835_395_200_000));
        assert_eq!(p("2000-02-29T00:00:00Z"), Some(951_782_400_000));
        assert_eq!(p("1969-12-31T23:59:59.500Z"), Some(-500));
        assert_eq!(p("0001-01-01T00:00:00Z"), Some(-62_135_596_800_000));
    }

    #[test]
    fn rejects_everything_else() {
        for s in [
            "",
            "2026-11-27",
            "2026-11-27T03:00:00",
            "2026-11-27T03:00Z",
            "2026-11-27 03:00:00Z",
            "2026-11-27T03:00:00.Z",
            "2026-11-27T03:00:00.1234567890Z",
            "2026-02-30T00:00:00Z",
            "2027-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-00-01T00:00:00Z",
            "2026-11-00T00:00:00Z",
            "2026-11-27T24:00:00Z",
            "2026-11-27T23:60:00Z",
            "2026-11-27T23:59:60Z",
            "2026-11-27T03:00:00+0100",
            "2026-11-27T03:00:00+01",
            "2026-11-27T03:00:00+24:00",
            "2026-11-27T03:00:00+01:60",
            "2026-11-27T03:00:00ZZ",
            "2026-11-27T03:00:00Z ",
            " 2026-11-27T03:00:00Z",
            "0000-01-01T00:00:00Z",
            "+2026-11-27T03:00:00Z",
            "2026-1-27T03:00:00Z",
            "٢٠٢٦-11-27T03:00:00Z",
            "2026-11-27T03:00:00.１Z",
        ] {
            assert_eq!(p(s), None, "{s:?}");
        }
    }
}
