//! The crate's one error type: opaque, with a private kind and accessors (regex-automata's habit).

use std::fmt;

/// An error from loading or running a model.
///
/// The kind is private so variants can grow without breaking callers; use the accessors to branch.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
}

#[derive(Debug)]
enum ErrorKind {
    Io { path: String, source: std::io::Error },
    Format(String),
    Unsupported(String),
    Tokenizer(String),
    Torch(tch::TchError),
    Invalid(String),
}

impl Error {
    pub(crate) fn io(path: impl fmt::Display, source: std::io::Error) -> Self {
        Self { kind: ErrorKind::Io { path: path.to_string(), source } }
    }
    /// A malformed or truncated model file.
    pub(crate) fn format(msg: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Format(msg.into()) }
    }
    /// A well-formed model that uses something we do not implement (architecture, quantization type).
    pub(crate) fn unsupported(msg: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Unsupported(msg.into()) }
    }
    pub(crate) fn tokenizer(msg: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Tokenizer(msg.into()) }
    }
    /// A caller passed arguments that break a documented precondition (bad slot, empty batch...).
    pub(crate) fn invalid(msg: impl Into<String>) -> Self {
        Self { kind: ErrorKind::Invalid(msg.into()) }
    }

    /// The same error, its message prefixed with the file it came from (kind unchanged).
    pub(crate) fn in_file(self, path: impl fmt::Display) -> Self {
        let kind = match self.kind {
            ErrorKind::Format(m) => ErrorKind::Format(format!("{path}: {m}")),
            ErrorKind::Unsupported(m) => ErrorKind::Unsupported(format!("{path}: {m}")),
            ErrorKind::Tokenizer(m) => ErrorKind::Tokenizer(format!("{path}: {m}")),
            ErrorKind::Invalid(m) => ErrorKind::Invalid(format!("{path}: {m}")),
            other => other,
        };
        Self { kind }
    }

    /// True when the model file is malformed or truncated.
    pub fn is_format(&self) -> bool {
        matches!(self.kind, ErrorKind::Format(_))
    }
    /// True when the model needs a feature this build does not have.
    pub fn is_unsupported(&self) -> bool {
        matches!(self.kind, ErrorKind::Unsupported(_))
    }
    /// True when the caller's input broke a precondition.
    pub fn is_invalid_input(&self) -> bool {
        matches!(self.kind, ErrorKind::Invalid(_))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            ErrorKind::Io { path, source } => write!(f, "{path}: {source}"),
            ErrorKind::Format(m) => write!(f, "malformed model file: {m}"),
            ErrorKind::Unsupported(m) => write!(f, "unsupported: {m}"),
            ErrorKind::Tokenizer(m) => write!(f, "tokenizer: {m}"),
            ErrorKind::Torch(e) => write!(f, "torch: {e}"),
            ErrorKind::Invalid(m) => write!(f, "invalid input: {m}"),
        }
    }
}

/// The message already includes the inner error's text, so `source()` is left empty: error reporters that walk
/// the chain (anyhow's `{:#}`) would otherwise print it twice.
impl std::error::Error for Error {}

impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        Self { kind: ErrorKind::Torch(e) }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
