//! `/v1/models`: list, show, download, delete and promote trained models.

use axum::extract::{Path, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::{next_offset, page};
use crate::api::dto::{ModelList, ModelView, PageQuery};
use crate::api::extract::ApiQuery;
use crate::api::{ApiError, AppState};
use crate::domain::{now_millis, ModelId};
use crate::jobs::model_prefix;
use crate::ml::manifest::{Role, MANIFEST_FILE};
use crate::store::DeleteOutcome;

/// `GET /v1/models`: lists models, newest first.
pub async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<ModelList>, ApiError> {
    let (limit, offset) = page(query.limit, query.offset, &state.limits)?;
    let records = state.store.list_models(limit, offset).await?;
    let next_offset = next_offset(limit, offset, records.len());
    Ok(Json(ModelList { models: records.into_iter().map(ModelView::from).collect(), next_offset }))
}

/// `GET /v1/models/{id}`: configs, labels, metrics and sizes of a model.
pub async fn show(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ModelView>, ApiError> {
    let id = ModelId::from_string(id);
    let model = state.store.model(&id).await?.ok_or(ApiError::ModelNotFound(id))?;
    Ok(Json(ModelView::from(model)))
}

/// `GET /v1/models/{id}/files/{file}`: the `teacher` or `student` safetensors file, or
/// the `manifest`.
pub async fn file(
    State(state): State<AppState>,
    Path((id, file)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = ModelId::from_string(id);
    let model = state.store.model(&id).await?.ok_or_else(|| ApiError::ModelNotFound(id.clone()))?;
    let (name, content_type) = match file.as_str() {
        "manifest" => (MANIFEST_FILE, "application/json"),
        "student" | "teacher" => {
            let role = if file == "student" { Role::Student } else { Role::Teacher };
            if !model.has_role(role) {
                return Err(ApiError::NetworkNotFound(format!(
                    "model `{id}` has no teacher network"
                )));
            }
            (role.weights_file(), "application/octet-stream")
        }
        _ => {
            let message = format!("no file `{file}`: use teacher, student or manifest");
            return Err(ApiError::NetworkNotFound(message));
        }
    };
    let bytes = state.storage.get_bytes(&format!("{}/{name}", model_prefix(&id))).await?;
    let disposition = format!("attachment; filename=\"{id}-{name}\"");
    Ok(([(CONTENT_TYPE, content_type.to_string()), (CONTENT_DISPOSITION, disposition)], bytes)
        .into_response())
}

/// `DELETE /v1/models/{id}`: deletes a model whose teacher no active job reuses.
pub async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = ModelId::from_string(id);
    match state.store.delete_model(&id).await? {
        DeleteOutcome::Deleted => {
            state.models.forget(&id);
            state.storage.delete_prefix(&model_prefix(&id)).await?;
            tracing::info!(model.id = %id, "model deleted");
            Ok(StatusCode::NO_CONTENT)
        }
        DeleteOutcome::InUse => Err(ApiError::ModelInUse(id)),
        DeleteOutcome::NotFound => Err(ApiError::ModelNotFound(id)),
    }
}

/// `POST /v1/models/{id}/promote`: makes the model the default of `/predict`.
///
/// One row changes in the database, and this process switches at once; requests already
/// handed to the old model finish on it.
pub async fn promote(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<ModelView>, ApiError> {
    let id = ModelId::from_string(id);
    if !state.store.promote_model(&id, now_millis()).await? {
        return Err(ApiError::ModelNotFound(id));
    }
    state.models.set_default(&id);
    tracing::info!(model.id = %id, "model promoted");
    let model = state.store.model(&id).await?.ok_or(ApiError::ModelNotFound(id))?;
    Ok(Json(ModelView::from(model)))
}
