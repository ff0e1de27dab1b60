use serde::Serialize;
use sqlparser::tokenizer::{Location, Span};

/// One problem found in a submitted job, located in the submitted text.
///
/// `line` and `column` are 1-based positions into the text given to
/// [`crate::check`]; `code` is a stable machine-readable category the control
/// plane maps into its problem+json `errors[]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SqlError {
    pub line: u64,
    pub column: u64,
    pub message: String,
    pub code: ErrorCode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    SyntaxError,
    UnknownTable,
    UnknownColumn,
    TypeMismatch,
    Unsupported,
    BadOption,
    Duplicate,
    EmptyJob,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::SyntaxError => "syntax_error",
            ErrorCode::UnknownTable => "unknown_table",
            ErrorCode::UnknownColumn => "unknown_column",
            ErrorCode::TypeMismatch => "type_mismatch",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::BadOption => "bad_option",
            ErrorCode::Duplicate => "duplicate",
            ErrorCode::EmptyJob => "empty_job",
        }
    }
}

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "line {}, column {}: {} [{}]",
            self.line,
            self.column,
            self.message,
            self.code.as_str()
        )
    }
}

impl std::error::Error for SqlError {}

impl SqlError {
    pub fn at(loc: Location, code: ErrorCode, message: impl Into<String>) -> Self {
        SqlError {
            line: loc.line.max(1),
            column: loc.column.max(1),
            message: message.into(),
            code,
        }
    }

    pub fn span(span: Span, code: ErrorCode, message: impl Into<String>) -> Self {
        Self::at(span.start, code, message)
    }
}

pub type SqlResult<T> = Result<T, SqlError>;

/// sqlparser reports positions inside its message text ("... at Line: 3, Column: 7");
/// this recovers them so that a syntax error points where the parser stopped.
pub(crate) fn from_parser_error(
    err: sqlparser::parser::ParserError,
    fallback: Location,
) -> SqlError {
    let msg = match err {
        sqlparser::parser::ParserError::TokenizerError(m)
        | sqlparser::parser::ParserError::ParserError(m) => m,
        sqlparser::parser::ParserError::RecursionLimitExceeded => {
            "expression nests too deeply".to_string()
        }
    };
    let (clean, loc) = split_location(&msg).unwrap_or((msg.clone(), fallback));
    SqlError::at(loc, ErrorCode::SyntaxError, clean)
}

fn split_location(msg: &str) -> Option<(String, Location)> {
    let idx = msg.rfind(" at Line: ")?;
    let rest = &msg[idx + " at Line: ".len()..];
    let (line, rest) = rest.split_once(", Column: ")?;
    let column: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    Some((
        msg[..idx].to_string(),
        Location {
            line: line.trim().parse().ok()?,
            column: column.parse().ok()?,
        },
    ))
}
