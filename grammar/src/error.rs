//! The crate's opaque error type.

use std::fmt;

/// Why a constraint could not be compiled or a vocabulary built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    kind: Kind,
    msg: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Vocab,
    Syntax,
    TooLarge,
    Unsupported,
}

impl Error {
    pub(crate) fn vocab(msg: impl Into<String>) -> Self {
        Self { kind: Kind::Vocab, msg: msg.into() }
    }
    pub(crate) fn syntax(msg: impl Into<String>) -> Self {
        Self { kind: Kind::Syntax, msg: msg.into() }
    }
    pub(crate) fn too_large(msg: impl Into<String>) -> Self {
        Self { kind: Kind::TooLarge, msg: msg.into() }
    }
    pub(crate) fn unsupported(msg: impl Into<String>) -> Self {
        Self { kind: Kind::Unsupported, msg: msg.into() }
    }
    /// The same error with `prefix` before its message (saying which part of a larger constraint failed).
    pub(crate) fn context(self, prefix: &str) -> Self {
        Self { kind: self.kind, msg: format!("{prefix}{}", self.msg) }
    }
    /// The constraint is malformed (bad regex, bad schema).
    pub fn is_syntax(&self) -> bool {
        self.kind == Kind::Syntax
    }
    /// The constraint compiles past the configured size or time limits.
    pub fn is_too_large(&self) -> bool {
        self.kind == Kind::TooLarge
    }
    /// The constraint uses a feature we cannot enforce (the message names it).
    pub fn is_unsupported(&self) -> bool {
        self.kind == Kind::Unsupported
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

pub type Result<T, E = Error> = std::result::Result<T, E>;
