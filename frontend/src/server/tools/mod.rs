//! Tool calling: how tools reach the model, how its calls are constrained, and how they are read back.
//!
//! A tool-call [`Format`] is data: how one call object is wrapped (one file per format, chosen by name from
//! [`REGISTRY`] with `--tool-call-parser`, or from the chat template). Rendering, parsing and the grammar all
//! follow from that data. Models whose template knows nothing of tools (SmolLM2) get the tool list in a
//! system-prompt block. An answer may be written in the template's form or in the generic JSON form
//! (`{"name": ..., "arguments": {...}}`), which small models write even when their template uses tags.
//!
//! With `tool_choice` `required` or a named function the whole output is grammar-constrained to calls whose
//! arguments validate against the function's `parameters` ([`grammar::ToolCalls`], each function's schema its
//! own document, so `$defs`/`$ref` resolve); with `auto` the output is free text (not starting like a call) or
//! constrained calls, so a call, once started, always parses.

mod hermes;
mod json;
mod llama3_json;
mod mistral;
mod stream;

use grammar::{CallSyntax, Constraint, ToolCalls, ToolFunction};
use serde_json::{json, Value};

use super::api::chat::{Tool, ToolChoice};
use super::error::ApiError;
pub use stream::CallScan;

/// How a model writes tool calls: each call is `{"name": <name>, "<arguments_key>": {...}}`, wrapped in the
/// literal strings below (see [`grammar::CallSyntax`]).
#[derive(Debug, PartialEq, Eq)]
pub struct Format {
    /// The `--tool-call-parser` name.
    pub name: &'static str,
    pub aliases: &'static [&'static str],
    /// A chat template containing one of these writes calls in this format.
    pub template_marks: &'static [&'static str],
    /// A control token before the calls: shown in history, skipped when parsing, not constrained.
    pub tag: &'static str,
    pub arguments_key: &'static str,
    pub before_all: &'static str,
    pub before_each: &'static str,
    pub after_each: &'static str,
    pub between: &'static str,
    pub after_all: &'static str,
}

/// Every format, by name. The generic JSON form is the fallback of [`ToolFormat::detect`].
pub const REGISTRY: &[&Format] = &[&json::JSON, &hermes::HERMES, &llama3_json::LLAMA3_JSON, &mistral::MISTRAL];

/// Most calls in one answer when parallel calls are allowed (small models otherwise repeat a call until
/// `max_tokens`). Repeated calls are returned as written: a streamed call cannot be taken back.
pub const MAX_PARALLEL_CALLS: u32 = 4;

/// A format from the [`REGISTRY`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToolFormat(&'static Format);

impl std::str::FromStr for ToolFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        REGISTRY.iter().find(|f| f.name == s || f.aliases.contains(&s)).map(|f| ToolFormat(f)).ok_or_else(|| {
            let names: Vec<&str> = REGISTRY.iter().map(|f| f.name).collect();
            format!("unknown tool-call format {s:?} (one of {})", names.join(", "))
        })
    }
}

impl ToolFormat {
    pub const JSON: ToolFormat = ToolFormat(&json::JSON);
    pub const HERMES: ToolFormat = ToolFormat(&hermes::HERMES);
    pub const LLAMA3_JSON: ToolFormat = ToolFormat(&llama3_json::LLAMA3_JSON);
    pub const MISTRAL: ToolFormat = ToolFormat(&mistral::MISTRAL);

    /// The format a chat template implies (the generic JSON form when it names none).
    pub fn detect(template: &str) -> Self {
        REGISTRY
            .iter()
            .find(|f| f.template_marks.iter().any(|m| template.contains(m)))
            .map_or(Self::JSON, |f| ToolFormat(f))
    }

    pub fn name(self) -> &'static str {
        self.0.name
    }

    /// The forms an answer may take: this format, and the generic JSON form beside it.
    pub fn answer_forms(self) -> Vec<ToolFormat> {
        if self == Self::JSON {
            vec![self]
        } else {
            vec![self, Self::JSON]
        }
    }

    /// The grammar's description of this format.
    pub fn syntax(self) -> CallSyntax {
        let f = self.0;
        CallSyntax {
            arguments_key: f.arguments_key.into(),
            before_all: f.before_all.into(),
            before_each: f.before_each.into(),
            after_each: f.after_each.into(),
            between: f.between.into(),
            after_all: f.after_all.into(),
        }
    }

    /// A system-prompt block describing the tools and the call format, for templates without tool support.
    pub fn system_block(self, tools: &[Tool]) -> String {
        let mut s = String::from(
            "You can call functions (tools). To call one, answer with nothing but the call, in this exact form:\n",
        );
        s.push_str(&self.render_calls(&[("function_name", &json!({"argument_name": "value"}))]));
        s.push_str("\nAvailable functions (JSON Schema of their arguments):\n");
        for t in tools {
            let f = &t.function;
            let spec = json!({
                "name": f.name,
                "description": f.description.clone().unwrap_or_default(),
                "parameters": f.parameters.clone().unwrap_or(json!({"type": "object"})),
            });
            s.push_str(&spec.to_string());
            s.push('\n');
        }
        s.push_str("If no function fits, answer normally in text.");
        s
    }

    /// Calls as this format writes them (also how earlier assistant calls are shown to the model).
    pub fn render_calls(self, calls: &[(&str, &Value)]) -> String {
        let f = self.0;
        let mut out = String::new();
        if !f.tag.is_empty() {
            out.push_str(f.tag);
            out.push(' ');
        }
        out.push_str(f.before_all);
        for (i, (name, args)) in calls.iter().enumerate() {
            if i > 0 {
                out.push_str(f.between);
            }
            out.push_str(f.before_each);
            out.push_str(&json!({"name": name, f.arguments_key: args}).to_string());
            out.push_str(f.after_each);
        }
        out.push_str(f.after_all);
        out
    }

    /// What an answer in this format starts with (after leading whitespace).
    fn start(self) -> String {
        let s = format!("{}{}", self.0.before_all, self.0.before_each);
        let s = s.trim();
        if s.is_empty() {
            "{".into()
        } else {
            s.into()
        }
    }

    /// Whether output starting with `text` (leading whitespace skipped) is, or may become, a call in one of
    /// `forms`; `None` while too little is known.
    pub fn starts_call(forms: &[ToolFormat], text: &str) -> Option<bool> {
        let t = text.trim_start();
        let mut undecided = false;
        for f in forms {
            for start in [f.start(), f.0.tag.to_string()] {
                if start.is_empty() {
                    continue;
                }
                if t.starts_with(&start) && !t.is_empty() {
                    return Some(true);
                }
                undecided |= start.starts_with(t);
            }
        }
        if undecided {
            None
        } else {
            Some(false)
        }
    }

    /// The calls in `text` as (name, arguments exactly as the model wrote them), in the first of `forms` that
    /// reads all of it; `None` if it is not (entirely) calls. The arguments text is kept verbatim so that a
    /// streamed answer, which sends it as it is generated, concatenates to the same string.
    pub fn parse_any(forms: &[ToolFormat], text: &str) -> Option<Vec<(String, String)>> {
        forms.iter().find_map(|f| f.parse(text))
    }

    /// [`ToolFormat::parse_any`] for this format alone. Whitespace around the wrapping strings is not counted.
    pub fn parse(self, text: &str) -> Option<Vec<(String, String)>> {
        let f = self.0;
        let lit = |t: &'static str| t.trim();
        let mut t = text.trim();
        if !f.tag.is_empty() {
            t = t.strip_prefix(f.tag).unwrap_or(t).trim_start();
        }
        t = t.strip_prefix(lit(f.before_all))?.strip_suffix(lit(f.after_all))?.trim();
        let mut calls = Vec::new();
        loop {
            t = t.strip_prefix(lit(f.before_each))?.trim_start();
            let mut values = serde_json::Deserializer::from_str(t).into_iter::<RawCall>();
            let call = values.next()?.ok()?;
            if !call.arguments.get().trim_start().starts_with('{') {
                return None;
            }
            t = t[values.byte_offset()..].trim_start().strip_prefix(lit(f.after_each))?.trim_start();
            calls.push((call.name, call.arguments.get().to_string()));
            if t.is_empty() {
                return Some(calls);
            }
            t = t.strip_prefix(lit(f.between))?.trim_start();
        }
    }
}

/// One call object as written: the name, and the arguments' raw JSON text.
#[derive(serde::Deserialize)]
struct RawCall {
    name: String,
    #[serde(alias = "parameters")]
    arguments: Box<serde_json::value::RawValue>,
}

/// What the request's tools ask of this generation.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolMode {
    /// No tools (or `tool_choice: "none"`).
    Off,
    /// The model may answer or call.
    Auto,
    /// The model must call one or more of the functions (`"required"`).
    Required,
    /// The model must call this function, once (a named `tool_choice`, as vLLM and SGLang read it: structured
    /// output through a function call wants one answer, and a small model otherwise repeats the call).
    Named(String),
}

/// Checks `tools` and `tool_choice` and decides the mode.
pub fn tool_mode(tools: Option<&[Tool]>, choice: Option<&ToolChoice>) -> Result<ToolMode, ApiError> {
    let tools = tools.unwrap_or_default();
    for (i, t) in tools.iter().enumerate() {
        if t.kind != "function" {
            return Err(ApiError::invalid(format!("tools[{i}].type"), "only tools of type \"function\" are supported"));
        }
        let name = &t.function.name;
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.') {
            return Err(ApiError::invalid(
                format!("tools[{i}].function.name"),
                format!("function names use letters, digits, '_', '-' and '.': {name:?}"),
            ));
        }
        if tools[..i].iter().any(|o| &o.function.name == name) {
            return Err(ApiError::invalid(format!("tools[{i}].function.name"), format!("duplicate function {name:?}")));
        }
        if let Some(p) = &t.function.parameters {
            if !p.is_object() {
                return Err(ApiError::invalid(
                    format!("tools[{i}].function.parameters"),
                    "parameters must be an object",
                ));
            }
        }
    }
    match choice {
        None if tools.is_empty() => Ok(ToolMode::Off),
        None => Ok(ToolMode::Auto),
        Some(ToolChoice::Mode(m)) => match m.as_str() {
            "none" => Ok(ToolMode::Off),
            "auto" | "required" if tools.is_empty() => {
                Err(ApiError::invalid("tool_choice", format!("tool_choice \"{m}\" needs a non-empty `tools` list")))
            }
            "auto" => Ok(ToolMode::Auto),
            "required" => Ok(ToolMode::Required),
            _ => Err(ApiError::invalid("tool_choice", format!("unknown tool_choice {m:?} (none, auto, required)"))),
        },
        Some(ToolChoice::Named { kind, function }) => {
            if kind != "function" {
                return Err(ApiError::invalid("tool_choice.type", "tool_choice.type must be \"function\""));
            }
            if !tools.iter().any(|t| t.function.name == function.name) {
                return Err(ApiError::invalid(
                    "tool_choice.function.name",
                    format!("tool_choice names {:?}, which is not in `tools`", function.name),
                ));
            }
            Ok(ToolMode::Named(function.name.clone()))
        }
    }
}

/// The grammar constraint of `mode` (none when tools are off): calls to the allowed functions in any of
/// `format`'s answer forms (one call for a named function, up to [`MAX_PARALLEL_CALLS`] with `parallel`), and free
/// text beside them with `auto`.
pub fn constraint(format: ToolFormat, tools: &[Tool], mode: &ToolMode, parallel: bool) -> Option<Constraint> {
    let functions = tools
        .iter()
        .filter(|t| match mode {
            ToolMode::Off => false,
            ToolMode::Auto | ToolMode::Required => true,
            ToolMode::Named(name) => &t.function.name == name,
        })
        .map(|t| ToolFunction {
            name: t.function.name.clone(),
            parameters: t.function.parameters.clone().unwrap_or(json!({"type": "object"})).to_string(),
        })
        .collect::<Vec<_>>();
    if functions.is_empty() {
        return None;
    }
    Some(Constraint::ToolCalls(ToolCalls {
        functions,
        syntaxes: format.answer_forms().into_iter().map(ToolFormat::syntax).collect(),
        max_calls: if parallel && !matches!(mode, ToolMode::Named(_)) { MAX_PARALLEL_CALLS } else { 1 },
        allow_text: *mode == ToolMode::Auto,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_what_they_render() {
        let args = json!({"city": "Paris", "days": 3});
        for f in REGISTRY.iter().map(|f| ToolFormat(f)) {
            let one = f.render_calls(&[("get_weather", &args)]);
            assert_eq!(f.parse(&one), Some(vec![("get_weather".into(), args.to_string())]), "{f:?}");
            let spaced = one.replace(r#""days":3"#, r#""days": 3"#);
            assert_eq!(f.parse(&spaced).unwrap()[0].1, r#"{"city":"Paris","days": 3}"#, "arguments kept verbatim");
            assert_eq!(ToolFormat::starts_call(&[f], &one), Some(true));
            assert_eq!(f.parse("The weather is nice."), None);
            assert_eq!(ToolFormat::starts_call(&[f], "The weather"), Some(false));
            let two = f.render_calls(&[("a", &json!({})), ("b", &json!({"x": 1}))]);
            assert_eq!(f.parse(&two).unwrap().len(), 2, "{f:?}: {two}");
            assert_eq!(f.name().parse::<ToolFormat>(), Ok(f));
        }
        assert_eq!(ToolFormat::JSON.parse("{\"name\": \"a\", \"arguments\": {}} trailing"), None);
        assert_eq!(ToolFormat::starts_call(&[ToolFormat::HERMES], "<tool"), None);
        assert_eq!(ToolFormat::MISTRAL.parse(r#"[{"name": "a", "arguments": {}}]"#).unwrap().len(), 1, "no tag");
    }

    /// A Hermes-template model writing the generic JSON form (Qwen2.5-Coder-0.5B does, for the OpenAI Agents SDK's
    /// weather agent) makes a call, not content.
    #[test]
    fn the_generic_json_form_is_read_beside_the_template_form() {
        let forms = ToolFormat::HERMES.answer_forms();
        let text = r#"{"name": "get_weather", "arguments": {"city": "Paris"}}"#;
        assert_eq!(ToolFormat::starts_call(&forms, text), Some(true));
        assert_eq!(ToolFormat::starts_call(&forms, "<tool_"), None);
        assert_eq!(
            ToolFormat::parse_any(&forms, text),
            Some(vec![("get_weather".into(), r#"{"city": "Paris"}"#.into())])
        );
        let llama = ToolFormat::LLAMA3_JSON.answer_forms();
        assert!(ToolFormat::parse_any(&llama, text).is_some(), "`arguments` beside llama's `parameters`");
        assert_eq!(ToolFormat::detect("{% if tools %}<tool_call>{% endif %}"), ToolFormat::HERMES);
        assert_eq!(ToolFormat::detect("plain"), ToolFormat::JSON);
    }

    #[test]
    fn tool_choice_is_checked() {
        let tools: Vec<Tool> = serde_json::from_value(json!([
            {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
        ]))
        .unwrap();
        let choice = |v: Value| serde_json::from_value::<ToolChoice>(v).unwrap();
        assert_eq!(tool_mode(Some(&tools), None).unwrap(), ToolMode::Auto);
        assert_eq!(tool_mode(None, None).unwrap(), ToolMode::Off);
        assert!(tool_mode(None, Some(&choice(json!("required")))).is_err());
        assert!(tool_mode(Some(&tools), Some(&choice(json!({"type": "function", "function": {"name": "g"}})))).is_err());
        assert_eq!(
            tool_mode(Some(&tools), Some(&choice(json!({"type": "function", "function": {"name": "f"}})))).unwrap(),
            ToolMode::Named("f".into())
        );
    }
}
