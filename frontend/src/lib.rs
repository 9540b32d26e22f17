//! The `radixserve` front end: the command line, chat templates, and the OpenAI-compatible `/v1` server.

pub mod chat_template;
pub mod generate;
pub mod load;
pub mod server;
