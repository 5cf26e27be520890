//! The pages and scripts of `web/`, embedded in the binary so it runs from
//! any directory.

use hyper::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};

use crate::server::body::Body;

const SUBSCRIBER_HTML: &str = include_str!("../../../../../web/subscriber.html");
const PERE_JS: &str = include_str!("../../../../../web/pere.js");
const DASHBOARD_HTML: &str = include_str!("../../../../../web/dashboard.html");

/// Serves the embedded file `name` (one of [`crate::server::router::STATIC_FILES`]).
pub fn serve(name: &str) -> Response<Body> {
    let (body, content_type) = match name {
        "subscriber.html" => (SUBSCRIBER_HTML, "text/html; charset=utf-8"),
        "pere.js" => (PERE_JS, "text/javascript; charset=utf-8"),
        "dashboard.html" => (DASHBOARD_HTML, "text/html; charset=utf-8"),
        _ => return super::error_response(&crate::error::ApiError::not_found(name)),
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::OK;
    let h = response.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
