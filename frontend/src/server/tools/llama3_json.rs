//! Llama 3.1+ JSON tool calls: `{"name": ..., "parameters": {...}}`, one per line.

use super::Format;

pub const LLAMA3_JSON: Format = Format {
    name: "llama3_json",
    aliases: &["llama3"],
    template_marks: &["<|python_tag|>", "ipython"],
    tag: "",
    arguments_key: "parameters",
    before_all: "",
    before_each: "",
    after_each: "",
    between: "\n",
    after_all: "",
};
