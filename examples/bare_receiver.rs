//! The floor for the receiver benchmark: an axum handler that only reads the body and answers
//! 200, on the same runtime and stack as `fleetsync serve`. See BENCHMARKS.md.

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8090".into());
    let app = Router::new().route(
        "/webhooks/{provider}",
        post(|body: Bytes| async move { body.len().to_string() }),
    );
    let listener = tokio::net::TcpListener::bind(&address).await?;
    axum::serve(listener, app).await
}
