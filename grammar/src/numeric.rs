//! Regexes for bounded JSON numbers: `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum` (draft 4
//! booleans and draft 6+ numbers) and the integer formats `int32`, `int64`, `uint32`, `uint64`.
//!
//! Integers get an exact regex of their canonical decimal forms (no leading zeros, no `-0`). Numbers with whole
//! bounds get an exact regex of their forms without an exponent; non-whole bounds on numbers are refused. Both
//! only narrow the JSON grammar: every string they admit is a valid instance.

use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// A bound: value and whether it is inclusive.
type Bound = Option<(i128, bool)>;

const LIMIT: f64 = 1e18;

fn unsupported(keyword: &str, why: &str) -> Error {
    Error::unsupported(format!("json schema keyword {keyword:?} is not supported {why}"))
}

/// Keywords this module handles beside `type`.
pub const KEYWORDS: &[&str] = &["minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"];

/// The regex for an `integer` or `number` schema with bounds, or `None` when it has none.
pub fn bounded(obj: &Map<String, Value>) -> Result<Option<String>> {
    let integer = match obj.get("type").and_then(Value::as_str) {
        Some("integer") => true,
        Some("number") => false,
        _ => return Ok(None),
    };
    let format = obj.get("format").and_then(Value::as_str);
    let fmt_range: Option<(i128, i128)> = match format {
        Some("int32") => Some((i32::MIN as i128, i32::MAX as i128)),
        Some("int64") => Some((i64::MIN as i128, i64::MAX as i128)),
        Some("uint32") => Some((0, u32::MAX as i128)),
        Some("uint64") => Some((0, u64::MAX as i128)),
        _ => None,
    };
    if !KEYWORDS.iter().any(|k| obj.contains_key(*k)) && fmt_range.is_none() {
        return Ok(None);
    }
    let num = |k: &str| -> Result<Option<f64>> {
        match obj.get(k) {
            None | Some(Value::Bool(_)) => Ok(None),
            Some(v) => v.as_f64().map(Some).ok_or_else(|| Error::syntax(format!("{k} must be a number"))),
        }
    };
    let flag = |k: &str| matches!(obj.get(k), Some(Value::Bool(true)));
    // Draft 4: exclusiveMinimum is a boolean modifying minimum; draft 6+: a number of its own.
    let mut lo: Option<(f64, bool)> = num("minimum")?.map(|m| (m, !flag("exclusiveMinimum")));
    if let Some(x) = num("exclusiveMinimum")? {
        lo = Some(match lo {
            Some((m, incl)) if m > x || (m == x && !incl) => (m, incl),
            _ => (x, false),
        });
    }
    let mut hi: Option<(f64, bool)> = num("maximum")?.map(|m| (m, !flag("exclusiveMaximum")));
    if let Some(x) = num("exclusiveMaximum")? {
        hi = Some(match hi {
            Some((m, incl)) if m < x || (m == x && !incl) => (m, incl),
            _ => (x, false),
        });
    }
    for (v, _) in lo.iter().chain(hi.iter()) {
        if !v.is_finite() || v.abs() > LIMIT {
            return Err(unsupported("minimum/maximum", &format!("beyond 1e18 ({v})")));
        }
    }
    if integer {
        // Whole, inclusive bounds.
        let mut lo_i: Option<i128> = lo.map(|(v, incl)| if incl { v.ceil() as i128 } else { v.floor() as i128 + 1 });
        let mut hi_i: Option<i128> = hi.map(|(v, incl)| if incl { v.floor() as i128 } else { v.ceil() as i128 - 1 });
        if let Some((a, b)) = fmt_range {
            lo_i = Some(lo_i.map_or(a, |l| l.max(a)));
            hi_i = Some(hi_i.map_or(b, |h| h.min(b)));
        }
        if let (Some(a), Some(b)) = (lo_i, hi_i) {
            if a > b {
                return Err(Error::syntax(format!("json schema: no integer lies in [{a}, {b}]")));
            }
        }
        return Ok(Some(integer_regex(lo_i, hi_i)));
    }
    if fmt_range.is_some() {
        return Err(unsupported("format", &format!("{:?} on a number", format.unwrap_or_default())));
    }
    let whole = |b: Option<(f64, bool)>, name: &str| -> Result<Bound> {
        match b {
            None => Ok(None),
            Some((v, incl)) if v.fract() == 0.0 => Ok(Some((v as i128, incl))),
            Some((v, _)) => Err(unsupported(name, &format!("with a fractional bound ({v}) on a number"))),
        }
    };
    let (lo, hi) = (whole(lo, "minimum")?, whole(hi, "maximum")?);
    if let (Some((a, ai)), Some((b, bi))) = (lo, hi) {
        if a > b || (a == b && !(ai && bi)) {
            return Err(Error::syntax(format!("json schema: no number lies between {a} and {b}")));
        }
    }
    Ok(Some(number_regex(lo, hi)))
}

/// Canonical integers in [lo, hi] (either side open).
pub fn integer_regex(lo: Option<i128>, hi: Option<i128>) -> String {
    let mut alts = Vec::new();
    if hi.is_none_or(|h| h >= 0) {
        alts.push(nonneg_int(lo.map_or(0, |l| l.max(0)), hi));
    }
    if lo.is_none_or(|l| l < 0) {
        let top = hi.map_or(1, |h| (-h).max(1));
        alts.push(format!("-{}", nonneg_int(top, lo.map(|l| -l))));
    }
    group(&alts)
}

/// Numbers (no exponent) in the range between `lo` and `hi`.
pub fn number_regex(lo: Bound, hi: Bound) -> String {
    let mut alts = Vec::new();
    // v >= 0.
    if hi.is_none_or(|(h, incl)| h > 0 || (h == 0 && incl)) {
        let l = match lo {
            Some((l, incl)) if l >= 0 => (l, incl),
            _ => (0, true),
        };
        alts.push(nonneg_number(l, hi));
    }
    // v < 0: -y with y > 0.
    if lo.is_none_or(|(l, _)| l < 0) {
        let y_lo = match hi {
            Some((h, incl)) if h < 0 => (-h, incl),
            _ => (0, false),
        };
        let y_hi = lo.map(|(l, incl)| (-l, incl));
        alts.push(format!("-{}", nonneg_number(y_lo, y_hi)));
    }
    group(&alts)
}

const FRAC: &str = r"(?:\.[0-9]+)?";
const NONZERO_FRAC: &str = r"\.[0-9]*[1-9][0-9]*";

/// Non-negative numbers from `lo` (>= 0) up to `hi`.
fn nonneg_number((a, a_incl): (i128, bool), hi: Bound) -> String {
    let mut alts = Vec::new();
    let at_a = |alts: &mut Vec<String>| {
        alts.push(if a_incl { format!("{a}{FRAC}") } else { format!("{a}{NONZERO_FRAC}") });
    };
    match hi {
        None => {
            at_a(&mut alts);
            alts.push(format!("{}{FRAC}", nonneg_int(a + 1, None)));
        }
        Some((b, _)) if b == a => alts.push(format!(r"{a}(?:\.0+)?")),
        Some((b, b_incl)) => {
            at_a(&mut alts);
            if a + 1 < b {
                alts.push(format!("{}{FRAC}", nonneg_int(a + 1, Some(b - 1))));
            }
            if b_incl {
                alts.push(format!(r"{b}(?:\.0+)?"));
            }
        }
    }
    group(&alts)
}

/// Canonical non-negative integers in [a, b] (b open when `None`), a >= 0.
fn nonneg_int(a: i128, b: Option<i128>) -> String {
    let digits = |x: i128| x.max(1).to_string().len();
    let da = digits(a);
    let mut alts = Vec::new();
    let last = b.map_or(da, digits);
    for d in da..=last {
        let lo = if d == 1 { a.max(0) } else { a.max(10i128.pow(d as u32 - 1)) };
        let hi = b.map_or(10i128.pow(d as u32) - 1, |b| b.min(10i128.pow(d as u32) - 1));
        if lo <= hi {
            alts.push(fixed(lo.to_string().as_bytes(), hi.to_string().as_bytes()));
        }
    }
    if b.is_none() {
        alts.push(format!("[1-9][0-9]{{{da},}}"));
    }
    group(&alts)
}

/// Digit strings of the same length between `x` and `y` inclusive.
fn fixed(x: &[u8], y: &[u8]) -> String {
    let n = x.len();
    if n == 0 {
        return String::new();
    }
    if x == y {
        return String::from_utf8_lossy(x).into_owned();
    }
    let (x0, y0) = (x[0], y[0]);
    if x0 == y0 {
        return format!("{}{}", x0 as char, fixed(&x[1..], &y[1..]));
    }
    let low_full = x[1..].iter().all(|&c| c == b'0');
    let high_full = y[1..].iter().all(|&c| c == b'9');
    let mut alts = Vec::new();
    if !low_full {
        alts.push(format!("{}{}", x0 as char, fixed(&x[1..], &vec![b'9'; n - 1])));
    }
    let (s, e) = (if low_full { x0 } else { x0 + 1 }, if high_full { y0 } else { y0 - 1 });
    if s <= e {
        let class = if s == e { (s as char).to_string() } else { format!("[{}-{}]", s as char, e as char) };
        alts.push(if n > 1 { format!("{class}[0-9]{{{}}}", n - 1) } else { class });
    }
    if !high_full {
        alts.push(format!("{}{}", y0 as char, fixed(&vec![b'0'; n - 1], &y[1..])));
    }
    group(&alts)
}

fn group(alts: &[String]) -> String {
    if alts.len() == 1 {
        alts[0].clone()
    } else {
        format!("(?:{})", alts.join("|"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn matches(re: &str, s: &str) -> bool {
        regex_automata::meta::Regex::new(&format!("^(?:{re})$")).unwrap().is_match(s)
    }

    proptest! {
        #[test]
        fn integer_ranges_are_exact(lo in proptest::option::of(-5000i128..5000), span in 0i128..5000, open_hi in any::<bool>(), v in -12000i128..12000) {
            let hi = if open_hi { None } else { Some(lo.unwrap_or(-5000) + span) };
            let re = integer_regex(lo, hi);
            let inside = lo.is_none_or(|l| v >= l) && hi.is_none_or(|h| v <= h);
            prop_assert_eq!(matches(&re, &v.to_string()), inside, "{} {:?} {:?} {}", re, lo, hi, v);
            prop_assert!(!matches(&re, &format!("0{}", v.abs())), "no leading zeros");
        }

        #[test]
        fn number_ranges_are_exact(lo in proptest::option::of((-300i128..300, any::<bool>())), span in 0i128..300, hi_incl in any::<bool>(), open_hi in any::<bool>(), v in -40000i64..40000) {
            let hi = if open_hi { None } else { Some((lo.map_or(-300, |l| l.0) + span, hi_incl)) };
            if let (Some((a, ai)), Some((b, bi))) = (lo, hi) {
                prop_assume!(a < b || (a == b && ai && bi));
            }
            let re = number_regex(lo, hi);
            let x = v as f64 / 100.0; // two decimals
            let text = format!("{x}");
            let inside = lo.is_none_or(|(l, incl)| if incl { x >= l as f64 } else { x > l as f64 })
                && hi.is_none_or(|(h, incl)| if incl { x <= h as f64 } else { x < h as f64 });
            prop_assert_eq!(matches(&re, &text), inside, "{} {:?} {:?} {}", re, lo, hi, text);
        }
    }

    #[test]
    fn schemas_with_bounds_and_formats() {
        let obj = |v: Value| v.as_object().unwrap().clone();
        let re = bounded(&obj(serde_json::json!({"type": "integer", "minimum": 1, "maximum": 12}))).unwrap().unwrap();
        assert!(
            matches(&re, "1") && matches(&re, "12") && !matches(&re, "0") && !matches(&re, "13") && !matches(&re, "01")
        );
        let re = bounded(&obj(serde_json::json!({"type": "integer", "exclusiveMinimum": 0}))).unwrap().unwrap();
        assert!(matches(&re, "1") && matches(&re, "123456789") && !matches(&re, "0") && !matches(&re, "-1"));
        let re = bounded(&obj(serde_json::json!({"type": "integer", "minimum": 0, "exclusiveMinimum": true})))
            .unwrap()
            .unwrap();
        assert!(!matches(&re, "0") && matches(&re, "7"));
        let re = bounded(&obj(serde_json::json!({"type": "integer", "format": "int32"}))).unwrap().unwrap();
        assert!(matches(&re, "2147483647") && !matches(&re, "2147483648") && matches(&re, "-2147483648"));
        let re = bounded(&obj(serde_json::json!({"type": "number", "minimum": -90, "maximum": 90}))).unwrap().unwrap();
        assert!(
            matches(&re, "-90")
                && matches(&re, "45.5")
                && matches(&re, "90.0")
                && !matches(&re, "90.5")
                && !matches(&re, "-90.01")
        );
        assert!(bounded(&obj(serde_json::json!({"type": "number", "minimum": 0.5}))).is_err());
        assert!(bounded(&obj(serde_json::json!({"type": "integer", "minimum": 5, "maximum": 4}))).is_err());
        assert_eq!(bounded(&obj(serde_json::json!({"type": "integer"}))).unwrap(), None);
    }
}
