//! The database: one [`Store`] over SQLite or PostgreSQL, chosen by the URL.
//!
//! Both backends go through sqlx's `Any` driver with the same SQL (`$1` placeholders,
//! BIGINT/TEXT columns, JSON kept as TEXT); the few statements that differ, such as the
//! queue's claim, branch on [`Backend`]. Migrations live in `migrations/sqlite/` and
//! `migrations/postgres/`, are embedded in the binary, and run at connect. SQLite runs in
//! WAL mode so that readers never wait for the writer. One module per table.

mod datasets;
mod jobs;
mod models;

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::AnyPool;

pub use datasets::DeleteOutcome;
pub use jobs::{CancelOutcome, JobOutcome, LeaseState, ABANDONED_ERROR, MAX_ATTEMPTS};

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// An SQLite file (the embedded default).
    Sqlite,
    /// A PostgreSQL server (shared by several processes).
    Postgres,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL names no supported database.
    #[error("unsupported database url `{0}`: expected sqlite:PATH or postgres://...")]
    UnsupportedUrl(String),
    /// The database cannot be reached.
    #[error("cannot connect to the database")]
    Connect(#[source] sqlx::Error),
    /// The migrations failed.
    #[error("cannot apply database migrations")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database query failed")]
    Query(#[from] sqlx::Error),
    /// A stored value cannot be read back.
    #[error("corrupt value in column `{column}`")]
    Corrupt {
        /// The column.
        column: &'static str,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A value cannot be serialised for storage.
    #[error("cannot encode a value for column `{column}`")]
    Encode {
        /// The column.
        column: &'static str,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
    /// A job would move to a state its life does not allow.
    #[error(transparent)]
    Transition(#[from] crate::domain::TransitionError),
}

/// The database of datasets, jobs and models.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Connects to `url` (`sqlite:PATH` or `postgres://...`) and applies the migrations.
    ///
    /// An SQLite file and its folder are created when missing.
    ///
    /// # Errors
    /// A [`StoreError`] when the URL is unsupported, the database unreachable, or a
    /// migration fails.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = backend_of(url)?;
        let url = match backend {
            Backend::Sqlite => prepare_sqlite_url(url)?,
            Backend::Postgres => url.to_string(),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections.max(1))
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await
            .map_err(StoreError::Connect)?;
        let store = Self { pool, backend };
        store.prepare().await?;
        Ok(store)
    }

    async fn prepare(&self) -> Result<(), StoreError> {
        match self.backend {
            Backend::Sqlite => {
                // WAL persists in the file, so setting it once per open is enough.
                sqlx::query("PRAGMA journal_mode = WAL").execute(&self.pool).await?;
                sqlx::migrate!("migrations/sqlite").run(&self.pool).await?;
            }
            Backend::Postgres => sqlx::migrate!("migrations/postgres").run(&self.pool).await?,
        }
        Ok(())
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Checks that the database answers.
    ///
    /// # Errors
    /// [`StoreError::Query`] when it does not.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.pool.close().await;
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

fn backend_of(url: &str) -> Result<Backend, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Backend::Sqlite)
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Backend::Postgres)
    } else {
        Err(StoreError::UnsupportedUrl(url.to_string()))
    }
}

/// Adds `mode=rwc` (create when missing) and creates the file's folder.
fn prepare_sqlite_url(url: &str) -> Result<String, StoreError> {
    let rest = url.trim_start_matches("sqlite:").trim_start_matches("//");
    let path = rest.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Err(StoreError::UnsupportedUrl(url.to_string()));
    }
    if let Some(parent) = Path::new(path).parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| StoreError::Connect(sqlx::Error::Io(e)))?;
    }
    if url.contains("mode=") {
        return Ok(url.to_string());
    }
    let separator = if url.contains('?') { '&' } else { '?' };
    Ok(format!("{url}{separator}mode=rwc"))
}

/// Reads a JSON column.
fn json_column<T: serde::de::DeserializeOwned>(
    row: &AnyRow,
    column: &'static str,
) -> Result<T, StoreError> {
    use sqlx::Row;
    let text: String = row.try_get(column)?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt { column, source: Box::new(e) })
}

/// Reads a nullable JSON column.
fn json_column_opt<T: serde::de::DeserializeOwned>(
    row: &AnyRow,
    column: &'static str,
) -> Result<Option<T>, StoreError> {
    use sqlx::Row;
    let text: Option<String> = row.try_get(column)?;
    text.map(|t| serde_json::from_str(&t))
        .transpose()
        .map_err(|e| StoreError::Corrupt { column, source: Box::new(e) })
}

/// Writes a value as JSON text.
fn to_json<T: serde::Serialize>(value: &T, column: &'static str) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|source| StoreError::Encode { column, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_pick_the_backend() {
        assert_eq!(backend_of("sqlite:data/x.db").unwrap(), Backend::Sqlite);
        assert_eq!(backend_of("postgres://u@h/db").unwrap(), Backend::Postgres);
        assert!(backend_of("mysql://h/db").is_err());
    }

    #[test]
    fn sqlite_urls_create_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}/sub/x.db", dir.path().display());
        assert_eq!(prepare_sqlite_url(&url).unwrap(), format!("{url}?mode=rwc"));
        assert!(dir.path().join("sub").is_dir());
        assert!(prepare_sqlite_url("sqlite::memory:").is_err());
    }
}
