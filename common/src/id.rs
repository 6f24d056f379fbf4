//! Typed identifiers.
//!
//! Every id that crosses a crate edge is a newtype over a UUID, so a `JobId` can never be passed
//! where a `TaskId` is expected. New ids are UUIDv7: time-ordered, which keeps B-tree inserts at
//! the right edge of the index and makes id order a usable pagination order.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(
            Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
        )]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new, time-ordered id.
            #[must_use]
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// Wraps an existing UUID.
            #[must_use]
            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The underlying UUID.
            #[must_use]
            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Uuid {
                id.0
            }
        }
    };
}

uuid_id!(
    /// A tenant. Every row belongs to exactly one domain.
    DomainId
);
uuid_id!(
    /// A project groups service accounts and what they collect.
    ProjectId
);
uuid_id!(
    /// A provider account with (optional) encrypted credentials.
    ServiceAccountId
);
uuid_id!(
    /// An encrypted credential blob.
    SecretId
);
uuid_id!(
    /// A configured use of a plugin.
    CollectorId
);
uuid_id!(
    /// One requested collection (or billing sync), split into tasks.
    JobId
);
uuid_id!(
    /// One unit of a job: one service account (and, for billing, one time window).
    TaskId
);
uuid_id!(
    /// A stored cloud resource.
    ResourceId
);
uuid_id!(
    /// A message on the broker; consumers deduplicate by it.
    MessageId
);
uuid_id!(
    /// A collector's schedule: hours of the day in a timezone.
    ScheduleId
);
uuid_id!(
    /// An API key (its id, never its secret).
    ApiKeyId
);

impl DomainId {
    /// The domain used when no tenant is named: standalone mode and single-tenant deployments.
    /// Fixed so that every process of a deployment agrees on it without coordination.
    pub const DEFAULT: DomainId =
        DomainId(Uuid::from_u128(0x0000_0000_0000_7000_8000_0000_0000_0001));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_display_and_serde() {
        let id = JobId::new();
        let parsed: JobId = id.to_string().parse().expect("display output parses back");
        assert_eq!(parsed, id);
        let json = serde_json::to_string(&id).expect("serializes");
        assert_eq!(json, format!("\"{id}\""));
        let back: JobId = serde_json::from_str(&json).expect("deserializes");
        assert_eq!(back, id);
    }

    #[test]
    fn new_ids_are_time_ordered() {
        let a = TaskId::new();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = TaskId::new();
        assert!(a < b);
    }

    #[test]
    fn malformed_id_is_rejected() {
        assert!("not-a-uuid".parse::<CollectorId>().is_err());
    }
}
