//! The `datasets` table: one row per upload; the rows themselves live in the object
//! storage.

use sqlx::any::AnyRow;
use sqlx::Row;

use super::{json_column, to_json, Store, StoreError};
use crate::domain::{DatasetId, DatasetRecord};

const COLUMNS: &str =
    "id, name, format, row_count, labels, unlabelled, size_bytes, sample, created_at";

/// What a delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// The row is gone.
    Deleted,
    /// A queued or running job still uses it; nothing changed.
    InUse,
    /// No row has this id.
    NotFound,
}

impl Store {
    /// Stores a new dataset's record.
    ///
    /// # Errors
    /// A [`StoreError`] when the insert fails.
    pub async fn insert_dataset(&self, dataset: &DatasetRecord) -> Result<(), StoreError> {
        let sql =
            format!("INSERT INTO datasets ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)");
        sqlx::query(&sql)
            .bind(dataset.id.as_str())
            .bind(dataset.name.as_str())
            .bind(dataset.format.as_str())
            .bind(dataset.rows)
            .bind(to_json(&dataset.labels, "labels")?)
            .bind(dataset.unlabelled)
            .bind(dataset.size_bytes)
            .bind(to_json(&dataset.sample, "sample")?)
            .bind(dataset.created_at)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// The dataset with this id.
    ///
    /// # Errors
    /// A [`StoreError`] when the query fails.
    pub async fn dataset(&self, id: &DatasetId) -> Result<Option<DatasetRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM datasets WHERE id = $1");
        let row = sqlx::query(&sql).bind(id.as_str()).fetch_optional(self.pool()).await?;
        row.map(|r| dataset_from_row(&r)).transpose()
    }

    /// Datasets, newest first.
    ///
    /// # Errors
    /// A [`StoreError`] when the query fails.
    pub async fn list_datasets(
        &self,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<DatasetRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM datasets ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
        );
        let rows = sqlx::query(&sql).bind(limit).bind(offset).fetch_all(self.pool()).await?;
        rows.iter().map(dataset_from_row).collect()
    }

    /// Deletes a dataset unless a queued or running job uses it, in one statement so that
    /// no job can slip in between the check and the delete.
    ///
    /// # Errors
    /// A [`StoreError`] when a query fails.
    pub async fn delete_dataset(&self, id: &DatasetId) -> Result<DeleteOutcome, StoreError> {
        let deleted = sqlx::query(
            "DELETE FROM datasets WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM jobs \
             WHERE (dataset_id = $1 OR validation_dataset_id = $1) \
             AND status IN ('queued', 'running'))",
        )
        .bind(id.as_str())
        .execute(self.pool())
        .await?
        .rows_affected();
        if deleted > 0 {
            return Ok(DeleteOutcome::Deleted);
        }
        match self.dataset(id).await? {
            Some(_) => Ok(DeleteOutcome::InUse),
            None => Ok(DeleteOutcome::NotFound),
        }
    }
}

fn dataset_from_row(row: &AnyRow) -> Result<DatasetRecord, StoreError> {
    Ok(DatasetRecord {
        id: DatasetId::from_string(row.try_get::<String, _>("id")?),
        name: row.try_get("name")?,
        format: row.try_get("format")?,
        rows: row.try_get("row_count")?,
        labels: json_column(row, "labels")?,
        unlabelled: row.try_get("unlabelled")?,
        size_bytes: row.try_get("size_bytes")?,
        sample: json_column(row, "sample")?,
        created_at: row.try_get("created_at")?,
    })
}
