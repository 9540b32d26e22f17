//! Reading tool calls out of a streamed answer as it grows, so each call's id and name go out as soon as they are
//! written and then its arguments in fragments as they are generated (concatenated, exactly the arguments string
//! of the whole answer).

use crate::server::api::chat::ToolCallDelta;
use crate::server::random_id;

/// Reads tool calls out of the output as it grows, so a stream sends each call's id and name as soon as they are
/// written and then its arguments as they are generated.
#[derive(Debug, Default)]
pub struct CallScan {
    /// Bytes of `pending` already consumed.
    pos: usize,
    /// Inside a call's arguments object: nesting depth, inside a string, after a backslash.
    pub in_args: bool,
    depth: i32,
    in_str: bool,
    esc: bool,
    /// Calls opened so far (the index of the next).
    pub calls: usize,
}

impl CallScan {
    /// Tool-call delta entries for what `text` (the whole output so far) adds since the last call.
    pub fn advance(&mut self, text: &str) -> Vec<ToolCallDelta> {
        let mut out = Vec::new();
        loop {
            if !self.in_args {
                let Some((name, args_at)) = call_head(&text[self.pos..]) else { return out };
                out.push(ToolCallDelta::open(self.calls, random_id("call_"), name));
                self.pos += args_at;
                self.in_args = true;
                self.depth = 0;
                self.in_str = false;
                self.esc = false;
                continue;
            }
            let rest = &text[self.pos..];
            let mut end = rest.len();
            let mut closed = false;
            for (i, c) in rest.char_indices() {
                if self.in_str {
                    match (self.esc, c) {
                        (true, _) => self.esc = false,
                        (false, '\\') => self.esc = true,
                        (false, '"') => self.in_str = false,
                        _ => {}
                    }
                } else if c == '"' {
                    self.in_str = true;
                } else if c == '{' || c == '[' {
                    self.depth += 1;
                } else if c == '}' || c == ']' {
                    self.depth -= 1;
                    if self.depth == 0 {
                        end = i + 1;
                        closed = true;
                        break;
                    }
                }
            }
            if end > 0 {
                out.push(ToolCallDelta::arguments(self.calls, rest[..end].to_string()));
            }
            self.pos += end;
            if !closed {
                return out;
            }
            self.in_args = false;
            self.calls += 1;
        }
    }
}

/// In `text`, a call object's name and the offset where its arguments object starts (`{"name": "f",
/// "arguments": {` with any spacing); `None` until all of that has been written.
fn call_head(text: &str) -> Option<(String, usize)> {
    let skip_ws = |s: &str, i: usize| i + s[i..].len() - s[i..].trim_start().len();
    let n = text.find("\"name\"")?;
    let mut i = skip_ws(text, n + 6);
    i = skip_ws(text, i + text[i..].strip_prefix(':').map(|_| 1)?);
    let name_start = i + text[i..].strip_prefix('"').map(|_| 1)?;
    let name_len = text[name_start..].find('"')?;
    let name = text[name_start..name_start + name_len].to_string();
    let after = name_start + name_len + 1;
    let key =
        ["\"arguments\"", "\"parameters\""].iter().filter_map(|k| text[after..].find(k).map(|p| (p, k.len()))).min()?;
    let mut j = skip_ws(text, after + key.0 + key.1);
    j = skip_ws(text, j + text[j..].strip_prefix(':').map(|_| 1)?);
    text[j..].starts_with('{').then_some((name, j))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::tools::ToolFormat;

    /// Feeds `text` in pieces of `step` bytes; returns (names, arguments per call) as a client would rebuild them.
    fn stream(text: &str, step: usize) -> (Vec<String>, Vec<String>) {
        let mut scan = CallScan::default();
        let (mut names, mut args) = (Vec::new(), Vec::<String>::new());
        let mut cut = 0;
        while cut < text.len() {
            cut = (cut + step).min(text.len());
            while !text.is_char_boundary(cut) {
                cut += 1;
            }
            for d in scan.advance(&text[..cut]) {
                let k = d.index;
                if let Some(n) = d.function.name {
                    assert_eq!(k, names.len(), "a call opens with its name");
                    assert!(d.id.is_some());
                    names.push(n);
                    args.push(String::new());
                }
                args[k].push_str(&d.function.arguments);
            }
        }
        (names, args)
    }

    #[test]
    fn tool_calls_stream_as_they_are_written() {
        let text = "{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Pa}ris\\\"\", \"n\": [1, {\"a\": 2}]}}\n\
                    {\"name\" : \"get_time\" , \"arguments\" : {\"tz\": \"UTC\"}}";
        for step in [1, 3, 7, 1000] {
            let (names, args) = stream(text, step);
            assert_eq!(names, ["get_weather", "get_time"], "step {step}");
            assert_eq!(args, [r#"{"city": "Pa}ris\"", "n": [1, {"a": 2}]}"#, r#"{"tz": "UTC"}"#], "step {step}");
            let parsed = ToolFormat::JSON.parse(text).unwrap();
            assert_eq!(parsed.iter().map(|c| c.1.clone()).collect::<Vec<_>>(), args, "stream equals the whole parse");
        }
        let hermes = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": \"é\"}}\n</tool_call>";
        assert_eq!(stream(hermes, 2), (vec!["f".to_string()], vec![r#"{"x": "é"}"#.to_string()]));
    }
}
