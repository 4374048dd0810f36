//! House rules that are cheaper to check than to remember (after rust-analyzer's tidy tests).

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}

#[test]
fn every_source_file_says_what_it_owns() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for dir in ["src", "tests", "examples"] {
        for file in rust_files(&root.join(dir)) {
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(
                text.starts_with("//!"),
                "{} must open with a //! module doc",
                file.display()
            );
        }
    }
}

/// Only `ecs` talks to ECS, only `queue` to SQS, only `preflight::aws` to IAM, Secrets Manager,
/// SSM, EC2 and Logs, only `webhook` speaks HTTP (ARCHITECTURE.md).
#[test]
fn aws_and_http_stay_in_their_modules() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    for file in rust_files(&src) {
        let relative = file
            .strip_prefix(&src)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&file).unwrap();
        for (needle, home) in [
            ("aws_sdk_ecs", "ecs/"),
            ("aws_sdk_elasticloadbalancingv2", "ingress.rs"),
            ("aws_sdk_sqs", "queue/"),
            ("aws_sdk_sns", "feedback/sinks.rs"),
            ("aws_sdk_iam", "preflight/aws.rs"),
            ("aws_sdk_secretsmanager", "preflight/aws.rs"),
            ("aws_sdk_ssm", "preflight/aws.rs"),
            ("aws_sdk_ec2", "preflight/aws.rs"),
            ("aws_sdk_cloudwatchlogs", "preflight/aws.rs"),
            (
                "axum",
                match &relative {
                    r if r.starts_with("api/") => "api/",
                    r if r == "metrics.rs" => "metrics.rs",
                    _ => "webhook/",
                },
            ),
        ] {
            assert!(
                !text.contains(needle) || relative.starts_with(home),
                "{relative} uses {needle}, which belongs in src/{home}"
            );
        }
        if relative.starts_with("resolve/") {
            for needle in ["git2", "aws_", "axum", "tokio"] {
                assert!(
                    !text.contains(needle),
                    "{relative} uses {needle}: resolve is pure"
                );
            }
        }
    }
}
