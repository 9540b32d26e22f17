//! Regexes for bounded JSON numbers (the bounds come from `minimum`, `maximum`, `exclusive*` and integer formats).
//!
//! Integers get an exact regex of their canonical decimal forms (no leading zeros, no `-0`). Numbers with whole
//! bounds get an exact regex of their forms without an exponent, optionally with at most `d` significant
//! decimals (`multipleOf: 10^-d`). Both only narrow the JSON grammar: every string they admit is a valid instance.

/// A bound: value and whether it is inclusive.
type Bound = Option<(i128, bool)>;

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

/// Numbers (no exponent) in the range between `lo` and `hi`, with at most `decimals` significant decimals.
pub fn number_regex(lo: Bound, hi: Bound, decimals: Option<u32>) -> String {
    let fr = Frac::new(decimals);
    let mut alts = Vec::new();
    // v >= 0.
    if hi.is_none_or(|(h, incl)| h > 0 || (h == 0 && incl)) {
        let l = match lo {
            Some((l, incl)) if l >= 0 => (l, incl),
            _ => (0, true),
        };
        alts.push(nonneg_number(l, hi, &fr));
    }
    // v < 0: -y with y > 0.
    if lo.is_none_or(|(l, _)| l < 0) {
        let y_lo = match hi {
            Some((h, incl)) if h < 0 => (-h, incl),
            _ => (0, false),
        };
        let y_hi = lo.map(|(l, incl)| (-l, incl));
        alts.push(format!("-{}", nonneg_number(y_lo, y_hi, &fr)));
    }
    group(&alts)
}

/// Fractional parts: any (optional), and one that is not zero.
struct Frac {
    any: String,
    nonzero: String,
}

impl Frac {
    fn new(decimals: Option<u32>) -> Self {
        match decimals {
            None => Self { any: r"(?:\.[0-9]+)?".into(), nonzero: r"\.[0-9]*[1-9][0-9]*".into() },
            Some(0) => Self { any: r"(?:\.0+)?".into(), nonzero: "[a&&b]".into() },
            Some(d) => {
                Self { any: format!(r"(?:\.[0-9]{{1,{d}}}0*)?"), nonzero: format!(r"\.[0-9]{{0,{}}}[1-9]0*", d - 1) }
            }
        }
    }
}

/// Non-negative numbers from `lo` (>= 0) up to `hi`.
fn nonneg_number((a, a_incl): (i128, bool), hi: Bound, fr: &Frac) -> String {
    let (frac, nonzero) = (&fr.any, &fr.nonzero);
    let mut alts = Vec::new();
    let at_a = |alts: &mut Vec<String>| {
        alts.push(if a_incl { format!("{a}{frac}") } else { format!("{a}{nonzero}") });
    };
    match hi {
        None => {
            at_a(&mut alts);
            alts.push(format!("{}{frac}", nonneg_int(a + 1, None)));
        }
        Some((b, _)) if b == a => alts.push(format!(r"{a}(?:\.0+)?")),
        Some((b, b_incl)) => {
            at_a(&mut alts);
            if a + 1 < b {
                alts.push(format!("{}{frac}", nonneg_int(a + 1, Some(b - 1))));
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
            let re = number_regex(lo, hi, None);
            let x = v as f64 / 100.0; // two decimals
            let text = format!("{x}");
            let inside = lo.is_none_or(|(l, incl)| if incl { x >= l as f64 } else { x > l as f64 })
                && hi.is_none_or(|(h, incl)| if incl { x <= h as f64 } else { x < h as f64 });
            prop_assert_eq!(matches(&re, &text), inside, "{} {:?} {:?} {}", re, lo, hi, text);
        }
    }

    #[test]
    fn decimals_bound_the_fraction() {
        let re = number_regex(Some((0, true)), Some((10, false)), Some(2));
        for ok in ["0", "0.5", "9.99", "3.10", "3.100"] {
            assert!(matches(&re, ok), "{ok}");
        }
        for bad in ["10", "0.001", "9.999", "-1", "10.0"] {
            assert!(!matches(&re, bad), "{bad}");
        }
        let re = number_regex(Some((0, false)), None, Some(1));
        assert!(matches(&re, "0.1") && !matches(&re, "0") && !matches(&re, "0.0") && !matches(&re, "0.05"));
    }
}
