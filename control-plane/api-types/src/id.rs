//! Prefixed, opaque, globally unique identifiers (`org_…`, `pool_…`, …).
//!
//! The suffix is a UUIDv7 in lowercase hex, so identifiers of one kind sort by
//! creation time; that order is what cursor pagination relies on.

use std::fmt;
use std::str::FromStr;

/// A string that is not a well-formed identifier of the expected kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdError {
    pub expected_prefix: &'static str,
    pub value: String,
}

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'{}' is not a valid identifier: expected '{}_' followed by 32 hex digits",
            self.value, self.expected_prefix
        )
    }
}

impl std::error::Error for IdError {}

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// A new identifier; time-ordered among identifiers of this kind.
            #[allow(clippy::new_without_default)]
            pub fn new() -> Self {
                Self(format!("{}_{}", $prefix, uuid::Uuid::now_v7().simple()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                let ok = s
                    .strip_prefix($prefix)
                    .and_then(|r| r.strip_prefix('_'))
                    .is_some_and(|hex| {
                        hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
                    });
                if ok {
                    Ok(Self(s.to_owned()))
                } else {
                    Err(IdError { expected_prefix: $prefix, value: s.chars().take(80).collect() })
                }
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .pattern(Some(concat!("^", $prefix, "_[0-9a-f]{32}$")))
                    .examples([concat!($prefix, "_0193a1b2c3d47e8f9a0b1c2d3e4f5a6b")])
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

prefixed_id!(
    /// An organization (tenant).
    OrgId, "org");
prefixed_id!(
    /// A user of an organization (console login).
    UserId, "usr");
prefixed_id!(
    /// A service account: a non-human principal that authenticates with API keys.
    ServiceAccountId, "sa");
prefixed_id!(
    /// An API key; its secret is shown once, at creation.
    ApiKeyId, "key");
prefixed_id!(
    /// A compute pool.
    PoolId, "pool");
prefixed_id!(
    /// An application.
    AppId, "app");
prefixed_id!(
    /// An asynchronous operation.
    OperationId, "op");
prefixed_id!(
    /// A savepoint.
    SavepointId, "sp");
prefixed_id!(
    /// An audit event.
    AuditEventId, "aud");
prefixed_id!(
    /// A run: one provisioned cluster lifetime of an application (metering attaches here).
    RunId, "run");
prefixed_id!(
    /// An application event.
    EventId, "evt");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_ids_round_trip_and_sort_by_creation() {
        let a = PoolId::new();
        let b = PoolId::new();
        assert!(a < b, "{a} then {b}");
        assert_eq!(a.as_str().parse::<PoolId>().unwrap(), a);
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<PoolId>(&json).unwrap(), a);
    }

    #[test]
    fn wrong_prefix_or_shape_is_rejected() {
        let app = AppId::new();
        let e = app.as_str().parse::<PoolId>().unwrap_err();
        assert_eq!(e.expected_prefix, "pool");
        assert!("pool_".parse::<PoolId>().is_err());
        assert!(
            "pool_0193A1B2C3D47E8F9A0B1C2D3E4F5A6B"
                .parse::<PoolId>()
                .is_err()
        );
        assert!(serde_json::from_str::<PoolId>("\"pool_x\"").is_err());
    }
}
