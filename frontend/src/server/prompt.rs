//! A chat request's conversation rendered with the model's chat template: roles checked, content parts joined,
//! earlier tool calls and results placed as the template (or, for templates that know nothing of tools, the
//! tool-call format) writes them, and the tool list in the template or in a system block.

use serde::Serialize;
use serde_json::{json, Value};

use super::api::chat::{ChatRequest, Content, Message};
use super::error::ApiError;
use super::tools::ToolMode;
use super::Ready;

/// One message as the chat template reads it.
#[derive(Debug, Serialize)]
struct TemplateMessage {
    role: &'static str,
    content: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_calls: Option<Vec<TemplateCall>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tool_call_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
}

/// An earlier call, for templates that render `tool_calls` themselves (arguments as an object, as they expect).
#[derive(Debug, Serialize)]
struct TemplateCall {
    id: Option<String>,
    #[serde(rename = "type")]
    kind: &'static str,
    function: TemplateFunctionCall,
}

#[derive(Debug, Serialize)]
struct TemplateFunctionCall {
    name: String,
    arguments: Value,
}

/// A tool as the chat template reads it.
#[derive(Debug, Serialize)]
struct TemplateTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: TemplateFunction<'a>,
}

#[derive(Debug, Serialize)]
struct TemplateFunction<'a> {
    name: &'a str,
    description: Option<&'a str>,
    parameters: Value,
}

/// The prompt text for the conversation in `req`.
pub(crate) fn render_chat(ready: &Ready, req: &ChatRequest, mode: &ToolMode) -> Result<String, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must not be empty"));
    }
    let tools_on = *mode != ToolMode::Off;
    let in_template = tools_on && ready.template_has_tools;
    let mut msgs = Vec::with_capacity(req.messages.len() + 1);
    for (i, m) in req.messages.iter().enumerate() {
        msgs.push(template_message(ready, m, i, in_template)?);
    }
    if tools_on && !in_template {
        let block = ready.tool_format.system_block(req.tools.as_deref().unwrap_or_default());
        match msgs.first_mut() {
            Some(first) if first.role == "system" => first.content = format!("{}\n\n{block}", first.content),
            _ => msgs.insert(
                0,
                TemplateMessage { role: "system", content: block, tool_calls: None, tool_call_id: None, name: None },
            ),
        }
    }
    let tools: Option<Vec<TemplateTool>> = in_template.then(|| {
        req.tools
            .iter()
            .flatten()
            .map(|t| TemplateTool {
                kind: "function",
                function: TemplateFunction {
                    name: &t.function.name,
                    description: t.function.description.as_deref(),
                    parameters: t.function.parameters.clone().unwrap_or(json!({"type": "object"})),
                },
            })
            .collect()
    });
    ready
        .template
        .render(&msgs, tools.as_deref(), true)
        .map_err(|e| ApiError::bad_request(format!("{e} (rendering the messages with the model's chat template)")))
}

fn template_message(
    ready: &Ready,
    m: &Message,
    i: usize,
    tools_in_template: bool,
) -> Result<TemplateMessage, ApiError> {
    let role = match m.role.as_str() {
        "system" | "developer" => "system",
        "user" => "user",
        "assistant" => "assistant",
        "tool" => "tool",
        other => {
            return Err(ApiError::invalid(
                format!("messages[{i}].role"),
                format!("unknown role {other:?} (system, developer, user, assistant, tool)"),
            ))
        }
    };
    let mut content = match &m.content {
        None => String::new(),
        Some(Content::Text(s)) => s.clone(),
        Some(Content::Parts(parts)) => {
            let mut s = String::new();
            for (j, p) in parts.iter().enumerate() {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => s.push_str(t),
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            format!("messages[{i}].content[{j}]"),
                            format!("content parts of type {kind:?} are not supported (text only)"),
                        ))
                    }
                }
            }
            s
        }
    };
    if m.content.is_none() && !(role == "assistant" && m.tool_calls.is_some()) {
        return Err(ApiError::invalid(format!("messages[{i}].content"), "content is required"));
    }
    if role == "tool" && m.tool_call_id.is_none() {
        return Err(ApiError::invalid(format!("messages[{i}].tool_call_id"), "tool messages need a tool_call_id"));
    }
    let mut tool_calls = None;
    if let Some(calls) = &m.tool_calls {
        let mut parsed = Vec::new();
        for (j, c) in calls.iter().enumerate() {
            let args = match &c.function.arguments {
                Value::String(s) => serde_json::from_str::<Value>(s).map_err(|e| {
                    ApiError::invalid(
                        format!("messages[{i}].tool_calls[{j}].function.arguments"),
                        format!("arguments must be a JSON object string: {e}"),
                    )
                })?,
                v => v.clone(),
            };
            parsed.push(TemplateCall {
                id: c.id.clone(),
                kind: "function",
                function: TemplateFunctionCall { name: c.function.name.clone(), arguments: args },
            });
        }
        if tools_in_template {
            tool_calls = Some(parsed);
        } else {
            let calls: Vec<(&str, &Value)> =
                parsed.iter().map(|c| (c.function.name.as_str(), &c.function.arguments)).collect();
            if !content.is_empty() {
                content.push('\n');
            }
            content.push_str(&ready.tool_format.render_calls(&calls));
        }
    }
    Ok(TemplateMessage { role, content, tool_calls, tool_call_id: m.tool_call_id.clone(), name: m.name.clone() })
}
