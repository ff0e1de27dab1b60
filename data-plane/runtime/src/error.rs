use arrow_schema::ArrowError;

/// Errors of the runtime; each says which operator, connector or task failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{context}: {source}")]
    Arrow {
        context: String,
        #[source]
        source: ArrowError,
    },
    #[error("{context}: {source}")]
    State {
        context: String,
        #[source]
        source: sluice_state::StateError,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("connector '{connector}' of table '{table}': {message}")]
    Connector {
        connector: String,
        table: String,
        message: String,
    },
    #[error("{0}")]
    Plan(String),
    #[error("{0}")]
    Task(String),
}

pub type Result<T, E = RuntimeError> = std::result::Result<T, E>;

/// Adds what was being done to a lower-level error.
pub trait Context<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for Result<T, ArrowError> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| RuntimeError::Arrow {
            context: context(),
            source,
        })
    }
}

impl<T> Context<T> for Result<T, sluice_state::StateError> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| RuntimeError::State {
            context: context(),
            source,
        })
    }
}

impl<T> Context<T> for Result<T, std::io::Error> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| RuntimeError::Io {
            context: context(),
            source,
        })
    }
}
