//! Hermes / Qwen 2.5: each call in `<tool_call>` tags, `<tool_call>\n{"name": ..., "arguments": {...}}\n</tool_call>`.

use super::Format;

pub const HERMES: Format = Format {
    name: "hermes",
    aliases: &["qwen", "qwen25"],
    template_marks: &["<tool_call>"],
    tag: "",
    arguments_key: "arguments",
    before_all: "",
    before_each: "<tool_call>\n",
    after_each: "\n</tool_call>",
    between: "\n",
    after_all: "",
};
