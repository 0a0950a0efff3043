//! The `models` table: one row per trained model, whose files live in the object storage.
//!
//! The default model is the most recently promoted one, else the newest: promoting is a
//! single-row update, so it is atomic on both backends.

use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

use super::{json_column, json_column_opt, to_json, DeleteOutcome, Store, StoreError};
use crate::domain::{JobId, ModelId, ModelRecord};

const COLUMNS: &str = "id, job_id, labels, student, teacher, config, student_bytes, \
    teacher_bytes, created_at, promoted_at";

/// Inserts a model's row, inside the transaction that marks its job succeeded.
pub(super) async fn insert_model(
    conn: &mut AnyConnection,
    model: &ModelRecord,
) -> Result<(), StoreError> {
    let sql =
        format!("INSERT INTO models ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)");
    let teacher = model.teacher.as_ref().map(|t| to_json(t, "teacher")).transpose()?;
    sqlx::query(&sql)
        .bind(model.id.as_str())
        .bind(model.job_id.as_str())
        .bind(to_json(&model.labels, "labels")?)
        .bind(to_json(&model.student, "student")?)
        .bind(teacher)
        .bind(to_json(&model.config, "config")?)
        .bind(model.student_bytes)
        .bind(model.teacher_bytes)
        .bind(model.created_at)
        .bind(model.promoted_at)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

impl Store {
    /// The model with this id.
    ///
    /// # Errors
    /// A [`StoreError`] when the query fails.
    pub async fn model(&self, id: &ModelId) -> Result<Option<ModelRecord>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM models WHERE id = $1");
        let row = sqlx::query(&sql).bind(id.as_str()).fetch_optional(self.pool()).await?;
        row.map(|r| model_from_row(&r)).transpose()
    }

    /// Models, newest first.
    ///
    /// # Errors
    /// A [`StoreError`] when the query fails.
    pub async fn list_models(
        &self,
        limit: i64,
        offset: i64,
    ) -> Result<Vec<ModelRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM models ORDER BY created_at DESC, id DESC LIMIT $1 OFFSET $2"
        );
        let rows = sqlx::query(&sql).bind(limit).bind(offset).fetch_all(self.pool()).await?;
        rows.iter().map(model_from_row).collect()
    }

    /// The default model: the last promoted one, else the newest.
    ///
    /// # Errors
    /// A [`StoreError`] when the query fails.
    pub async fn default_model(&self) -> Result<Option<ModelRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM models ORDER BY CASE WHEN promoted_at IS NULL THEN 1 ELSE 0 \
             END, promoted_at DESC, created_at DESC, id DESC LIMIT 1"
        );
        let row = sqlx::query(&sql).fetch_optional(self.pool()).await?;
        row.map(|r| model_from_row(&r)).transpose()
    }

    /// Makes a model the default. Returns false when no model has this id.
    ///
    /// # Errors
    /// A [`StoreError`] when the query fails.
    pub async fn promote_model(&self, id: &ModelId, now: i64) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE models SET promoted_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id.as_str())
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes a model unless a queued or running job reuses its teacher.
    ///
    /// # Errors
    /// A [`StoreError`] when a query fails.
    pub async fn delete_model(&self, id: &ModelId) -> Result<DeleteOutcome, StoreError> {
        let deleted = sqlx::query(
            "DELETE FROM models WHERE id = $1 AND NOT EXISTS (SELECT 1 FROM jobs \
             WHERE teacher_model_id = $1 AND status IN ('queued', 'running'))",
        )
        .bind(id.as_str())
        .execute(self.pool())
        .await?
        .rows_affected();
        if deleted > 0 {
            return Ok(DeleteOutcome::Deleted);
        }
        match self.model(id).await? {
            Some(_) => Ok(DeleteOutcome::InUse),
            None => Ok(DeleteOutcome::NotFound),
        }
    }
}

fn model_from_row(row: &AnyRow) -> Result<ModelRecord, StoreError> {
    Ok(ModelRecord {
        id: ModelId::from_string(row.try_get::<String, _>("id")?),
        job_id: JobId::from_string(row.try_get::<String, _>("job_id")?),
        labels: json_column(row, "labels")?,
        student: json_column(row, "student")?,
        teacher: json_column_opt(row, "teacher")?,
        config: json_column(row, "config")?,
        student_bytes: row.try_get("student_bytes")?,
        teacher_bytes: row.try_get("teacher_bytes")?,
        created_at: row.try_get("created_at")?,
        promoted_at: row.try_get("promoted_at")?,
    })
}
