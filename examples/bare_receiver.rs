//! The floor for the receiver benchmark: an axum handler that only reads the body and answers
//! 200, on the same runtime and stack as `fleetsync serve`. See BENCHMARKS.md.
//!
//! With a second argument, the secret, it also checks `X-Hub-Signature-256` over the body
//! (HMAC-SHA256, as GitHub signs) and answers 401 on a mismatch: the floor of any receiver that
//! verifies before it answers, so the cost of the signature itself is measured apart.

use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use hmac::{Hmac, Mac};
use sha2::Sha256;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:8090".into());
    let app = match args.next() {
        None => Router::new().route(
            "/webhooks/{provider}",
            post(|body: Bytes| async move { body.len().to_string() }),
        ),
        Some(secret) => Router::new().route(
            "/webhooks/{provider}",
            post(move |headers: HeaderMap, body: Bytes| async move {
                let sent = headers
                    .get("x-hub-signature-256")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("sha256="))
                    .and_then(|v| hex::decode(v).ok())
                    .unwrap_or_default();
                let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
                mac.update(&body);
                match mac.verify_slice(&sent) {
                    Ok(()) => (StatusCode::OK, body.len().to_string()),
                    Err(_) => (StatusCode::UNAUTHORIZED, String::new()),
                }
            }),
        ),
    };
    let listener = tokio::net::TcpListener::bind(&address).await?;
    axum::serve(listener, app).await
}
