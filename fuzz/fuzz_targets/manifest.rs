//! A config repo whose files the input decides, resolved as a receiver resolves a pushed
//! branch: nothing may panic or overflow the stack, whatever the YAML's depth, aliases or
//! size, and a refusal is a problem at a file.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run manifest -s none -- -max_total_time=120`.
//! `src/resolve/yaml.rs` runs the same shapes as property tests on every build.

#![no_main]

use std::collections::HashMap;

use fleetsync::resolve::{self, Files, ReadError};
use libfuzzer_sys::fuzz_target;

struct Repo(HashMap<&'static str, Vec<u8>>);

impl Files for Repo {
    fn read(&self, path: &str) -> Result<Option<Vec<u8>>, ReadError> {
        Ok(self.0.get(path).cloned())
    }
}

const ROOT: &str = "apiVersion: fleetsync/v1\nkind: Root\nname: platform\nenvironments:\n  staging: { branch: staging, cluster: staging }\napps:\n  - { name: api, path: apps/api }\n";

fuzz_target!(|data: &[u8]| {
    // Layout: [which file: 1][text...]; the other files are a valid repo's.
    let Some((&which, text)) = data.split_first() else {
        return;
    };
    let mut files = HashMap::from([
        ("fleetsync.yaml", ROOT.as_bytes().to_vec()),
        (
            "apps/api/app.yaml",
            b"apiVersion: fleetsync/v1\nkind: App\nname: api\ntaskDefinition: taskdef.json\n".to_vec(),
        ),
        (
            "apps/api/taskdef.json",
            br#"{"family": "api", "containerDefinitions": [{"name": "api", "image": "api:1", "memory": 512}]}"#.to_vec(),
        ),
    ]);
    let path = [
        "fleetsync.yaml",
        "apps/api/app.yaml",
        "apps/api/taskdef.json",
    ][which as usize % 3];
    files.insert(path, text.to_vec());
    let repo = Repo(files);
    // A receiver resolves on a blocking thread: 2 MiB of stack.
    let outcome = std::thread::Builder::new()
        .stack_size(2 * 1024 * 1024)
        .spawn(
            move || match resolve::resolve(&repo, "fleetsync.yaml", "staging", "c0ffee") {
                Ok(_) => Ok(()),
                Err(resolve::Error::Invalid(problems)) => {
                    assert!(!problems.is_empty());
                    assert!(problems.iter().all(|p| !p.file.is_empty() && p.line >= 1));
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            },
        )
        .unwrap()
        .join()
        .expect("resolving panicked or overflowed the stack");
    assert!(outcome.is_ok(), "{outcome:?}");
});
