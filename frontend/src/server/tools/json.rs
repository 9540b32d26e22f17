//! The generic JSON form: one `{"name": ..., "arguments": {...}}` object per call, one per line. What models
//! whose template knows nothing of tools (SmolLM2) are told to write, and what small models write anyway.

use super::Format;

pub const JSON: Format = Format {
    name: "json",
    aliases: &[],
    template_marks: &[],
    tag: "",
    arguments_key: "arguments",
    before_all: "",
    before_each: "",
    after_each: "",
    between: "\n",
    after_all: "",
};
