//! Request rate the E-utilities client sustains against a local server that allows 10 requests
//! per trailing second (429 above), over 60 s. Baseline in the same run: the server's limit.
//! Target: ≥ 9.5 requests/s with zero 429s. Run: `cargo bench -p medembed-fetcher --bench eutils_rate`
//! (`MEDEMBED_BENCH_SECONDS` shortens it).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use medembed_fetcher::eutils::{EutilsClient, RateLimiter};
use medembed_pipeline::config::Settings;

const LIMIT: usize = 10;

#[derive(Default)]
struct Seen {
    arrivals: Vec<Instant>,
    ok: u64,
    rejected: u64,
}

async fn handle(State(seen): State<Arc<Mutex<Seen>>>) -> axum::response::Response {
    let mut s = seen.lock().expect("lock");
    let now = Instant::now();
    s.arrivals
        .retain(|t| now.duration_since(*t) < Duration::from_secs(1));
    s.arrivals.push(now);
    if s.arrivals.len() > LIMIT {
        s.rejected += 1;
        return (
            StatusCode::TOO_MANY_REQUESTS,
            r#"{"error":"API rate limit exceeded","count":"11"}"#,
        )
            .into_response();
    }
    s.ok += 1;
    "<eSearchResult><Count>0</Count><RetMax>0</RetMax><RetStart>0</RetStart><IdList/></eSearchResult>".into_response()
}

#[tokio::main]
async fn main() {
    let seconds: u64 = std::env::var("MEDEMBED_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let seen = Arc::new(Mutex::new(Seen::default()));
    let app = axum::Router::new()
        .route("/eutils/esearch.fcgi", post(handle))
        .with_state(seen.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serve") });

    let base = format!("http://{addr}/eutils");
    let settings = Settings::load_with_env(
        None,
        [
            ("MEDEMBED__NCBI__BASE_URL", base.as_str()),
            ("MEDEMBED__NCBI__API_KEY", "bench-key"),
            ("MEDEMBED__NCBI__MAX_RETRIES", "0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string())),
    )
    .expect("settings");
    let limiter = Arc::new(RateLimiter::new(settings.ncbi.effective_rate()));
    let client = EutilsClient::new(&settings.ncbi, limiter, None);
    // Four concurrent callers, as several fetch tasks in one process would be.
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut callers = Vec::new();
    for _ in 0..4 {
        let client = client.clone();
        callers.push(tokio::spawn(async move {
            let mut failed = 0u64;
            while Instant::now() < deadline {
                if client
                    .request(
                        "esearch",
                        &[("db", "pubmed".to_string()), ("term", "x".to_string())],
                    )
                    .await
                    .is_err()
                {
                    failed += 1;
                }
            }
            failed
        }));
    }
    let mut failed = 0;
    for c in callers {
        failed += c.await.expect("caller");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let s = seen.lock().expect("lock");
    println!(
        "{{\"name\":\"eutils_sustained_rate\",\"duration_s\":{elapsed:.1},\"requests_ok\":{},\"requests_per_s\":{:.2},\"http_429\":{},\"client_errors\":{failed},\"baseline_server_limit_per_s\":{LIMIT},\"callers\":4}}",
        s.ok,
        s.ok as f64 / elapsed,
        s.rejected
    );
}
