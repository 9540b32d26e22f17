//! Turning token ids into text as they come: incremental detokenization and stop strings.

use tokenizers::Tokenizer;

/// Incremental detokenization (the prefix/read offset scheme of TGI and vLLM): each step decodes a short window
/// of recent ids and emits only what is new, holding back text that ends in an incomplete UTF-8 character. The
/// concatenation of everything emitted, after [`finish`](Self::finish), equals decoding all ids at once.
#[derive(Debug, Clone, Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
}

impl Detokenizer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `id`; returns the text it completes (possibly empty).
    pub fn push(&mut self, tok: &Tokenizer, id: u32, skip_special: bool) -> String {
        self.ids.push(id);
        let prefix = decode(tok, &self.ids[self.prefix_offset..self.read_offset], skip_special);
        let full = decode(tok, &self.ids[self.prefix_offset..], skip_special);
        if full.len() > prefix.len() && !full.ends_with('\u{FFFD}') && full.is_char_boundary(prefix.len()) {
            let out = full[prefix.len()..].to_string();
            self.prefix_offset = self.read_offset;
            self.read_offset = self.ids.len();
            out
        } else {
            String::new()
        }
    }

    /// Whatever is still held back (an incomplete character at the very end becomes U+FFFD, as a full decode
    /// would show it).
    pub fn finish(&mut self, tok: &Tokenizer, skip_special: bool) -> String {
        if self.read_offset == self.ids.len() {
            return String::new();
        }
        let prefix = decode(tok, &self.ids[self.prefix_offset..self.read_offset], skip_special);
        let full = decode(tok, &self.ids[self.prefix_offset..], skip_special);
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        full.get(prefix.len()..).unwrap_or_default().to_string()
    }
}

fn decode(tok: &Tokenizer, ids: &[u32], skip_special: bool) -> String {
    if ids.is_empty() {
        return String::new();
    }
    tok.decode(ids, skip_special).unwrap_or_default()
}

/// Finds stop strings in streamed text. Text that could be the start of a stop string is held back until it is
/// known not to be one, so a stop string never reaches the client, not even in part.
#[derive(Debug, Clone, Default)]
pub struct StopStrings {
    stops: Vec<String>,
    pending: String,
}

impl StopStrings {
    pub fn new(stops: Vec<String>) -> Self {
        Self { stops: stops.into_iter().filter(|s| !s.is_empty()).collect(), pending: String::new() }
    }

    /// Adds `text`; returns the text safe to emit and the stop string found, if any (text after it is dropped).
    pub fn push(&mut self, text: &str) -> (String, Option<String>) {
        if self.stops.is_empty() {
            return (text.to_string(), None);
        }
        self.pending.push_str(text);
        let hit = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|&(at, s)| (at, std::cmp::Reverse(s.len())));
        if let Some((at, s)) = hit {
            let out = self.pending[..at].to_string();
            let s = s.clone();
            self.pending.clear();
            return (out, Some(s));
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let mut hold = 0;
        for s in &self.stops {
            for (i, _) in s.char_indices().skip(1) {
                if i > hold && self.pending.ends_with(&s[..i]) {
                    hold = i;
                }
            }
        }
        let cut = self.pending.len() - hold;
        let out = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        (out, None)
    }

    /// The held-back text, at the end of a generation that did not stop on a string.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, Option<String>) {
        let mut s = StopStrings::new(stops.iter().map(|s| s.to_string()).collect());
        let mut out = String::new();
        for p in pieces {
            let (t, hit) = s.push(p);
            out.push_str(&t);
            if hit.is_some() {
                return (out, hit);
            }
        }
        out.push_str(&s.flush());
        (out, None)
    }

    #[test]
    fn stop_strings_split_across_pieces_are_found_and_never_emitted() {
        assert_eq!(run(&["END"], &["abc E", "N", "D tail"]), ("abc ".into(), Some("END".into())));
        assert_eq!(run(&["END"], &["abc E", "N", "x"]), ("abc ENx".into(), None));
        assert_eq!(run(&["\n\n", "##"], &["a\n", "#", "#b"]), ("a\n".into(), Some("##".into())));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), None));
        assert_eq!(run(&["é!"], &["café", "!"]), ("caf".into(), Some("é!".into())));
    }

    #[test]
    fn held_back_text_is_released_when_the_match_fails() {
        let mut s = StopStrings::new(vec!["STOP".into()]);
        assert_eq!(s.push("xST"), ("x".into(), None));
        assert_eq!(s.push("O"), ("".into(), None));
        assert_eq!(s.push("P?"), ("".into(), Some("STOP".into())));
        let mut s = StopStrings::new(vec!["STOP".into()]);
        assert_eq!(s.push("xST"), ("x".into(), None));
        assert_eq!(s.push("x"), ("STx".into(), None));
    }
}
