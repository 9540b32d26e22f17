//! Mistral: `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`. `[TOOL_CALLS]` is a control token, so the
//! grammar constrains the list after it and the parser skips it when it shows.

use super::Format;

pub const MISTRAL: Format = Format {
    name: "mistral",
    aliases: &[],
    template_marks: &["[TOOL_CALLS]"],
    tag: "[TOOL_CALLS]",
    arguments_key: "arguments",
    before_all: "[",
    before_each: "",
    after_each: "",
    between: ", ",
    after_all: "]",
};
