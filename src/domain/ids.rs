//! Opaque identifiers. Each is a newtype over a string with a short prefix (`ds_`, `job_`,
//! `mdl_`, `wrk_`) and a time-ordered UUID, so ids sort by creation and never mix up.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// A fresh, time-ordered id.
            pub fn generate() -> Self {
                Self(format!(concat!($prefix, "_{}"), uuid::Uuid::now_v7().simple()))
            }

            /// Wraps an id read from a request or the database; unknown ids are found
            /// missing later, so any string is accepted here.
            pub fn from_string(id: impl Into<String>) -> Self {
                Self(id.into())
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// Identifies an uploaded dataset.
    DatasetId,
    "ds"
);
id_type!(
    /// Identifies a training job.
    JobId,
    "job"
);
id_type!(
    /// Identifies a trained model.
    ModelId,
    "mdl"
);
id_type!(
    /// Identifies one training worker of one process; it owns the leases it takes.
    WorkerId,
    "wrk"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_prefix_and_sort_by_creation() {
        let first = JobId::generate();
        let second = JobId::generate();
        assert!(first.as_str().starts_with("job_"));
        assert!(first < second);
        assert!(DatasetId::generate().to_string().starts_with("ds_"));
    }
}
