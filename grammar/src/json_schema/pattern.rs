//! Strings: ECMA-262 `pattern`s (search semantics) and `format`s, as regexes over the *decoded* string that can be
//! embedded between the quotes of a JSON string, plus their character-length bounds so `minLength`/`maxLength`
//! can be combined with them.

use std::sync::Arc;

use regex_syntax::hir::{Class, ClassUnicode, ClassUnicodeRange, Hir, HirKind, Look, Repetition};

use super::cx::{memo, Cx};
use super::unsupported;
use crate::error::{Error, Result};

/// One character of a JSON string's content, as written in JSON text: a raw character, a short escape, or a
/// `\u` escape of a non-surrogate (a surrogate pair would count as two characters where the string has one).
pub(crate) const JSON_CHAR: &str = r#"(?:[^"\\\x00-\x1F]|\\["\\/bfnrt]|\\u(?:[0-9a-cA-C][0-9a-fA-F]{3}|[dD][0-7][0-9a-fA-F]{2}|[eEfF][0-9a-fA-F]{3}))"#;

/// Characters a pattern or format may produce raw: no `"`, `\`, controls, or ECMA line terminators.
fn safe_class() -> ClassUnicode {
    ClassUnicode::new([
        ClassUnicodeRange::new('\u{20}', '\u{21}'),
        ClassUnicodeRange::new('\u{23}', '\u{5B}'),
        ClassUnicodeRange::new('\u{5D}', '\u{2027}'),
        ClassUnicodeRange::new('\u{202A}', '\u{10FFFF}'),
    ])
}

/// Rewrites an ECMA-262 pattern into regex-syntax's dialect: `\d` and `\w` are ASCII in ECMA (Unicode here),
/// `\/` and `\-` are plain escapes; what has no equivalent (word boundaries, back-references, look-arounds) is
/// refused.
fn ecma_to_rust(p: &str) -> Result<String> {
    let bad = |why: &str| unsupported("pattern", &format!("{why} ({p:?})"));
    let mut out = String::with_capacity(p.len() + 8);
    let mut chars = p.chars().peekable();
    let mut in_class = false;
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                let Some(e) = chars.next() else { return Err(bad("ending in a backslash")) };
                match (e, in_class) {
                    ('d', false) => out.push_str("[0-9]"),
                    ('d', true) => out.push_str("0-9"),
                    ('D', false) => out.push_str("[^0-9]"),
                    ('w', false) => out.push_str("[A-Za-z0-9_]"),
                    ('w', true) => out.push_str("A-Za-z0-9_"),
                    ('W', false) => out.push_str("[^A-Za-z0-9_]"),
                    ('D' | 'W', true) => return Err(bad("with \\D or \\W inside a class")),
                    ('b', true) => out.push_str("\\x08"),
                    ('b' | 'B', false) => return Err(bad("with a word boundary")),
                    ('1'..='9', _) => return Err(bad("with a back-reference")),
                    ('0', _) => out.push_str("\\x00"),
                    ('c', _) => return Err(bad("with a control escape")),
                    ('/', _) => out.push('/'),
                    ('u', _) if chars.peek() == Some(&'{') => return Err(bad("with \\u{...}")),
                    (e, _) if e.is_ascii_alphanumeric() => {
                        out.push('\\');
                        out.push(e);
                    }
                    (e, _) => {
                        // Any other escaped character stands for itself.
                        out.push_str(&regex_syntax::escape(&e.to_string()));
                    }
                }
            }
            '[' if !in_class => {
                in_class = true;
                out.push('[');
                if chars.peek() == Some(&'^') {
                    out.push(chars.next().unwrap_or('^'));
                }
                // A leading `]` is a literal in regex-syntax and an empty class in ECMA.
                if chars.peek() == Some(&']') {
                    return Err(bad("with an empty class"));
                }
            }
            '[' if in_class => out.push_str("\\["),
            ']' if in_class => {
                in_class = false;
                out.push(']');
            }
            '(' if !in_class && chars.peek() == Some(&'?') => {
                out.push('(');
                let mut look = chars.clone();
                look.next();
                match look.next() {
                    Some(':') => {}
                    Some('<') if !matches!(look.next(), Some('=' | '!')) => {}
                    _ => return Err(bad("with a look-around")),
                }
            }
            '&' | '~' | '-' if in_class => {
                // Class set operators in regex-syntax (`&&`, `--`, `~~`) are literals in ECMA.
                if chars.peek() == Some(&c) && c != '-' {
                    out.push('\\');
                }
                out.push(c);
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// A compiled `pattern`: for checking decoded strings, and as regex pieces for output.
pub(crate) struct StringPattern {
    matcher: regex_automata::meta::Regex,
    /// One entry per top-level alternative: (anchored at the start, body, anchored at the end).
    branches: Vec<(bool, Hir, bool)>,
}

impl StringPattern {
    /// `p` compiled, once per schema.
    pub fn new(cx: &Cx, p: &str) -> Result<Arc<Self>> {
        memo(&cx.patterns, &p.to_string(), || Ok(Arc::new(Self::compile(p)?)))
    }

    fn compile(p: &str) -> Result<Self> {
        let rust = ecma_to_rust(p)?;
        let hir = regex_syntax::Parser::new()
            .parse(&rust)
            .map_err(|e| unsupported("pattern", &format!("{p:?} that does not parse here: {e}")))?;
        let matcher = regex_automata::meta::Regex::builder()
            .configure(regex_automata::meta::Config::new().nfa_size_limit(Some(8 << 20)))
            .build_from_hir(&hir)
            .map_err(|e| unsupported("pattern", &format!("{p:?}: {e}")))?;
        let top = unwrap_captures(&hir);
        let alts: Vec<&Hir> = match top.kind() {
            HirKind::Alternation(hs) if hs.iter().any(|h| h.properties().look_set().contains(Look::Start)) => {
                hs.iter().collect()
            }
            _ => vec![top],
        };
        let mut branches = Vec::new();
        for a in alts {
            let a = unwrap_captures(a);
            let mut items: Vec<Hir> = match a.kind() {
                HirKind::Concat(hs) => hs.clone(),
                _ => vec![a.clone()],
            };
            let mut start = false;
            while items.first().is_some_and(|h| matches!(h.kind(), HirKind::Look(Look::Start))) {
                items.remove(0);
                start = true;
            }
            let mut end = false;
            while items.last().is_some_and(|h| matches!(h.kind(), HirKind::Look(Look::End))) {
                items.pop();
                end = true;
            }
            let body = Hir::concat(items);
            if !body.properties().look_set().is_empty() {
                return Err(unsupported("pattern", &format!("with anchors or look-arounds inside ({p:?})")));
            }
            branches.push((start, restrict(&body, &safe_class()), end));
        }
        Ok(Self { matcher, branches })
    }

    /// Whether the decoded string matches (a search, as in ECMA `RegExp.test`).
    pub fn is_match(&self, text: &str) -> bool {
        self.matcher.is_match(text)
    }

    /// String contents (JSON text between the quotes) matching the pattern, with `min..=max` characters in
    /// all; `None` when no string fits, an error when the length cannot be combined with this pattern.
    pub fn contents(&self, min: u64, max: Option<u64>) -> Result<Option<Hir>> {
        let mut alts = Vec::new();
        for (start, body, end) in &self.branches {
            let mut pieces: Vec<Piece> = Vec::new();
            if !start {
                pieces.push(Piece::Pad { min: 0, max: None });
            }
            match body.kind() {
                HirKind::Concat(hs) => pieces.extend(hs.iter().cloned().map(Piece::Hir)),
                HirKind::Empty => {}
                _ => pieces.push(Piece::Hir(body.clone())),
            }
            if !end {
                pieces.push(Piece::Pad { min: 0, max: None });
            }
            if let Some(pieces) = fit_length(pieces, min, max)? {
                alts.push(Hir::concat(pieces.iter().map(Piece::hir).collect()));
            }
        }
        Ok((!alts.is_empty()).then(|| Hir::alternation(alts)))
    }
}

fn unwrap_captures(h: &Hir) -> &Hir {
    match h.kind() {
        HirKind::Capture(c) => unwrap_captures(&c.sub),
        _ => h,
    }
}

/// A piece of string contents: part of a pattern, or any JSON characters (the unanchored ends of a search).
#[derive(Clone)]
enum Piece {
    Hir(Hir),
    Pad { min: u64, max: Option<u64> },
}

impl Piece {
    fn len(&self) -> (u64, Option<u64>) {
        match self {
            Piece::Hir(h) => char_len(h),
            Piece::Pad { min, max } => (*min, *max),
        }
    }
    fn hir(&self) -> Hir {
        match self {
            Piece::Hir(h) => h.clone(),
            Piece::Pad { min, max } => repeat(json_char(), *min, *max),
        }
    }
}

/// [`JSON_CHAR`], parsed once.
pub(crate) fn json_char() -> Hir {
    static CHAR: std::sync::OnceLock<Hir> = std::sync::OnceLock::new();
    CHAR.get_or_init(|| regex_syntax::Parser::new().parse(JSON_CHAR).expect("JSON_CHAR parses")).clone()
}

/// `x` repeated `min..=max` times.
pub(crate) fn repeat(x: Hir, min: u64, max: Option<u64>) -> Hir {
    let clamp = |n: u64| n.min(u32::MAX as u64) as u32;
    Hir::repetition(Repetition { min: clamp(min), max: max.map(clamp), greedy: true, sub: Box::new(x) })
}

/// Makes the pieces' total character count lie in `min..=max`: already true, or true after bounding the pieces
/// that repeat something of a fixed length (and the unanchored ends). With one such piece this is exact; with
/// several, the length budget is split evenly between them, which refuses some valid strings and admits no
/// invalid one. `None` when no length fits; an error when the pieces cannot be bounded.
fn fit_length(mut pieces: Vec<Piece>, min: u64, max: Option<u64>) -> Result<Option<Vec<Piece>>> {
    let lens: Vec<(u64, Option<u64>)> = pieces.iter().map(Piece::len).collect();
    let lo: u64 = lens.iter().map(|l| l.0).sum();
    let hi: Option<u64> = lens.iter().try_fold(0u64, |acc, l| l.1.map(|x| acc.saturating_add(x)));
    if lo >= min && max.is_none_or(|m| hi.is_some_and(|h| h <= m)) {
        return Ok(Some(pieces));
    }
    if max.is_some_and(|m| lo > m) || hi.is_some_and(|h| h < min) {
        return Ok(None);
    }
    let refuse = || Err(unsupported("minLength/maxLength", "beside a pattern or format of this shape"));
    // The unit a piece's length grows by, when its count can be bounded.
    let unit = |p: &Piece| -> Option<u64> {
        match p {
            Piece::Pad { .. } => Some(1),
            Piece::Hir(h) => match h.kind() {
                HirKind::Repetition(r) => match char_len(&r.sub) {
                    (a, Some(b)) if a == b && a > 0 => Some(a),
                    _ => None,
                },
                _ => None,
            },
        }
    };
    let adjustable: Vec<usize> =
        (0..pieces.len()).filter(|&i| lens[i].1 != Some(lens[i].0) && unit(&pieces[i]).is_some()).collect();
    if adjustable.is_empty() {
        return refuse();
    }
    let mut bounds: Vec<(u64, Option<u64>)> = lens.clone();
    if let Some(m) = max {
        // Every variable piece gets an equal share of what the fixed ones leave.
        let variable: Vec<usize> = (0..pieces.len()).filter(|&i| lens[i].1 != Some(lens[i].0)).collect();
        let fixed: u64 = (0..pieces.len()).filter(|i| !variable.contains(i)).map(|i| lens[i].0).sum();
        if fixed > m {
            return Ok(None);
        }
        let share = (m - fixed) / variable.len().max(1) as u64;
        for &i in &variable {
            if lens[i].1.is_some_and(|h| h <= share) {
                continue;
            }
            if lens[i].0 > share {
                return refuse();
            }
            match (unit(&pieces[i]), &pieces[i]) {
                (Some(u), _) => bounds[i].1 = Some(share / u * u),
                (None, Piece::Hir(h)) => {
                    let Some(b) = bound_hir(h, share) else { return refuse() };
                    bounds[i] = char_len(&b);
                    pieces[i] = Piece::Hir(b);
                }
                (None, Piece::Pad { .. }) => return refuse(),
            }
            if bounds[i].1 < Some(bounds[i].0) {
                return refuse();
            }
        }
    }
    let mut deficit = min.saturating_sub(bounds.iter().map(|b| b.0).sum());
    for &i in &adjustable {
        if deficit == 0 {
            break;
        }
        let u = unit(&pieces[i]).unwrap_or(1);
        let room = bounds[i].1.map_or(u64::MAX, |h| h - bounds[i].0) / u * u;
        let add = deficit.div_ceil(u) * u;
        let add = add.min(room);
        bounds[i].0 += add;
        deficit = deficit.saturating_sub(add);
    }
    if deficit > 0 {
        return refuse();
    }
    for &i in &adjustable {
        let u = unit(&pieces[i]).unwrap_or(1);
        let (lo, hi) = (bounds[i].0.div_ceil(u), bounds[i].1.map(|h| h / u));
        pieces[i] = match &pieces[i] {
            Piece::Pad { .. } => Piece::Pad { min: lo, max: hi },
            Piece::Hir(h) => match h.kind() {
                HirKind::Repetition(r) => Piece::Hir(Hir::repetition(Repetition {
                    min: lo.min(u32::MAX as u64) as u32,
                    max: hi.map(|m| m.min(u32::MAX as u64) as u32),
                    greedy: true,
                    sub: r.sub.clone(),
                })),
                _ => return refuse(),
            },
        };
    }
    Ok(Some(pieces))
}

/// A part of `h`'s language whose strings have at most `limit` characters (exactly those of `h` when its
/// repetitions allow; otherwise shorter bounds are chosen, refusing some of its strings). `None` when nothing fits.
fn bound_hir(h: &Hir, limit: u64) -> Option<Hir> {
    let (lo, hi) = char_len(h);
    if lo > limit {
        return None;
    }
    if hi.is_some_and(|x| x <= limit) {
        return Some(h.clone());
    }
    match h.kind() {
        HirKind::Capture(c) => bound_hir(&c.sub, limit),
        HirKind::Alternation(hs) => {
            let kept: Vec<Hir> = hs.iter().filter_map(|b| bound_hir(b, limit)).collect();
            (!kept.is_empty()).then(|| Hir::alternation(kept))
        }
        HirKind::Concat(hs) => {
            let lens: Vec<(u64, Option<u64>)> = hs.iter().map(char_len).collect();
            let variable = lens.iter().filter(|l| l.1 != Some(l.0)).count().max(1) as u64;
            let fixed: u64 = lens.iter().filter(|l| l.1 == Some(l.0)).map(|l| l.0).sum();
            let share = limit.checked_sub(fixed)? / variable;
            let items: Option<Vec<Hir>> = hs
                .iter()
                .zip(&lens)
                .map(|(x, l)| if l.1 == Some(l.0) { Some(x.clone()) } else { bound_hir(x, share) })
                .collect();
            items.map(Hir::concat)
        }
        HirKind::Repetition(r) => {
            let (a, b) = char_len(&r.sub);
            match b {
                Some(b) if b > 0 && limit / b >= r.min.max(1) as u64 => {
                    let most = (limit / b).min(r.max.map_or(u64::MAX, |m| m as u64));
                    Some(Hir::repetition(Repetition { max: Some(most as u32), ..r.clone() }))
                }
                _ => {
                    let count = (r.min.max(1) as u64).min(r.max.map_or(u64::MAX, |m| m as u64)).max(1);
                    if a * r.min as u64 > limit {
                        return None;
                    }
                    let sub = bound_hir(&r.sub, limit / count)?;
                    Some(Hir::repetition(Repetition { max: Some(count as u32), sub: Box::new(sub), ..r.clone() }))
                }
            }
        }
        _ => None,
    }
}

/// Characters (not bytes) a match of `h` spans: (fewest, most).
fn char_len(h: &Hir) -> (u64, Option<u64>) {
    match h.kind() {
        HirKind::Empty | HirKind::Look(_) => (0, Some(0)),
        HirKind::Literal(l) => {
            let n = String::from_utf8_lossy(&l.0).chars().count() as u64;
            (n, Some(n))
        }
        HirKind::Class(_) => (1, Some(1)),
        HirKind::Repetition(r) => {
            let (a, b) = char_len(&r.sub);
            let hi = match (r.max, b) {
                (Some(m), Some(b)) => Some(m as u64 * b),
                (_, Some(0)) => Some(0),
                _ => None,
            };
            (r.min as u64 * a, hi)
        }
        HirKind::Capture(c) => char_len(&c.sub),
        HirKind::Concat(hs) => hs
            .iter()
            .map(char_len)
            .fold((0, Some(0)), |(a, b), (c, d)| (a + c, b.and_then(|b| d.map(|d| b.saturating_add(d))))),
        HirKind::Alternation(hs) => {
            let lens: Vec<_> = hs.iter().map(char_len).collect();
            let lo = lens.iter().map(|l| l.0).min().unwrap_or(0);
            let hi = lens.iter().try_fold(0u64, |acc, l| l.1.map(|x| acc.max(x)));
            (lo, hi)
        }
    }
}

/// `h` restricted to characters a JSON string holds unescaped (anything else cannot be produced).
fn restrict(h: &Hir, safe: &ClassUnicode) -> Hir {
    match h.kind() {
        HirKind::Literal(lit) => match std::str::from_utf8(&lit.0) {
            Ok(text) if text.chars().all(|c| safe.ranges().iter().any(|r| r.start() <= c && c <= r.end())) => h.clone(),
            _ => Hir::fail(),
        },
        HirKind::Class(Class::Unicode(c)) => {
            let mut c = c.clone();
            c.intersect(safe);
            Hir::class(Class::Unicode(c))
        }
        HirKind::Class(Class::Bytes(b)) => {
            let ascii: Vec<ClassUnicodeRange> = b
                .ranges()
                .iter()
                .filter(|r| r.start() < 0x80)
                .map(|r| ClassUnicodeRange::new(r.start() as char, r.end().min(0x7F) as char))
                .collect();
            let mut c = ClassUnicode::new(ascii);
            c.intersect(safe);
            Hir::class(Class::Unicode(c))
        }
        HirKind::Repetition(r) => {
            let mut r = r.clone();
            r.sub = Box::new(restrict(&r.sub, safe));
            Hir::repetition(r)
        }
        HirKind::Capture(c) => restrict(&c.sub, safe),
        HirKind::Concat(hs) => Hir::concat(hs.iter().map(|x| restrict(x, safe)).collect()),
        HirKind::Alternation(hs) => Hir::alternation(hs.iter().map(|x| restrict(x, safe)).collect()),
        HirKind::Empty | HirKind::Look(_) => h.clone(),
    }
}

/// RFC 3339 dates with days valid in every year (29 February is refused, never a 30th).
const DATE: &str = r"[0-9]{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)|02-(?:0[1-9]|1[0-9]|2[0-8]))";
const TIME: &str =
    r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]{1,9})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])";
const UUID: &str = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}";
const LABEL: &str = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?";
const OCTET: &str = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
const H16: &str = r"[0-9a-fA-F]{1,4}";
/// RFC 3986 characters outside `%XX`, without `[` `]` (IPv6 hosts are refused; stricter, never invalid).
const URI_CHAR: &str = r"(?:[A-Za-z0-9\-._~:/?#@!$&'()*+,;=]|%[0-9A-Fa-f]{2})";
const URI_CHAR_NO_COLON: &str = r"(?:[A-Za-z0-9\-._~/?#@!$&'()*+,;=]|%[0-9A-Fa-f]{2})";
const DUR_TIME: &str = r"T(?:[0-9]+H(?:[0-9]+M(?:[0-9]+S)?)?|[0-9]+M(?:[0-9]+S)?|[0-9]+S)";
const POINTER: &str = r"(?:/(?:[^/~\x00-\x1F]|~[01])*)*";

/// The regex (over the decoded string) for a `format` we enforce.
fn format_regex(f: &str) -> Option<String> {
    let uri = format!("[A-Za-z][A-Za-z0-9+.-]*:{URI_CHAR}*");
    Some(match f {
        "date-time" => format!("{DATE}[Tt]{TIME}"),
        "date" => DATE.into(),
        "time" => TIME.into(),
        "uuid" => UUID.into(),
        // Lengths a regex can bound without counting across dots, stricter than RFC 5321's 64-octet local part
        // and 253-octet domain (validators check both): up to four atoms of 15 (63 at most) before the @, up to
        // three labels before a TLD of at most 24 letters (the longest in use) after it (216 at most).
        "email" | "idn-email" => format!(
            r"[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~-]{{1,15}}(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{{|}}~-]{{1,15}}){{0,3}}@(?:{LABEL}\.){{1,3}}[A-Za-z]{{2,24}}"
        ),
        "hostname" | "idn-hostname" => format!(r"{LABEL}(?:\.{LABEL}){{0,3}}"),
        "ipv4" => format!(r"{OCTET}(?:\.{OCTET}){{3}}"),
        "ipv6" => [
            format!("(?:{H16}:){{7}}{H16}"),
            format!("(?:{H16}:){{1,7}}:"),
            format!("(?:{H16}:){{1,6}}:{H16}"),
            format!("(?:{H16}:){{1,5}}(?::{H16}){{1,2}}"),
            format!("(?:{H16}:){{1,4}}(?::{H16}){{1,3}}"),
            format!("(?:{H16}:){{1,3}}(?::{H16}){{1,4}}"),
            format!("(?:{H16}:){{1,2}}(?::{H16}){{1,5}}"),
            format!("{H16}:(?::{H16}){{1,6}}"),
            format!(":(?:(?::{H16}){{1,7}}|:)"),
        ]
        .join("|"),
        "uri" | "iri" => uri,
        "uri-reference" | "iri-reference" => format!("{uri}|{URI_CHAR_NO_COLON}*"),
        "duration" => format!(
            "P(?:(?:[0-9]+Y(?:[0-9]+M(?:[0-9]+D)?)?|[0-9]+M(?:[0-9]+D)?|[0-9]+D)(?:{DUR_TIME})?|{DUR_TIME}|[0-9]+W)"
        ),
        "json-pointer" => POINTER.into(),
        "relative-json-pointer" => format!("(?:0|[1-9][0-9]*)(?:#|{POINTER})"),
        _ => return None,
    })
}

/// Whether a string `format` is checked by validators and enforced here (`Ok(false)`: an annotation, such as
/// OpenAPI's `int32` or `byte`; an error: a standard format we cannot enforce).
pub(crate) fn format_is_checked(f: &str) -> Result<bool> {
    if format_regex(f).is_some() {
        return Ok(true);
    }
    match f {
        "regex" | "uri-template" => Err(unsupported("format", &format!("{f:?}"))),
        _ => Ok(false),
    }
}

/// Whether a decoded string is in a checked `format`.
pub(crate) fn format_matches(cx: &Cx, f: &str, text: &str) -> Result<bool> {
    let Some(re) = format_regex(f) else { return Ok(true) };
    let m = memo(&cx.format_matchers, &f.to_string(), || {
        let m = regex_automata::meta::Regex::new(&format!("^(?:{re})$"))
            .map_err(|e| Error::syntax(format!("format {f:?}: {e}")))?;
        Ok(Arc::new(m))
    })?;
    Ok(m.is_match(text))
}

/// The contents of a string with these keywords (JSON text between the quotes); `None` when no string fits.
pub(crate) fn string_contents(
    cx: &Cx,
    min: u64,
    max: Option<u64>,
    pattern: Option<&str>,
    format: Option<&str>,
) -> Result<Option<Hir>> {
    if max.is_some_and(|m| m < min) {
        // No length fits: no string (a repetition {min,max} with max < min is not "nothing").
        return Ok(None);
    }
    match (pattern, format) {
        (Some(_), Some(_)) => Err(unsupported("pattern", "beside a checked format")),
        (Some(p), None) => StringPattern::new(cx, p)?.contents(min, max),
        (None, Some(f)) => {
            let hir = format_hir(cx, f)?;
            let pieces = match hir.kind() {
                HirKind::Concat(hs) => hs.iter().cloned().map(Piece::Hir).collect(),
                _ => vec![Piece::Hir(hir)],
            };
            Ok(fit_length(pieces, min, max)?.map(|p| Hir::concat(p.iter().map(Piece::hir).collect())))
        }
        (None, None) => Ok(Some(repeat(json_char(), min, max))),
    }
}

/// A format's regex, parsed once per schema.
fn format_hir(cx: &Cx, f: &str) -> Result<Hir> {
    memo(&cx.format_hirs, &f.to_string(), || {
        let re = format_regex(f).ok_or_else(|| unsupported("format", &format!("{f:?}")))?;
        regex_syntax::Parser::new().parse(&re).map_err(|e| Error::syntax(format!("format {f:?} regex: {e}")))
    })
}
