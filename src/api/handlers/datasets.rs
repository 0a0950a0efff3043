//! `/v1/datasets`: upload, list, show and delete datasets.
//!
//! An upload streams to a temporary file (counting bytes against the limit), is parsed
//! and checked off the runtime, and is stored normalised as JSON lines, so that workers
//! read one format whatever was uploaded.

use std::io::Write;
use std::path::{Path as FsPath, PathBuf};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::{next_offset, page};
use crate::api::dto::{DatasetList, DatasetUploadQuery, DatasetView, PageQuery};
use crate::api::extract::ApiQuery;
use crate::api::{ApiError, AppState};
use crate::domain::{now_millis, DatasetId, DatasetRecord};
use crate::jobs::dataset_key;
use crate::ml::data::{
    read_csv, read_json_lines, DataError, DataFormat, DataSummary, Example, ReadLimits,
};
use crate::store::DeleteOutcome;

/// Rows kept as the dataset's sample.
const SAMPLE_ROWS: usize = 5;
/// Longest dataset name, in bytes.
const MAX_NAME_BYTES: usize = 200;
/// Content types of an upload.
const UPLOAD_TYPES: &str = "application/x-ndjson (JSON lines) or text/csv";

/// `POST /v1/datasets?name=...`: uploads a dataset.
pub async fn create(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<DatasetUploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<DatasetView>), ApiError> {
    let format = upload_format(&headers)?;
    let name = query.name.trim().to_string();
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        let message = format!("`name` must be 1 to {MAX_NAME_BYTES} bytes");
        return Err(ApiError::InvalidRequest(message));
    }

    let id = DatasetId::generate();
    let upload = TempFiles::new(&state.tmp_dir, &id);
    let size = receive(body, &upload.raw, state.limits.max_upload_bytes).await?;
    let limits =
        ReadLimits { max_rows: state.limits.max_rows, max_text_bytes: state.limits.max_text_bytes };
    let (raw, normalised) = (upload.raw.clone(), upload.normalised.clone());
    let parsed = tokio::task::spawn_blocking(move || {
        parse_and_normalise(&raw, &normalised, format, &limits)
    })
    .await
    .map_err(ApiError::internal)??;

    state.storage.put_file(&dataset_key(&id), &upload.normalised).await?;
    let record = record_of(id, name, format, size, &parsed);
    state.store.insert_dataset(&record).await?;
    tracing::info!(dataset.id = %record.id, rows = record.rows, "dataset stored");
    Ok((StatusCode::CREATED, Json(DatasetView::from_record(record, false))))
}

/// `GET /v1/datasets`: lists datasets, newest first.
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<DatasetList>, ApiError> {
    let (limit, offset) = page(query.limit, query.offset, &state.limits)?;
    let records = state.store.list_datasets(limit, offset).await?;
    let next_offset = next_offset(limit, offset, records.len());
    let datasets = records.into_iter().map(|r| DatasetView::from_record(r, false)).collect();
    Ok(Json(DatasetList { datasets, next_offset }))
}

/// `GET /v1/datasets/{id}`: one dataset, with a few sample rows.
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<DatasetView>, ApiError> {
    let id = DatasetId::from_string(id);
    let record = state.store.dataset(&id).await?.ok_or(ApiError::DatasetNotFound(id))?;
    Ok(Json(DatasetView::from_record(record, true)))
}

/// `DELETE /v1/datasets/{id}`: deletes a dataset no queued or running job uses.
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = DatasetId::from_string(id);
    match state.store.delete_dataset(&id).await? {
        DeleteOutcome::Deleted => {
            state.storage.delete(&dataset_key(&id)).await?;
            Ok(StatusCode::NO_CONTENT)
        }
        DeleteOutcome::InUse => Err(ApiError::DatasetInUse(id)),
        DeleteOutcome::NotFound => Err(ApiError::DatasetNotFound(id)),
    }
}

fn upload_format(headers: &HeaderMap) -> Result<DataFormat, ApiError> {
    let value = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let mime = value.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/x-ndjson" | "application/jsonl" | "application/x-jsonlines" => {
            Ok(DataFormat::JsonLines)
        }
        "text/csv" => Ok(DataFormat::Csv),
        _ => Err(ApiError::UnsupportedMediaType(UPLOAD_TYPES)),
    }
}

/// The temporary files of one upload, removed when dropped.
struct TempFiles {
    raw: PathBuf,
    normalised: PathBuf,
}

impl TempFiles {
    fn new(dir: &FsPath, id: &DatasetId) -> Self {
        Self { raw: dir.join(format!("{id}.upload")), normalised: dir.join(format!("{id}.jsonl")) }
    }
}

impl Drop for TempFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.raw);
        let _ = std::fs::remove_file(&self.normalised);
    }
}

/// Streams the body into `file`, failing as soon as it passes `limit` bytes.
async fn receive(body: Body, file: &FsPath, limit: u64) -> Result<u64, ApiError> {
    if let Some(parent) = file.parent() {
        tokio::fs::create_dir_all(parent).await.map_err(ApiError::internal)?;
    }
    let mut out = tokio::fs::File::create(file).await.map_err(ApiError::internal)?;
    let mut stream = body.into_data_stream();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::Malformed(format!("cannot read the body: {e}")))?;
        size += chunk.len() as u64;
        if size > limit {
            let message = format!("the upload is larger than the limit of {limit} bytes");
            return Err(ApiError::PayloadTooLarge(message));
        }
        out.write_all(&chunk).await.map_err(ApiError::internal)?;
    }
    out.flush().await.map_err(ApiError::internal)?;
    Ok(size)
}

/// Parses the upload and writes its rows as JSON lines; runs off the runtime.
fn parse_and_normalise(
    raw: &FsPath,
    normalised: &FsPath,
    format: DataFormat,
    limits: &ReadLimits,
) -> Result<Vec<Example>, ApiError> {
    let file = std::fs::File::open(raw).map_err(ApiError::internal)?;
    let rows = match format {
        DataFormat::JsonLines => read_json_lines(file, limits),
        DataFormat::Csv => read_csv(file, limits),
    };
    let rows = rows.map_err(|error| match error {
        DataError::TooManyRows { limit } => ApiError::TooManyRows(limit),
        DataError::Io(error) => ApiError::internal(error),
        other @ (DataError::Line { .. } | DataError::Empty) => {
            ApiError::InvalidDataset(other.to_string())
        }
    })?;

    let out = std::fs::File::create(normalised).map_err(ApiError::internal)?;
    let mut out = std::io::BufWriter::new(out);
    for row in &rows {
        serde_json::to_writer(&mut out, row).map_err(ApiError::internal)?;
        out.write_all(b"\n").map_err(ApiError::internal)?;
    }
    out.flush().map_err(ApiError::internal)?;
    Ok(rows)
}

fn record_of(
    id: DatasetId,
    name: String,
    format: DataFormat,
    size: u64,
    rows: &[Example],
) -> DatasetRecord {
    let summary = DataSummary::of(rows);
    let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    DatasetRecord {
        id,
        name,
        format: match format {
            DataFormat::JsonLines => "jsonl".to_string(),
            DataFormat::Csv => "csv".to_string(),
        },
        rows: as_i64(summary.rows),
        labels: summary.labels.into_iter().map(|(label, n)| (label, as_i64(n))).collect(),
        unlabelled: as_i64(summary.unlabelled),
        size_bytes: i64::try_from(size).unwrap_or(i64::MAX),
        sample: rows.iter().take(SAMPLE_ROWS).cloned().collect(),
        created_at: now_millis(),
    }
}
