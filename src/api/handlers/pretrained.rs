//! `/v1/pretrained`: the pretrained transformer folders a job can name as its teacher.

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use crate::api::{ApiError, AppState};
use crate::ml::transformer::{list_pretrained, PretrainedInfo};

/// The answer of `GET /v1/pretrained`.
#[derive(Serialize)]
pub struct PretrainedList {
    /// Complete folders (config.json, model.safetensors, tokenizer.json), by name.
    pub pretrained: Vec<PretrainedInfo>,
}

/// `GET /v1/pretrained`: lists the folders under the configured `--pretrained-dir`.
pub async fn list(State(state): State<AppState>) -> Result<Json<PretrainedList>, ApiError> {
    let Some(root) = state.jobs.settings.pretrained_dir.clone() else {
        return Ok(Json(PretrainedList { pretrained: Vec::new() }));
    };
    let pretrained = tokio::task::spawn_blocking(move || list_pretrained(&root))
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(PretrainedList { pretrained }))
}
