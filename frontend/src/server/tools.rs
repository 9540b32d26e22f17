//! Tool calling: how tools reach the model, how its calls are constrained, and how they are read back.
//!
//! A [`ToolFormat`] is chosen by name (`--tool-call-parser`) or from the chat template: Hermes/Qwen `<tool_call>`
//! tags, Llama 3 JSON (`parameters`), Mistral `[TOOL_CALLS]`, and a generic JSON form (one object per call) for
//! models like SmolLM2 whose template knows nothing of tools; for those the tool list goes into a system-prompt
//! block. With `tool_choice` `required` or a named function the whole output is grammar-constrained to calls
//! whose `arguments` validate against the function's `parameters`; with `auto` the output is either free text
//! (not starting like a call) or constrained calls, so a call, once started, always parses.

use serde_json::{json, Value};

use super::error::ApiError;
use super::openai::{Tool, ToolChoice};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// `{"name": ..., "arguments": {...}}`, one per line.
    Json,
    /// `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`, one block per call.
    Hermes,
    /// `{"name": ..., "parameters": {...}}`, one per line (Llama 3.1+).
    Llama3Json,
    /// `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]` (the tag is a control token: not constrained).
    Mistral,
}

pub const FORMATS: &[&str] = &["json", "hermes", "llama3_json", "mistral"];

/// Most calls in one answer when parallel calls are allowed (small models otherwise repeat a call until
/// `max_tokens`). Repeated calls are returned as written: a streamed call cannot be taken back.
pub const MAX_PARALLEL_CALLS: usize = 4;

impl std::str::FromStr for ToolFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "json" => Ok(ToolFormat::Json),
            "hermes" | "qwen" | "qwen25" => Ok(ToolFormat::Hermes),
            "llama3_json" | "llama3" => Ok(ToolFormat::Llama3Json),
            "mistral" => Ok(ToolFormat::Mistral),
            _ => Err(format!("unknown tool-call format {s:?} (one of {})", FORMATS.join(", "))),
        }
    }
}

impl ToolFormat {
    /// The format a chat template implies.
    pub fn detect(template: &str) -> Self {
        if template.contains("<tool_call>") {
            ToolFormat::Hermes
        } else if template.contains("[TOOL_CALLS]") {
            ToolFormat::Mistral
        } else if template.contains("<|python_tag|>") || template.contains("ipython") {
            ToolFormat::Llama3Json
        } else {
            ToolFormat::Json
        }
    }

    fn args_key(self) -> &'static str {
        if self == ToolFormat::Llama3Json {
            "parameters"
        } else {
            "arguments"
        }
    }

    /// A system-prompt block describing the tools and the call format, for templates without tool support.
    pub fn system_block(self, tools: &[Tool]) -> String {
        let mut s = String::from(
            "You can call functions (tools). To call one, answer with nothing but the call, in this exact form:\n",
        );
        s.push_str(&self.render_call("function_name", &json!({"argument_name": "value"})));
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

    /// One call as this format writes it (also how earlier assistant calls are shown to the model).
    pub fn render_call(self, name: &str, args: &Value) -> String {
        let call = json!({"name": name, self.args_key(): args}).to_string();
        match self {
            ToolFormat::Json | ToolFormat::Llama3Json => call,
            ToolFormat::Hermes => format!("<tool_call>\n{call}\n</tool_call>"),
            ToolFormat::Mistral => format!("[TOOL_CALLS] [{call}]"),
        }
    }

    /// A regex for one or more calls (`parallel`) among `calls` (each the regex of one call object).
    pub fn calls_regex(self, call: &str, parallel: bool) -> String {
        let ws = "[ \\n]{0,2}";
        let (one, sep) = match self {
            ToolFormat::Json | ToolFormat::Llama3Json => (format!("({call})"), "\\n"),
            ToolFormat::Hermes => (format!("<tool_call>\\n({call})\\n</tool_call>"), "\\n"),
            ToolFormat::Mistral => {
                let more = MAX_PARALLEL_CALLS - 1;
                let list = if parallel {
                    format!("\\[({call})(, ({call})){{0,{more}}}\\]")
                } else {
                    format!("\\[({call})\\]")
                };
                return format!("{ws}{list}");
            }
        };
        if parallel {
            format!("{ws}{one}({sep}{one}){{0,{}}}", MAX_PARALLEL_CALLS - 1)
        } else {
            format!("{ws}{one}")
        }
    }

    /// A regex for `auto`: free text that does not start like a call, or calls.
    pub fn auto_regex(self, calls: &str) -> String {
        let first = match self {
            ToolFormat::Json | ToolFormat::Llama3Json => r"[^{\[ \n\t\r]",
            ToolFormat::Hermes => r"[^< \n\t\r]",
            ToolFormat::Mistral => r"[^\[ \n\t\r]",
        };
        format!(r"({first}[\s\S]*)|({calls})")
    }

    /// Whether output starting with `text` (leading whitespace skipped) is, or may become, a call; `None` while
    /// too little is known.
    pub fn starts_call(self, text: &str) -> Option<bool> {
        let t = text.trim_start();
        let prefix = match self {
            ToolFormat::Json | ToolFormat::Llama3Json => "{",
            ToolFormat::Hermes => "<tool_call>",
            ToolFormat::Mistral => "[",
        };
        if t.is_empty() || (t.len() < prefix.len() && prefix.starts_with(t)) {
            None
        } else {
            Some(t.starts_with(prefix) || (self == ToolFormat::Mistral && t.starts_with("[TOOL_CALLS]")))
        }
    }

    /// The calls in `text` as (name, arguments exactly as the model wrote them), or `None` if it is not
    /// (entirely) calls in this format. The arguments text is kept verbatim so that a streamed answer, which sends
    /// it as it is generated, concatenates to the same string.
    pub fn parse(self, text: &str) -> Option<Vec<(String, String)>> {
        let t = text.trim();
        let calls: Vec<RawCall> = match self {
            ToolFormat::Json | ToolFormat::Llama3Json => json_values(t)?,
            ToolFormat::Hermes => {
                let mut out = Vec::new();
                let mut rest = t;
                while !rest.is_empty() {
                    let body = rest.strip_prefix("<tool_call>")?;
                    let end = body.find("</tool_call>")?;
                    out.push(serde_json::from_str(body[..end].trim()).ok()?);
                    rest = body[end + "</tool_call>".len()..].trim_start();
                }
                out
            }
            ToolFormat::Mistral => {
                let t = t.strip_prefix("[TOOL_CALLS]").unwrap_or(t).trim_start();
                if t.starts_with('[') {
                    serde_json::from_str(t).ok()?
                } else {
                    vec![serde_json::from_str(t).ok()?]
                }
            }
        };
        if calls.is_empty() || calls.iter().any(|c| !c.arguments.get().trim_start().starts_with('{')) {
            return None;
        }
        Some(calls.into_iter().map(|c| (c.name, c.arguments.get().to_string())).collect())
    }
}

/// One call object as written: the name, and the arguments' raw JSON text.
#[derive(serde::Deserialize)]
struct RawCall {
    name: String,
    #[serde(alias = "parameters")]
    arguments: Box<serde_json::value::RawValue>,
}

/// Whitespace-separated JSON values making up all of `text`.
fn json_values<T: serde::de::DeserializeOwned>(text: &str) -> Option<Vec<T>> {
    let mut out = Vec::new();
    let mut stream = serde_json::Deserializer::from_str(text).into_iter::<T>();
    for v in stream.by_ref() {
        out.push(v.ok()?);
    }
    (stream.byte_offset() == text.len()).then_some(out)
}

/// What the request's tools ask of this generation.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolMode {
    /// No tools (or `tool_choice: "none"`).
    Off,
    /// The model may answer or call.
    Auto,
    /// The model must call one of these functions.
    Required(Vec<String>),
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
    let names: Vec<String> = tools.iter().map(|t| t.function.name.clone()).collect();
    match choice {
        None if tools.is_empty() => Ok(ToolMode::Off),
        None => Ok(ToolMode::Auto),
        Some(ToolChoice::Mode(m)) => match m.as_str() {
            "none" => Ok(ToolMode::Off),
            "auto" | "required" if tools.is_empty() => {
                Err(ApiError::invalid("tool_choice", format!("tool_choice \"{m}\" needs a non-empty `tools` list")))
            }
            "auto" => Ok(ToolMode::Auto),
            "required" => Ok(ToolMode::Required(names)),
            _ => Err(ApiError::invalid("tool_choice", format!("unknown tool_choice {m:?} (none, auto, required)"))),
        },
        Some(ToolChoice::Named { kind, function }) => {
            if kind != "function" {
                return Err(ApiError::invalid("tool_choice.type", "tool_choice.type must be \"function\""));
            }
            if !names.contains(&function.name) {
                return Err(ApiError::invalid(
                    "tool_choice.function.name",
                    format!("tool_choice names {:?}, which is not in `tools`", function.name),
                ));
            }
            Ok(ToolMode::Required(vec![function.name.clone()]))
        }
    }
}

/// The JSON Schema of one call object of `format` for each function in `names`.
pub fn call_schema(format: ToolFormat, tools: &[Tool], names: &[String]) -> Value {
    let alts: Vec<Value> = tools
        .iter()
        .filter(|t| names.contains(&t.function.name))
        .map(|t| {
            let params = t.function.parameters.clone().unwrap_or(json!({"type": "object"}));
            json!({
                "type": "object",
                "properties": {"name": {"const": t.function.name}, format.args_key(): params},
                "required": ["name", format.args_key()],
                "additionalProperties": false
            })
        })
        .collect();
    if alts.len() == 1 {
        alts.into_iter().next().expect("one")
    } else {
        json!({"anyOf": alts})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_what_they_render() {
        let args = json!({"city": "Paris", "days": 3});
        for f in [ToolFormat::Json, ToolFormat::Hermes, ToolFormat::Llama3Json, ToolFormat::Mistral] {
            let one = f.render_call("get_weather", &args);
            assert_eq!(f.parse(&one), Some(vec![("get_weather".into(), args.to_string())]), "{f:?}");
            let spaced = one.replace(r#""days":3"#, r#""days": 3"#);
            assert_eq!(f.parse(&spaced).unwrap()[0].1, r#"{"city":"Paris","days": 3}"#, "arguments kept verbatim");
            assert_eq!(f.starts_call(&one), Some(true));
            assert_eq!(f.parse("The weather is nice."), None);
            assert_eq!(f.starts_call("The weather"), Some(false));
        }
        let two = format!(
            "{}\n{}",
            ToolFormat::Hermes.render_call("a", &json!({})),
            ToolFormat::Hermes.render_call("b", &json!({"x": 1}))
        );
        assert_eq!(ToolFormat::Hermes.parse(&two).unwrap().len(), 2);
        assert_eq!(ToolFormat::Json.parse("{\"name\": \"a\", \"arguments\": {}} trailing"), None);
        assert_eq!(ToolFormat::Hermes.starts_call("<tool"), None);
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
            ToolMode::Required(vec!["f".into()])
        );
    }
}
