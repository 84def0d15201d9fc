//! (being written) The web page, `/api/…`, health and metrics routes.

use axum::Router;
use std::sync::Arc;

use crate::build::Builder;

pub fn router(builder: Arc<Builder>) -> Router {
    Router::new().with_state(builder)
}
