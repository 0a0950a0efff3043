//! Request handlers, one module per resource; each function is one action.

pub mod datasets;
pub mod jobs;
pub mod models;
pub mod ops;
pub mod predict;
pub mod pretrained;

use crate::api::{ApiError, Limits};

/// Items per page when the caller does not say.
const DEFAULT_PAGE_SIZE: usize = 50;

/// A checked page: (limit, offset) for the store.
fn page(
    limit: Option<usize>,
    offset: Option<usize>,
    limits: &Limits,
) -> Result<(i64, i64), ApiError> {
    let limit = limit.unwrap_or(DEFAULT_PAGE_SIZE);
    if limit == 0 || limit > limits.max_page_size {
        let max = limits.max_page_size;
        return Err(ApiError::InvalidRequest(format!("`limit` must be between 1 and {max}")));
    }
    let offset = offset.unwrap_or(0);
    let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    Ok((as_i64(limit), as_i64(offset)))
}

/// The offset of the next page, when this page was full.
fn next_offset(limit: i64, offset: i64, returned: usize) -> Option<usize> {
    (returned as i64 == limit).then(|| (offset + limit) as usize)
}
