//! Tool calls as one constraint: the output is one or more calls to the given functions, each call's arguments
//! valid against that function's `parameters`, written in one of the given [`CallSyntax`]es (and, with
//! [`ToolCalls::allow_text`], free text that does not start like a call instead).
//!
//! Each function's `parameters` is compiled as its own JSON Schema document ([`crate::json_schema::schema_to_rx`]),
//! so its `$defs`, `$ref` and `$id` resolve inside it, and two functions may both define `#/$defs/Item`. The call
//! objects around them are built as an [`Rx`] tree directly: no regex text is written and parsed again, and a
//! function's arguments piece is one shared subtree however many syntaxes use it.

use crate::error::{Error, Result};
use crate::json_schema::{schema_to_rx, Options};
use crate::rx::Rx;

/// Whitespace allowed inside a call object and its arguments: at most one space. Compact calls, because models
/// otherwise pad calls with newlines until `max_tokens`.
pub const CALL_WHITESPACE: &str = "[ ]?";

/// Whitespace allowed before the first call (a model often opens its answer with a newline).
const LEADING_WHITESPACE: &str = "[ \\n]{0,2}";

/// How a model writes its calls. One call is the JSON object `{"name": <name>, "<arguments_key>": <arguments>}`;
/// the literal strings around it say how calls are wrapped: `before_all`, then each call as
/// `before_each call after_each` with `between` between two calls, then `after_all`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CallSyntax {
    pub arguments_key: String,
    pub before_all: String,
    pub before_each: String,
    pub after_each: String,
    pub between: String,
    pub after_all: String,
}

/// One function a call may name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ToolFunction {
    pub name: String,
    /// The JSON Schema of its arguments, as JSON text (a document of its own: `#/...` points inside it).
    pub parameters: String,
}

/// The output is calls (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ToolCalls {
    pub functions: Vec<ToolFunction>,
    /// The forms a whole answer may take, one form per answer.
    pub syntaxes: Vec<CallSyntax>,
    /// Most calls in one answer (at least 1).
    pub max_calls: u32,
    /// The answer may instead be free text whose first character is neither whitespace nor the first byte of
    /// any syntax's calls (`tool_choice: "auto"`).
    pub allow_text: bool,
}

impl ToolCalls {
    /// The language of the answers, as one tree.
    pub fn to_rx(&self) -> Result<Rx> {
        if self.functions.is_empty() {
            return Err(Error::syntax("tool calls: no functions"));
        }
        if self.syntaxes.is_empty() {
            return Err(Error::syntax("tool calls: no call syntax"));
        }
        let ws = Rx::hir(crate::grammar::parse(CALL_WHITESPACE, "call whitespace")?);
        let opts = Options { whitespace: CALL_WHITESPACE.into(), ..Options::default() };
        let mut arguments = Vec::with_capacity(self.functions.len());
        for f in &self.functions {
            let schema: serde_json::Value = serde_json::from_str(&f.parameters)
                .map_err(|e| Error::syntax(format!("function {:?}'s parameters are not JSON: {e}", f.name)))?;
            let rx = schema_to_rx(&schema, &opts)
                .map_err(|e| e.context(&format!("function {:?}'s parameters: ", f.name)))?;
            arguments.push((json_string(&f.name), rx));
        }
        let lit = |s: &str| Rx::literal(s.as_bytes());
        let mut forms = Vec::with_capacity(self.syntaxes.len());
        for s in &self.syntaxes {
            let key = json_string(&s.arguments_key);
            // {"name": "f", "arguments": ARGS}, with the call whitespace between every two tokens.
            let objects = arguments
                .iter()
                .map(|(name, args)| {
                    Rx::concat(vec![
                        lit("{"),
                        ws.clone(),
                        lit("\"name\""),
                        ws.clone(),
                        lit(":"),
                        ws.clone(),
                        lit(name),
                        ws.clone(),
                        lit(","),
                        ws.clone(),
                        lit(&key),
                        ws.clone(),
                        lit(":"),
                        ws.clone(),
                        args.clone(),
                        ws.clone(),
                        lit("}"),
                    ])
                })
                .collect();
            let one = Rx::concat(vec![lit(&s.before_each), Rx::alternation(objects), lit(&s.after_each)]);
            let more = Rx::repeat(Rx::concat(vec![lit(&s.between), one.clone()]), 0, Some(self.max_calls.max(1) - 1));
            forms.push(Rx::concat(vec![lit(&s.before_all), one, more, lit(&s.after_all)]));
        }
        let lead = Rx::hir(crate::grammar::parse(LEADING_WHITESPACE, "leading whitespace")?);
        let calls = Rx::concat(vec![lead, Rx::alternation(forms)]);
        if !self.allow_text {
            return Ok(calls);
        }
        Ok(Rx::alternation(vec![self.text_rx()?, calls]))
    }

    /// Free text that cannot be read as the start of a call: its first character is not whitespace nor the
    /// first byte of any syntax's calls.
    fn text_rx(&self) -> Result<Rx> {
        let mut first: Vec<u8> = vec![b' ', b'\t', b'\n', b'\r'];
        for s in &self.syntaxes {
            let start = format!("{}{}{{", s.before_all, s.before_each);
            first.extend(start.trim_start().bytes().next());
        }
        first.sort_unstable();
        first.dedup();
        let class: String = first.iter().map(|&b| format!("\\x{b:02X}")).collect();
        let text = crate::grammar::parse(&format!("[^{class}][\\s\\S]*"), "free text")?;
        Ok(Rx::hir(text))
    }
}

/// `s` as a JSON string literal.
fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn syntax(before_each: &str, after_each: &str, between: &str) -> CallSyntax {
        CallSyntax {
            arguments_key: "arguments".into(),
            before_all: String::new(),
            before_each: before_each.into(),
            after_each: after_each.into(),
            between: between.into(),
            after_all: String::new(),
        }
    }

    fn accepts(calls: &ToolCalls, text: &str) -> bool {
        let nfa = calls.to_rx().unwrap().to_hir().unwrap();
        let re = regex_automata::meta::Regex::builder()
            .syntax(regex_automata::util::syntax::Config::new().utf8(false))
            .build_from_hir(&nfa)
            .unwrap();
        let input = regex_automata::Input::new(text.as_bytes()).anchored(regex_automata::Anchored::Yes);
        re.search(&input).is_some_and(|m| m.end() == text.len())
    }

    /// Two functions whose parameters each define `#/$defs/Item` differently: each `$ref` resolves inside its own
    /// document (pasted into one wrapper schema, the pointers would resolve against the wrapper and fail).
    #[test]
    fn each_function_is_its_own_schema_document() {
        let a = r##"{"$defs": {"Item": {"type": "integer"}}, "type": "object",
                    "properties": {"x": {"$ref": "#/$defs/Item"}}, "required": ["x"], "additionalProperties": false}"##;
        let b = r##"{"$defs": {"Item": {"enum": ["red", "blue"]}}, "type": "object",
                    "properties": {"c": {"type": "array", "items": {"$ref": "#/$defs/Item"}}}, "required": ["c"]}"##;
        let calls = ToolCalls {
            functions: vec![
                ToolFunction { name: "a".into(), parameters: a.into() },
                ToolFunction { name: "b".into(), parameters: b.into() },
            ],
            syntaxes: vec![syntax("", "", "\n")],
            max_calls: 2,
            allow_text: false,
        };
        assert!(accepts(&calls, r#"{"name": "a", "arguments": {"x": 3}}"#));
        assert!(accepts(
            &calls,
            "{\"name\":\"b\",\"arguments\":{\"c\":[\"red\"]}}\n{\"name\":\"a\",\"arguments\":{\"x\":1}}"
        ));
        assert!(!accepts(&calls, r#"{"name": "a", "arguments": {"x": "red"}}"#), "a's Item is an integer");
        assert!(!accepts(&calls, r#"{"name": "b", "arguments": {"c": [3]}}"#), "b's Item is a colour");
        assert!(!accepts(&calls, r#"{"name": "c", "arguments": {}}"#), "only the given functions");
        let three = format!("{0}\n{0}\n{0}", r#"{"name": "a", "arguments": {"x": 1}}"#);
        assert!(!accepts(&calls, &three), "at most max_calls");
        assert!(!accepts(&calls, "Sure."), "no text without allow_text");
    }

    #[test]
    fn several_syntaxes_and_free_text() {
        let p = r#"{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}"#;
        let calls = ToolCalls {
            functions: vec![ToolFunction { name: "get_weather".into(), parameters: p.into() }],
            syntaxes: vec![syntax("<tool_call>\n", "\n</tool_call>", "\n"), syntax("", "", "\n")],
            max_calls: 4,
            allow_text: true,
        };
        let call = r#"{"name": "get_weather", "arguments": {"city": "Paris"}}"#;
        assert!(accepts(&calls, &format!("<tool_call>\n{call}\n</tool_call>")), "the template's form");
        assert!(accepts(&calls, call), "the generic JSON form");
        assert!(accepts(&calls, &format!("\n{call}")), "after a leading newline");
        assert!(accepts(&calls, "It is sunny in Paris."), "text");
        assert!(!accepts(&calls, r#"{"name": "get_weather", "arguments": {}}"#), "a call, once started, validates");
        assert!(!accepts(&calls, "<tool_call>\nhello"), "text cannot start like a call");
        assert!(!accepts(&calls, " leading space"), "nor with whitespace");
        let e = ToolCalls {
            functions: vec![ToolFunction { name: "f".into(), parameters: r##"{"$ref": "#/$defs/Missing"}"##.into() }],
            ..calls
        }
        .to_rx()
        .unwrap_err();
        assert!(e.to_string().starts_with("function \"f\"'s parameters: "), "{e}");
    }
}
