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

/// A decimal bound: sign, integer part, fractional digits (no trailing zeros), inclusive.
#[derive(Debug, Clone, PartialEq)]
pub struct Dec {
    pub neg: bool,
    pub int: i128,
    pub frac: Vec<u8>,
    pub incl: bool,
}

impl Dec {
    /// `v` as written in decimal (Rust prints `f64` without an exponent); `None` past 1e18.
    pub fn new(v: f64, incl: bool) -> Option<Self> {
        if !v.is_finite() || v.abs() > 1e18 {
            return None;
        }
        let text = format!("{}", v.abs());
        let (int, frac) = text.split_once('.').unwrap_or((&text, ""));
        let frac = frac.trim_end_matches('0').bytes().map(|b| b - b'0').collect();
        Some(Self { neg: v < 0.0, int: int.parse().ok()?, frac, incl })
    }
    fn is_zero(&self) -> bool {
        self.int == 0 && self.frac.is_empty()
    }
    fn negated(&self) -> Self {
        Self { neg: !self.neg && !self.is_zero(), ..self.clone() }
    }
}

/// Fractional digit strings (what follows the point, value 0.f): the regex of the non-empty ones, and whether
/// "no fractional part" (value 0) belongs.
struct FracLang {
    some: Option<String>,
    none: bool,
}

/// `d` then the digits of `rest` (possibly none).
fn then(d: u8, rest: &FracLang) -> Option<String> {
    match (&rest.some, rest.none) {
        (Some(r), true) => Some(format!("{d}(?:{r})?")),
        (Some(r), false) => Some(format!("{d}{r}")),
        (None, true) => Some(d.to_string()),
        (None, false) => None,
    }
}

fn digits(lo: u8, hi: u8) -> Option<String> {
    match (lo, hi) {
        (a, b) if a > b => None,
        (a, b) if a == b => Some(format!("{a}[0-9]*")),
        (a, b) => Some(format!("[{a}-{b}][0-9]*")),
    }
}

fn frac_alts(alts: Vec<Option<String>>, none: bool) -> FracLang {
    let alts: Vec<String> = alts.into_iter().flatten().collect();
    FracLang { some: (!alts.is_empty()).then(|| group(&alts)), none }
}

/// 0.f >= 0.lo (> when strict), digits past the end counting as zeros.
fn frac_ge(lo: &[u8], strict: bool) -> FracLang {
    match lo.split_first() {
        None if strict => FracLang { some: Some("[0-9]*[1-9][0-9]*".into()), none: false },
        None => FracLang { some: Some("[0-9]+".into()), none: true },
        Some((&d, rest)) => frac_alts(vec![digits(d + 1, 9), then(d, &frac_ge(rest, strict))], false),
    }
}

/// 0.f <= 0.hi (< when strict).
fn frac_le(hi: &[u8], strict: bool) -> FracLang {
    match hi.split_first() {
        None if strict => FracLang { some: None, none: false },
        None => FracLang { some: Some("0+".into()), none: true },
        Some((&d, rest)) => {
            frac_alts(vec![if d > 0 { digits(0, d - 1) } else { None }, then(d, &frac_le(rest, strict))], true)
        }
    }
}

/// 0.lo <= 0.f <= 0.hi (either side strict), lo <= hi.
fn frac_between(lo: &[u8], lo_strict: bool, hi: &[u8], hi_strict: bool) -> FracLang {
    let none = lo.is_empty() && !lo_strict && !(hi.is_empty() && hi_strict);
    if lo.is_empty() && hi.is_empty() {
        return FracLang { some: (!lo_strict && !hi_strict).then(|| "0+".into()), none };
    }
    let (f0, lo_rest) = lo.split_first().map_or((0, &[][..]), |(d, r)| (*d, r));
    let (e0, hi_rest) = hi.split_first().map_or((0, &[][..]), |(d, r)| (*d, r));
    let alts = if f0 == e0 {
        vec![then(f0, &frac_between(lo_rest, lo_strict, hi_rest, hi_strict))]
    } else if f0 < e0 {
        vec![
            if f0 + 1 < e0 { digits(f0 + 1, e0 - 1) } else { None },
            then(f0, &frac_ge(lo_rest, lo_strict)),
            then(e0, &frac_le(hi_rest, hi_strict)),
        ]
    } else {
        vec![]
    };
    frac_alts(alts, none)
}

/// `int` followed by a fractional part from `f`.
fn with_frac(int: String, f: &FracLang) -> Option<String> {
    match (&f.some, f.none) {
        (Some(r), true) => Some(format!(r"{int}(?:\.{r})?")),
        (Some(r), false) => Some(format!(r"{int}\.{r}")),
        (None, true) => Some(int),
        (None, false) => None,
    }
}

/// Non-negative numbers (no exponent) from `lo` (non-negative) up to `hi` (non-negative, or open).
fn nonneg_decimal(lo: &Dec, hi: Option<&Dec>) -> Option<String> {
    let any = FracLang { some: Some("[0-9]+".into()), none: true };
    let mut alts: Vec<Option<String>> = Vec::new();
    match hi {
        None => {
            alts.push(with_frac(lo.int.to_string(), &frac_ge(&lo.frac, !lo.incl)));
            alts.push(with_frac(nonneg_int(lo.int + 1, None), &any));
        }
        Some(hi) if hi.int == lo.int => {
            alts.push(with_frac(lo.int.to_string(), &frac_between(&lo.frac, !lo.incl, &hi.frac, !hi.incl)));
        }
        Some(hi) => {
            alts.push(with_frac(lo.int.to_string(), &frac_ge(&lo.frac, !lo.incl)));
            if lo.int + 1 < hi.int {
                alts.push(with_frac(nonneg_int(lo.int + 1, Some(hi.int - 1)), &any));
            }
            alts.push(with_frac(hi.int.to_string(), &frac_le(&hi.frac, !hi.incl)));
        }
    }
    let alts: Vec<String> = alts.into_iter().flatten().collect();
    (!alts.is_empty()).then(|| group(&alts))
}

/// Numbers (no exponent) between two decimal bounds (either open); `None` when none lies between them.
pub fn decimal_regex(lo: Option<Dec>, hi: Option<Dec>) -> Option<String> {
    let zero = |incl| Dec { neg: false, int: 0, frac: Vec::new(), incl };
    let mut alts = Vec::new();
    // x >= 0
    if hi.as_ref().is_none_or(|h| !h.neg && (!h.is_zero() || h.incl)) {
        let l = match &lo {
            Some(l) if !l.neg => l.clone(),
            _ => zero(true),
        };
        alts.extend(nonneg_decimal(&l, hi.as_ref().filter(|h| !h.neg)));
    }
    // x < 0: -y with y > 0
    if lo.as_ref().is_none_or(|l| l.neg) {
        let y_lo = match &hi {
            Some(h) if h.neg => h.negated(),
            _ => zero(false),
        };
        let y_hi = lo.as_ref().map(Dec::negated);
        if let Some(r) = nonneg_decimal(&y_lo, y_hi.as_ref()) {
            alts.push(format!("-{r}"));
        }
    }
    (!alts.is_empty()).then(|| group(&alts))
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

    proptest! {
        #[test]
        fn decimal_bounds_are_exact(lo in proptest::option::of((-3000i64..3000, any::<bool>())), span in 0i64..3000, hi_incl in any::<bool>(), open_hi in any::<bool>(), v in -40000i64..40000) {
            // Bounds with up to three decimals, values with up to three.
            let lo = lo.map(|(l, incl)| (l as f64 / 1000.0, incl));
            let hi = if open_hi { None } else { Some((lo.map_or(-3.0, |l| l.0) + span as f64 / 997.0, hi_incl)) };
            let x = v as f64 / 1000.0;
            let re = decimal_regex(lo.and_then(|(l, i)| Dec::new(l, i)), hi.and_then(|(h, i)| Dec::new(h, i)));
            let inside = lo.is_none_or(|(l, incl)| if incl { x >= l } else { x > l })
                && hi.is_none_or(|(h, incl)| if incl { x <= h } else { x < h });
            let text = format!("{x}");
            let ok = re.as_ref().is_some_and(|re| matches(re, &text));
            prop_assert_eq!(ok, inside, "{:?} {:?} {:?} {}", re, lo, hi, text);
            if let Some(re) = &re {
                prop_assert_eq!(matches(re, &format!("{text}{}0", if text.contains('.') { "" } else { "." })), inside);
            }
        }
    }

    #[test]
    fn decimal_bound_edges() {
        let d = |v: f64, incl| Dec::new(v, incl);
        let re = decimal_regex(d(0.5, true), d(2.25, false)).unwrap();
        for ok in ["0.5", "0.50", "0.51", "1", "2", "2.2", "2.249"] {
            assert!(matches(&re, ok), "{ok}");
        }
        for bad in ["0.49", "0", "2.25", "2.250", "3", "-1", "0.4999"] {
            assert!(!matches(&re, bad), "{bad}");
        }
        let re = decimal_regex(d(-0.5, false), d(-0.25, true)).unwrap();
        for ok in ["-0.25", "-0.3", "-0.499"] {
            assert!(matches(&re, ok), "{ok}");
        }
        for bad in ["-0.5", "-0.2", "0", "-1"] {
            assert!(!matches(&re, bad), "{bad}");
        }
        assert!(decimal_regex(d(0.5, false), d(0.5, true)).is_none_or(|re| !matches(&re, "0.5")));
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
