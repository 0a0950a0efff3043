//! `POST /predict` and `POST /v1/models/{id}/predict`: class probabilities of texts.

use axum::extract::{Path, State};
use axum::Json;

use crate::api::dto::{PredictRequest, PredictResponse, PredictionView};
use crate::api::extract::ApiJson;
use crate::api::{ApiError, AppState, Limits};
use crate::domain::ModelId;
use crate::ml::manifest::Role;

/// `POST /predict`: predicts with the model named in the body, else the default one.
pub async fn with_default(
    State(state): State<AppState>,
    ApiJson(request): ApiJson<PredictRequest>,
) -> Result<Json<PredictResponse>, ApiError> {
    let model = request.model.clone().map(ModelId::from_string);
    run(&state, model, request).await
}

/// `POST /v1/models/{id}/predict`: predicts with this model.
pub async fn with_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<PredictRequest>,
) -> Result<Json<PredictResponse>, ApiError> {
    if request.model.as_ref().is_some_and(|m| *m != id) {
        let message = "`model` differs from the model in the path; leave it out".to_string();
        return Err(ApiError::InvalidRequest(message));
    }
    run(&state, Some(ModelId::from_string(id)), request).await
}

/// Checks the request first (a bad request is refused whatever the model), then picks
/// the model and predicts.
async fn run(
    state: &AppState,
    model: Option<ModelId>,
    request: PredictRequest,
) -> Result<Json<PredictResponse>, ApiError> {
    let role = request.role.unwrap_or(Role::Student);
    let top_k = request.top_k.unwrap_or(usize::MAX);
    if top_k == 0 {
        return Err(ApiError::InvalidRequest("`top_k` must be at least 1".into()));
    }
    let texts = checked_texts(request, &state.limits)?;
    let id = state.models.resolve(model).await?;

    let prediction = state.models.predict(&id, role, texts).await?;
    let predictions = prediction
        .probabilities
        .iter()
        .map(|row| PredictionView::from_probabilities(&prediction.labels, row, top_k))
        .collect();
    Ok(Json(PredictResponse { model: id.to_string(), role, predictions }))
}

/// The texts of a request: exactly one of `text` and `texts`, within the limits.
fn checked_texts(request: PredictRequest, limits: &Limits) -> Result<Vec<String>, ApiError> {
    let texts = match (request.text, request.texts) {
        (Some(text), None) => vec![text],
        (None, Some(texts)) if !texts.is_empty() => texts,
        (None, Some(_)) => return Err(ApiError::InvalidRequest("`texts` is empty".into())),
        _ => return Err(ApiError::InvalidRequest("give exactly one of `text` and `texts`".into())),
    };
    if texts.len() > limits.max_predict_texts {
        return Err(ApiError::TooManyTexts { given: texts.len(), limit: limits.max_predict_texts });
    }
    if let Some(index) = texts.iter().position(|t| t.len() > limits.max_text_bytes) {
        return Err(ApiError::TextTooLong { index, limit: limits.max_text_bytes });
    }
    Ok(texts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: Option<&str>, texts: Option<Vec<&str>>) -> PredictRequest {
        PredictRequest {
            text: text.map(str::to_string),
            texts: texts.map(|t| t.into_iter().map(str::to_string).collect()),
            model: None,
            role: None,
            top_k: None,
        }
    }

    #[test]
    fn texts_are_checked_against_the_limits() {
        let limits = Limits { max_predict_texts: 2, max_text_bytes: 5, ..Limits::default() };
        assert_eq!(checked_texts(request(Some("hi"), None), &limits).unwrap(), ["hi"]);
        let too_many = checked_texts(request(None, Some(vec!["a", "b", "c"])), &limits);
        assert!(matches!(too_many, Err(ApiError::TooManyTexts { given: 3, .. })));
        let too_long = checked_texts(request(None, Some(vec!["a", "toolong"])), &limits);
        assert!(matches!(too_long, Err(ApiError::TextTooLong { index: 1, .. })));
        assert!(checked_texts(request(Some("a"), Some(vec!["b"])), &limits).is_err());
        assert!(checked_texts(request(None, Some(vec![])), &limits).is_err());
    }
}
