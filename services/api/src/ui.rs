//! The web UI: four pages (search, similarity, map, jobs) built from one HTML shell, one script
//! and one stylesheet under `services/api/ui/`, compiled into the binary; the pages call the JSON
//! API and nothing else.

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;

const SHELL: &str = include_str!("../ui/page.html");
const SCRIPT: &str = include_str!("../ui/app.js");
const STYLE: &str = include_str!("../ui/style.css");

/// The pages: (path, page name, title, body).
const PAGES: [(&str, &str, &str, &str); 4] = [
    ("/", "search", "Search", include_str!("../ui/search.html")),
    (
        "/similarity",
        "similarity",
        "Similarity",
        include_str!("../ui/similarity.html"),
    ),
    ("/map", "map", "Map", include_str!("../ui/map.html")),
    ("/jobs", "jobs", "Jobs", include_str!("../ui/jobs.html")),
];

fn page(name: &str, title: &str, body: &str) -> String {
    SHELL
        .replace("{{PAGE}}", name)
        .replace("{{TITLE}}", title)
        .replace("{{BODY}}", body)
}

/// The UI's routes (no state: the pages fetch their data from the API).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new()
        .route(
            "/ui/app.js",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
                    SCRIPT,
                )
            }),
        )
        .route(
            "/ui/style.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], STYLE) }),
        );
    for (path, name, title, body) in PAGES {
        let html = page(name, title, body);
        router = router.route(
            path,
            get(move || {
                let html = html.clone();
                async move { Html(html).into_response() }
            }),
        );
    }
    router
}
